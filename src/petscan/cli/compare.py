"""`petscan compare A B`: is A's difference from B real, or luck?

    petscan compare 3f2a...c1 9b7e...04          # MLflow run ids (of trained + evaluated runs)
    petscan compare models:/pet-classifier/2 models:/pet-classifier@candidate
    petscan compare exp-cv-5 exp-holdout          # DVC experiment names (or any git revision)

Reads both models' test predictions (`reports/predictions_test.csv`, which the evaluate stage
writes and logs to the training run), checks they cover the same images, and prints for
each headline metric A, B and the difference A - B with its paired patient-bootstrap
interval (`evaluation.paired`: the same resampled patients for both), DeLong's test for
each class's one-vs-rest AUC, and whether the difference is distinguishable from zero. The
numbers are logged to MLflow as a run named `compare A vs B` (tags `compare.a`/`compare.b`,
metrics `diff/<metric>`, `_low`, `_high`; comparison.json). Settings: `evaluate`
(bootstrap_resamples, confidence, seed, ece_bins), `data.classes` and `mlflow` of params.yaml.
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petscan.params.loading import PARAMS_FILE, load_sections, workspace_root
from petscan.utils.errors import BadInputError, MissingInputError

SECTIONS = ("data.classes", "evaluate", "mlflow")
PREDICTIONS = "reports/predictions_test.csv"  # the artifact path evaluate logs
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Side:
    """One compared model: what the user named, its test predictions and provenance."""

    name: str
    frame: pd.DataFrame
    run_id: str | None = None
    weights_label: str = "?"


def _from_run(name: str, run_id: str) -> Side:
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PREDICTIONS)
    except Exception as exc:  # noqa: BLE001 (MLflow raises several kinds for a missing file)
        raise MissingInputError(
            f"{name}: run {run_id} has no {PREDICTIONS} ({type(exc).__name__}): "
            "run `dvc repro evaluate` for that model first"
        ) from exc
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    frame = pd.read_csv(local, dtype={"patient": str})
    return Side(name, frame, run_id, tags.get("weights_label", "?"))


def _from_model_uri(name: str) -> Side:
    import mlflow

    client = mlflow.MlflowClient()
    if name.startswith("runs:/"):
        return _from_run(name, name.removeprefix("runs:/").split("/")[0])
    match = re.match(r"^models:/([^/@]+)(?:/(\d+)|@(.+))$", name)
    if not match:
        raise BadInputError(f"{name}: not a models:/<name>/<version> or models:/<name>@<alias> URI")
    model, version, alias = match.groups()
    found = (
        client.get_model_version(model, version)
        if version
        else client.get_model_version_by_alias(model, alias)
    )
    return _from_run(name, found.run_id)


def _from_revision(name: str, root: Path, out_dir: str) -> Side:
    """A DVC experiment name or git revision: its cached `<evaluate.out_dir>` files."""
    import json

    import dvc.api

    try:
        text = dvc.api.read(f"{out_dir}/predictions_test.csv", repo=str(root), rev=name)
        metrics = json.loads(dvc.api.read(f"{out_dir}/metrics.json", repo=str(root), rev=name))
    except Exception as exc:  # noqa: BLE001 (dvc raises many kinds for an unknown revision)
        raise MissingInputError(
            f"{name}: not an MLflow run id, model URI or DVC experiment with evaluated "
            f"predictions ({type(exc).__name__}: {exc}); see `dvc exp show`"
        ) from exc
    frame = pd.read_csv(io.StringIO(text), dtype={"patient": str})
    return Side(name, frame, None, str(metrics.get("weights_label", "?")))


def resolve(name: str, root: Path, out_dir: str) -> Side:
    """A run id, a `models:/` or `runs:/` URI, or a DVC experiment name -> its test predictions."""
    if RUN_ID.match(name):
        return _from_run(name, name)
    if name.startswith(("models:/", "runs:/")):
        return _from_model_uri(name)
    return _from_revision(name, root, out_dir)


def aligned(a: Side, b: Side, class_names: list[str]) -> tuple[np.ndarray, ...]:
    """(labels, A's probabilities, B's, patient groups) on the images both predicted,
    in A's order; refuses two different test sets."""
    from petscan.handoff.results import proba_columns

    columns = proba_columns(class_names)
    for side in (a, b):
        missing = [c for c in ("path", "label", *columns) if c not in side.frame]
        if missing:
            raise BadInputError(f"{side.name}: predictions lack {missing} (other classes?)")
    if set(a.frame["path"]) != set(b.frame["path"]) or len(a.frame) != len(b.frame):
        raise BadInputError(
            f"{a.name} and {b.name} were tested on different images: compare models "
            "evaluated on the same split (the same data/split manifests)"
        )
    other = b.frame.set_index("path").loc[a.frame["path"]]
    y = a.frame["label"].to_numpy(dtype=int)
    if not np.array_equal(y, other["label"].to_numpy(dtype=int)):
        raise BadInputError(f"{a.name} and {b.name} disagree on the test labels")
    group = "patient" if "patient" in a.frame else "path"
    return (
        y,
        a.frame[columns].to_numpy(dtype=float),
        other[columns].to_numpy(dtype=float),
        a.frame[group].astype(str).to_numpy(),
    )


def sentence(metric: str, row: dict[str, Any], confidence: float) -> str:
    """One line in words: the values, the difference, its interval, the verdict."""
    pct = f"{confidence:.0%}"
    verdict = (
        f"distinguishable from zero (the {pct} interval excludes 0)"
        if row["distinguishable"]
        else f"NOT distinguishable from zero (the {pct} interval contains 0)"
    )
    return (
        f"{metric:<18} A {row['a']:.3f}  B {row['b']:.3f}  A-B {row['difference']:+.3f} "
        f"[{row['low']:+.3f}, {row['high']:+.3f}]: {verdict}"
    )


def compare(a_name: str, b_name: str, params: Any, root: Path) -> dict[str, Any]:
    """Resolve, align, compute; returns the comparison (what comparison.json holds)."""
    from petscan.evaluation.paired import delong_per_class, paired_bootstrap
    from petscan.tracking.store import use_store

    use_store(params.mlflow)
    names = params.data.class_names
    a, b = (resolve(n, root, params.evaluate.out_dir) for n in (a_name, b_name))
    y, pa, pb, groups = aligned(a, b, names)
    ev = params.evaluate
    return {
        "a": {"name": a.name, "run_id": a.run_id, "weights_label": a.weights_label},
        "b": {"name": b.name, "run_id": b.run_id, "weights_label": b.weights_label},
        "n_images": int(len(y)),
        "n_patients": int(len(np.unique(groups))),
        "confidence": ev.confidence,
        "bootstrap_resamples": ev.bootstrap_resamples,
        "metrics": paired_bootstrap(
            y, pa, pb, names, groups, ev.bootstrap_resamples, ev.confidence, ev.seed, ev.ece_bins
        ),
        "delong": delong_per_class(y, pa, pb, names),
    }


def log_comparison(result: dict[str, Any], params: Any) -> str:
    """A `compare A vs B` run in the experiment: tags, `diff/*` metrics, comparison.json."""
    import mlflow

    from petscan.tracking.store import configure

    configure(params.mlflow)
    a, b = result["a"], result["b"]
    tags = {}
    for key, side in (("a", a), ("b", b)):
        tags[f"compare.{key}"] = side["name"]
        tags[f"compare.{key}_run_id"] = side["run_id"] or ""
        tags[f"compare.weights_label_{key}"] = side["weights_label"]
    metrics: dict[str, float] = {}
    for name, row in result["metrics"].items():
        for key, suffix in (("difference", ""), ("low", "_low"), ("high", "_high")):
            if np.isfinite(row[key]):
                metrics[f"diff/{name}{suffix}"] = float(row[key])
    for name, row in result["delong"].items():
        metrics[f"delong/{name}/p_value"] = row["p_value"]
    with mlflow.start_run(run_name=f"compare {a['name']} vs {b['name']}", tags=tags) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_dict(result, "comparison.json")
    return run.info.run_id


def report(result: dict[str, Any]) -> str:
    """What the command prints."""
    a, b = result["a"], result["b"]
    lines = [
        f"A = {a['name']} ({a['weights_label']})",
        f"B = {b['name']} ({b['weights_label']})",
        f"test split: {result['n_images']} images of {result['n_patients']} patients; "
        f"paired patient bootstrap, {result['bootstrap_resamples']} resamples",
    ]
    if a["weights_label"] != b["weights_label"]:
        lines.append("NOTE: A and B come from different backbones (labels above)")
    lines += [sentence(k, row, result["confidence"]) for k, row in result["metrics"].items()]
    for name, row in result["delong"].items():
        lines.append(
            f"DeLong AUC {name} vs rest: A {row['auc_a']:.3f}  B {row['auc_b']:.3f}  "
            f"z {row['z']:+.2f}  p {row['p_value']:.3g}"
        )
    real = [k for k, row in result["metrics"].items() if row["distinguishable"]]
    lines.append(
        "In words: "
        + (
            f"A and B differ beyond noise in {', '.join(real)}."
            if real
            else "no difference between A and B is distinguishable from zero on this test "
            "split: it could be luck."
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="petscan compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("a", help="model A: MLflow run id, models:/ or runs:/ URI, DVC experiment")
    parser.add_argument("b", help="model B (the same kinds)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default params.yaml)")
    parser.add_argument("--no-log", action="store_true", help="do not log a comparison run")
    args = parser.parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    result = compare(args.a, args.b, params, workspace_root())
    print(report(result))
    if not args.no_log:
        print(f"logged to MLflow: run {log_comparison(result, params)}")
    return 0
