"""PET scan classification pipeline."""

from __future__ import annotations

from pathlib import Path


def load_model(uri: str | None = None, params: str | Path | None = None):
    """A registered model from the project's MLflow store, wherever Python was started.

    `petscan.load_model("models:/pet-classifier@champion")` (or `models:/pet-classifier/3`;
    None: the latest version of `mlflow.registered_model`) returns the MLflow pyfunc model;
    `.predict(pd.DataFrame({"path": [...]}))` answers per row. The store is the one the
    pipeline logs to (`MLFLOW_TRACKING_URI`, else `mlflow.tracking_uri` in `params`
    (default: the repository's params.yaml), else `<repository>/mlruns/mlflow.db`), so no
    stray `mlflow.db` is created in the working directory.
    """
    from petscan.serving.loading import load_pyfunc  # TensorFlow and MLflow load only when asked

    return load_pyfunc(uri, params)
