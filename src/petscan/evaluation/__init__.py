"""Measuring the trained model, one module per idea:

* `metrics`: classification and calibration metrics with patient-bootstrap intervals;
* `predictions`: the saved model on a split's image files (predictions CSV, report, metrics);
* `out_of_fold`: the cv protocol's pooled out-of-fold predictions, scored, and each fold;
* `plots`: the report figures (training curves, confusion, ROC, PR, reliability, gallery);
* `gradcam`: Grad-CAM and Grad-CAM++ heatmaps in each file's own pixel grid;
* `overlay`: a heatmap blended into its image, and the PNG it is written to;
* `localization`: whether the heatmap points at the generator's lesions;
* `gallery`: the explain stage's chosen test images and their overlays.
"""
