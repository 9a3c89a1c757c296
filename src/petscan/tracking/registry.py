"""The model registry: each registered version's description, tags and alias.

The train stage registers the model it logs (`model_logging.log_keras_model`) and
describes the version (`register_version`): backbone and weights, data hash, code, with a
loud warning when the backbone is not RadImageNet's. The evaluate stage adds the test
metrics with their intervals (`describe_model_version`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

from petscan.handoff.records import WEIGHTS_FIELDS
from petscan.tracking.runs import backbone_note

if TYPE_CHECKING:
    from petscan.params.results import MlflowParams

# run tags copied onto each registered version (the registry pages show them)
VERSION_TAGS = (
    *WEIGHTS_FIELDS,
    "data_manifest_sha256",
    "git_commit",
    "dvc_exp_name",
    "model_sha256",
)
# (name in the metrics, label) of the test metrics in a version's description and tags
HEADLINE_METRICS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_macro", "macro F1"),
    ("roc_auc_macro", "macro ROC AUC"),
    ("ece", "ECE"),
)


def _with_interval(values: dict[str, Any], name: str) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, int | float) and np.isfinite(value) else "n/a"

    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    return f"{fmt(values.get(name))} [{fmt(low)}, {fmt(high)}]"


def version_description(tags: dict[str, str], results: dict[str, Any] | None = None) -> str:
    """A registered version's description (Markdown): the random-init warning, backbone and
    weights, data hash, code, and the test metrics with their 95% intervals once evaluated."""
    lines = [note, ""] if (note := backbone_note(tags)) else []
    dirty = " (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""
    lines += [
        f"- Backbone: {tags.get('backbone', '?')}, weights: {tags.get('weights_label', '?')} "
        f"(source: {tags.get('weights_source', '?')}, sha256 {tags.get('weights_sha256', '?')})",
        f"- Data: split manifests sha256 {tags.get('data_manifest_sha256', '?')} "
        "(train.csv + val.csv + test.csv)",
        f"- Code: git commit {tags.get('git_commit', '?')}{dirty}; "
        f"DVC experiment {tags.get('dvc_exp_name', '?')}",
    ]
    protocol = (results or {}).get("protocol")
    if isinstance(protocol, dict) and protocol.get("protocol") == "cv":
        lines.append(
            f"- Protocol: cv, the mean of {protocol.get('folds')} fold heads (patient-grouped "
            f"folds of train + val), temperature {protocol.get('temperature')} fitted on the "
            "out-of-fold predictions"
        )
    test = (results or {}).get("test")
    if isinstance(test, dict):
        where = f"{test.get('n', '?')} images"
        if "n_groups" in test:
            where += f" of {test['n_groups']} patients"
        metrics = ", ".join(f"{label} {_with_interval(test, k)}" for k, label in HEADLINE_METRICS)
        lines.append(f"- Test ({where}; 95% bootstrap intervals): {metrics}")
    else:
        lines.append("- Test metrics: not evaluated yet (the evaluate stage adds them)")
    return "\n".join(lines)


def register_version(
    model_info: Any, mlflow_params: MlflowParams, tags: dict[str, str]
) -> str | None:
    """Describe and tag the version `model_logging.log_keras_model` registered; move the
    alias (`mlflow.alias`) to it.

    Returns the version number, or None when nothing was registered.
    """
    name = mlflow_params.registered_model
    version = getattr(model_info, "registered_model_version", None)
    if not name or version is None:
        return None
    client = mlflow.MlflowClient()
    client.update_model_version(name, str(version), description=version_description(tags))
    for key in VERSION_TAGS:
        if key in tags:
            client.set_model_version_tag(name, str(version), key, tags[key])
    alias = mlflow_params.alias
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return str(version)


def describe_model_version(
    run_id: str, mlflow_params: MlflowParams, results: dict[str, Any]
) -> list[str]:
    """After evaluation: the test metrics into the description and tags of the versions
    registered from `run_id` (`test_accuracy` = "0.349 [0.185, 0.522]", ...)."""
    name = mlflow_params.registered_model
    if not name:
        return []
    client = mlflow.MlflowClient()
    tags = dict(client.get_run(run_id).data.tags)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    test = results.get("test") if isinstance(results.get("test"), dict) else {}
    for version in versions:
        client.update_model_version(
            name, version.version, description=version_description(tags, results)
        )
        for key, _ in HEADLINE_METRICS:
            if key in test:
                client.set_model_version_tag(
                    name, version.version, f"test_{key}", _with_interval(test, key)
                )
    return [str(v.version) for v in versions]
