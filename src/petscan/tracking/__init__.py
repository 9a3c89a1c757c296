"""MLflow: the store, the runs and what they record, the model registry."""
