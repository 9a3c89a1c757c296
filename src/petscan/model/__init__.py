"""The classifier: backbones, the network, its `.keras` file, losses and schedules.

* `backbones`: the frozen image backbones by name (`pet_demo`: the demo's own);
* `network`: pre-processing, the feature extractor, the head and the full image model;
* `ensemble`: the fold ensemble (k heads on one backbone pass, averaged) as one image model;
* `calibration`: temperature scaling (fitted on out-of-fold predictions) and its layer;
* `saving`: `.keras` files saved byte-reproducibly and loaded safely;
* `losses`: the focal losses, `DataLoss` and class weights;
* `schedules`: the piecewise learning rate.
"""
