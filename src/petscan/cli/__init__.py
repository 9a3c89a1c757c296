"""`petscan <command>`: the project's commands outside the DVC stages.

* `main`: the command table and dispatch;
* `explain`: `petscan explain`, Grad-CAM overlays of image files;
* `compare`: `petscan compare A B`, paired patient-bootstrap intervals and DeLong's test of
  two models' test predictions, logged as an MLflow run.
"""
