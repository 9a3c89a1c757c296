"""Finding and loading a logged model in the project's MLflow store.

The store is the one the pipeline logs to (`tracking.store.resolve_tracking_uri`); a local
SQLite store that does not exist is an error, never created empty. The model is a URI as
given (`models:/pet-classifier@champion`, `models:/pet-classifier/3`, `runs:/...`), else the
latest version of `mlflow.registered_model`. `load_petscan_model` is the one place that
unwraps an MLflow pyfunc into the `PetscanKerasModel` inside it.

MLflow (and TensorFlow, through the tracking code) are imported in the functions, not here:
`petscan serve --help` and `petscan app --help` answer in about 1 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.params.loading import PARAMS_FILE, load_section, workspace_root
from petscan.utils.errors import MissingInputError, UserError
from petscan.utils.redact import redact_text

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

    from petscan.params.results import MlflowParams
    from petscan.serving.pyfunc import PetscanKerasModel


class ModelNotFoundError(UserError):
    """The model to serve is not in the store (or cannot be read from it)."""


def latest_version_uri(name: str) -> str:
    """`models:/<name>/<highest version>` in the current registry."""
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(
            f"no version of the model {name!r} is registered in {mlflow.get_registry_uri()}: "
            "train one first (`make run` or `dvc repro`)"
        )
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def resolve_model_uri(uri: str | None, mlflow_params: MlflowParams) -> str:
    """`uri` as given, or the latest version of `mlflow.registered_model` (store already set)."""
    if uri:
        return uri
    if not mlflow_params.registered_model:
        raise LookupError(
            "no model given and mlflow.registered_model is null in params.yaml: "
            "pass --model models:/<name>/<version>"
        )
    return latest_version_uri(mlflow_params.registered_model)


def mlflow_params_from(params_path: str | Path | None = None) -> MlflowParams:
    """The `mlflow` section of params.yaml (default: the one at the repository root); the
    schema's defaults when there is no such file."""
    path = Path(params_path) if params_path else workspace_root() / PARAMS_FILE
    if not path.is_file():
        from petscan.params.schema import defaults

        return defaults().mlflow
    return load_section("mlflow", path)


def open_store(mlflow_params: MlflowParams) -> str:
    """Select the project's MLflow store (`tracking.store.use_store`); return its URI. A local
    SQLite store that does not exist is a `MissingInputError`, not created empty."""
    from petscan.tracking import store

    uri = store.resolve_tracking_uri(mlflow_params)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise MissingInputError(
            f"no MLflow store at {uri}: run from the repository (or set MLFLOW_TRACKING_URI) "
            "and train a model first (`make run`)"
        )
    return store.use_store(mlflow_params)


def load_pyfunc(uri: str | None = None, params_path: str | Path | None = None) -> PyFuncModel:
    """An MLflow model of this project, read from the project's store (see `petscan.load_model`)."""
    import mlflow

    mlflow_params = mlflow_params_from(params_path)
    open_store(mlflow_params)
    return mlflow.pyfunc.load_model(resolve_model_uri(uri, mlflow_params))


def find_model(uri: str | None, mlflow_params: MlflowParams) -> str:
    """The URI of the model to serve (`resolve_model_uri`), checked to be in the store
    (store already selected): `ModelNotFoundError`, one line, when it is not."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        uri = resolve_model_uri(uri, mlflow_params)
        mlflow.models.get_model_info(uri)  # reads only its MLmodel file
    except LookupError as err:
        raise ModelNotFoundError(redact_text(str(err))) from None
    except (MlflowException, OSError, ValueError, ImportError) as err:  # a wrong or absent URI
        reason: Any = err
        if isinstance(err, ImportError):  # e.g. s3:// without boto3
            reason = f"it needs the Python module {err.name!r}, which is not installed"
        reason = " ".join(str(reason).split())[:300]
        store = mlflow.get_tracking_uri()
        raise ModelNotFoundError(
            redact_text(
                f"cannot load the model {uri} from {store}: {reason}; train one (`make run`) "
                "or pass --model with a registered version"
            )
        ) from None
    return uri


def load_petscan_model(uri: str) -> tuple[PyFuncModel, PetscanKerasModel]:
    """The MLflow pyfunc model at `uri` (store already selected) and the `PetscanKerasModel`
    inside it. Loading runs the code logged with the model (MLflow "models from code"): only
    for a store you control. `TypeError` for a model that petscan did not log."""
    import mlflow

    from petscan.serving.pyfunc import PetscanKerasModel

    pyfunc = mlflow.pyfunc.load_model(uri)
    inner = pyfunc.unwrap_python_model()
    if not isinstance(inner, PetscanKerasModel):
        raise TypeError(f"{uri} is not a petscan model (logged by tracking.log_keras_model)")
    return pyfunc, inner
