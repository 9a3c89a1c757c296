"""The DVC stages, one module each, named like the stage in `dvc.yaml`."""
