"""MLflow tracking, one module per idea (none imports TensorFlow):

* `store`: where runs go (tracking URI, the default store under `<repo>/mlruns`, the
  experiment);
* `runs`: what a run records (tags, name, params, git state, datasets), starting the
  training run and logging a later stage into it (`training_run`);
* `registry`: a registered version's description, tags and alias;
* `model_logging`: the trained Keras model logged as a pyfunc (train only: it imports
  `petscan.serving.pyfunc`);
* `run_owner`: which process owns a run; closing the runs of processes that are gone.
"""
