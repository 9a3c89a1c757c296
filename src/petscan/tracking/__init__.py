"""MLflow tracking, one module per idea (none imports TensorFlow):

* `store`: where runs go (tracking URI, the default store under `<repo>/mlruns`, the
  experiment);
* `provenance`: what makes a run reproducible (git state, the data's hashes and datasets,
  the weights' tags) and its name;
* `runs`: opening runs and logging params: the training run, and a later stage logging into
  it (`training_run`);
* `registry`: a registered version's description, tags and alias;
* `model_logging`: the trained Keras model logged as a pyfunc (train only: it imports
  `petscan.serving.pyfunc`);
* `run_owner`: which process owns a run; closing the runs of processes that are gone.
"""
