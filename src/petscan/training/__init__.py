"""Fitting the classifier's head on cached features, or the whole network on images.

* `fit`: the recipe (`compile_model`) and both modes (`fit_cached`, `fit_end_to_end`),
  their history and best epoch (`TrainResult`);
* `sampler`: the cached features as batches, every image once an epoch in a random view;
* `fused_adam`: `make_optimizer`, and Adam with its update fused into one XLA kernel;
* `callbacks`: validation AUC, the plateau-scaled schedule, early stopping, MLflow logging;
* `collapse`: the alarm when the head predicts one class for every image;
* `seeding`: `set_determinism`.

The `train` stage that runs them is `petscan.pipeline.train`.
"""
