"""Optuna tuning of the head's training recipe on the cached features (`make tune`).

One module per concern (the `tune` section is `params.learning.TuneParams`, its search
space `params.space`):

* `command`: `stages/tune.py`, the command line (`--trials`, `--storage`, ... checked by
  the schema), `--show-storage` and `--dashboard`;
* `data`: the cached train/val features a study trains on, cross-validation folds;
* `objective`: one trial (its values validated by the schema, the head trained with
  `training.fit.fit_cached`, scored, pruned);
* `storage`: where the study lives (SQLite, journal file, server), sampler and pruner;
* `study_runs`: the MLflow parent run of a study and a child run per trial;
* `study`: opening/resuming a study, the trial loop, failure guard, progress bar;
* `workers`: several worker processes on one study (`python -m petscan.tuning`);
* `report`: best_params.yaml, trials.csv, plots, summary.json;
* `apply`: writing the best values into params.yaml (comments kept);
* `run`: `run_tune`, the whole of `make tune`.

Import from the module itself (`from petscan.tuning.run import run_tune`): the package
imports nothing, so reading the storage (`stages/tune.py --show-storage`) does not load
TensorFlow.
"""
