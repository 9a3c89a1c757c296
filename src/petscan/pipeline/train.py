"""DVC stage `train`: fit the classifier and log one MLflow run.

Reads the `data`, `model`, `train` and `mlflow` sections of params.yaml, plus
`weights.dir`, `split.out_dir`, `split.max_pixels` (the logged model's pixel limit),
`featurize.out_dir` and `featurize.augmentation` (end_to_end mode), and logs all of them as
MLflow params. `train.mode: cached` fits the dense head on the cached features; `end_to_end`
trains from the image files through the backbone. Writes into `train.out_dir`: model.keras
(image -> probabilities), history.csv and train.json (the same bytes for the same inputs),
registers the model in MLflow and moves `mlflow.alias` to the new version.

`train.protocol: cv` (cached mode) trains one head per patient fold of train + val
(`training.cross_validation`) and saves their temperature-scaled average as model.keras
(`model.ensemble`); `cv/oof.csv` holds every train + val image's out-of-fold prediction
(evaluate scores it). `cv/protocol.json` names the protocol either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.handoff.records import banner
from petscan.params.loading import load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs

if TYPE_CHECKING:
    import keras

    from petscan.data.features import FeatureSet
    from petscan.handoff.records import FeatureMeta, TrainInfo, WeightsInfo
    from petscan.params.loading import StageParams
    from petscan.training.fit import TrainResult

SECTIONS = (
    "data.classes",
    "model",
    "train",
    "mlflow",
    "weights.dir",
    "split.out_dir",
    "split.max_pixels",  # the logged MLflow model refuses the images split refuses
    "split.min_side",
    "split.max_aspect",
    "featurize.out_dir",
    "featurize.augmentation",
)


def train(params: StageParams, root: Path, verbose: int | str = "auto") -> dict[str, Any]:
    """The `train` stage: fit (cached or end_to_end), save the outputs, log one MLflow run
    (every declared param, the datasets, per-epoch metrics, the model, its registered
    version). Returns the contents of `train.json` with `mlflow_run_id` and
    `registered_version`.
    """
    import dataclasses

    import mlflow

    from petscan.handoff.manifests import manifest_paths, read_manifest
    from petscan.handoff.records import read_weights_info, weights_file
    from petscan.tracking import model_logging, provenance, registry, runs
    from petscan.training.callbacks import MlflowEpochLogger
    from petscan.training.collapse import record_collapse
    from petscan.utils.redact import redact_text

    class_names = params.data.class_names
    split_dir = root / params.split.out_dir
    manifests = manifest_paths(split_dir)
    weights_dir = root / params.weights.dir
    weights = read_weights_info(weights_dir)
    weights = dataclasses.replace(weights, weights_source=redact_text(weights.weights_source))
    weights_path = weights_file(weights_dir)
    # read before a run opens: a missing or stale cache is one error line, not a FAILED run
    cached = _load_cached(params, root, manifests) if params.train.mode == "cached" else None
    if params.train.protocol == "cv" and cached is None:
        raise errors.ParamsError(
            "train.protocol: cv trains heads on cached features: set train.mode: cached in "
            "params.yaml (or train.protocol: holdout)"
        )
    tags = provenance.run_tags(split_dir, weights)
    run_name = provenance.run_name("train", tags)
    with runs.start_training_run(params.mlflow, params.as_dict(), tags, run_name=run_name) as run:
        provenance.log_datasets(run.info.run_id, split_dir, root)
        logger = MlflowEpochLogger(run.info.run_id)
        out_dir = root / params.train.out_dir
        if params.train.protocol == "cv":
            paths, train_info = _train_folds(params, cached, weights_path, out_dir, weights)
        else:
            if cached is not None:
                result, full = _train_cached(params, cached, weights_path, logger, verbose)
            else:
                result = _train_end_to_end(params, root, manifests, weights_path, logger, verbose)
                full = result.model
            paths, train_info = save_outputs(
                result, full, out_dir, weights, class_names, params.train.seed
            )
            paths["protocol"] = write_protocol(out_dir, {"protocol": "holdout"})
        summary = {**train_info.to_dict(), "mlflow_run_id": run.info.run_id}
        mlflow.set_tag("model_sha256", summary["model_sha256"])  # evaluate and plot find the run
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if k.startswith(("best_", "epochs_run"))}
        )
        record_collapse(train_info.collapse)
        mlflow.log_artifact(str(paths["history"]))
        mlflow.log_artifact(str(paths["summary"]))
        for name in ("oof", "protocol"):
            if name in paths:
                mlflow.log_artifact(str(paths[name]), artifact_path="cv")
        example = [str(root / read_manifest(manifests["val"])["path"].iloc[0])]
        info = model_logging.log_keras_model(
            paths["model"],
            params.mlflow,
            class_names,
            params.model,
            input_example=example,
            max_pixels=params.split.max_pixels,
            min_side=params.split.min_side,
            max_aspect=params.split.max_aspect,
        )
        version_tags = {**tags, "model_sha256": summary["model_sha256"]}
        summary["registered_version"] = registry.register_version(info, params.mlflow, version_tags)
    return summary


def _load_cached(
    params: StageParams, root: Path, manifests: dict[str, Path]
) -> tuple[FeatureSet, FeatureSet]:
    """The cached train and val features, checked against the manifests and the backbone."""
    from petscan.data.features import load_features
    from petscan.model.backbones import backbone_spec
    from petscan.utils.errors import BadInputError

    features_dir = root / params.featurize.out_dir
    train_set = load_features(features_dir, "train", manifests["train"])
    val_set = load_features(features_dir, "val", manifests["val"])
    expected = backbone_spec(params.model.backbone).feature_dim
    if train_set.dim != expected:
        raise BadInputError(
            f"{features_dir} holds {train_set.dim}-dim features but model.backbone "
            f"{params.model.backbone!r} gives {expected}: re-run `dvc repro featurize`"
        )
    return train_set, val_set


def _train_cached(
    params: StageParams,
    cached: tuple[FeatureSet, FeatureSet],
    weights_path: Path,
    logger: keras.callbacks.Callback,
    verbose: int | str,
) -> tuple[TrainResult, keras.Model]:
    """The head fitted on the cached features, and the image model around it."""
    from petscan.model.network import build_full_model
    from petscan.training.fit import fit_cached

    train_set, val_set = cached
    class_names = params.data.class_names
    result = fit_cached(
        train_set.features,
        train_set.labels,
        val_set.features,
        val_set.labels,
        params.model,
        params.train,
        len(class_names),
        callbacks=[logger],
        verbose=verbose,
        class_names=class_names,
    )
    _log_feature_health(train_set.meta)
    full = build_full_model(
        params.model,
        len(class_names),
        weights_path,
        head=result.head,
        precision=train_set.meta.precision,  # what the head's features saw
    )
    return result, full


def _train_folds(
    params: StageParams,
    cached: tuple[FeatureSet, FeatureSet],
    weights_path: Path,
    out_dir: Path,
    weights: WeightsInfo,
) -> tuple[dict[str, Path], TrainInfo]:
    """The `cv` protocol: fold heads on train + val, the ensemble saved as model.keras,
    the out-of-fold predictions as cv/oof.csv, the folds' summary in train.json."""
    import mlflow
    import numpy as np
    import pandas as pd

    from petscan.data.folds import patient_groups, pool_splits
    from petscan.handoff.records import TrainInfo, write_train_info
    from petscan.handoff.results import proba_columns
    from petscan.model.ensemble import build_ensemble_model
    from petscan.model.saving import save_model
    from petscan.training.collapse import check_collapse
    from petscan.training.cross_validation import fit_folds
    from petscan.utils import io

    train_set, val_set = cached
    names = params.data.class_names
    x, y, groups = pool_splits(
        np.asarray(train_set.features), train_set.labels, patient_groups(train_set.frame),
        np.asarray(val_set.features[:, :1]), val_set.labels, patient_groups(val_set.frame),
    )  # fmt: skip
    cv = fit_folds(x, y, groups, params.model, params.train, len(names), names)
    _log_feature_health(train_set.meta)
    full = build_ensemble_model(
        params.model, cv.heads, weights_path, cv.temperature, train_set.meta.precision
    )
    paths = {"model": out_dir / "model.keras", "history": out_dir / "history.csv"}
    save_model(full, paths["model"])
    history = cv.history()
    io.write_csv(paths["history"], history)
    oof = pd.concat([train_set.frame, val_set.frame], ignore_index=True)  # the pool's order
    oof["fold"] = cv.fold_of
    for column, values in zip(proba_columns(names), cv.oof.T, strict=True):
        oof[column] = values
    for column, values in zip(proba_columns(names), cv.calibrated_oof().T, strict=True):
        oof[f"calibrated_{column}"] = values
    paths["oof"] = out_dir / "cv" / "oof.csv"
    paths["oof"].parent.mkdir(parents=True, exist_ok=True)
    io.write_csv(paths["oof"], oof)
    summary = cv.summary()
    paths["protocol"] = write_protocol(out_dir, summary)
    bests = [r.best_values() for r in cv.results]
    accuracy = history["accuracy"].to_numpy() if "accuracy" in history else []
    info = TrainInfo(
        mode="cached",
        weights=weights,
        class_names=list(names),
        seed=params.train.seed,
        best_epoch=int(np.median(summary["fold_best_epochs"])),  # the folds' median
        epochs_run=int(max(summary["fold_epochs_run"])),
        stopped_early=all(r.stopped_early for r in cv.results),
        model_sha256=io.sha256_file(paths["model"]),
        best={k: float(np.mean([b[k] for b in bests])) for k in bests[0]},  # mean over folds
        collapse=check_collapse(cv.oof, y, accuracy, names, params.train.collapse),
        details={**summary, "views": int(x.shape[1])},
    )
    paths["summary"] = write_train_info(out_dir, info)
    mlflow.log_params({"cv.temperature": f"{cv.temperature:.4f}", "cv.folds": len(cv.results)})
    return paths, info


def _train_end_to_end(
    params: StageParams,
    root: Path,
    manifests: dict[str, Path],
    weights_path: Path,
    logger: keras.callbacks.Callback,
    verbose: int | str,
) -> TrainResult:
    """The whole network fitted on the image files, augmenting on-line."""
    from petscan.handoff.manifests import read_manifest
    from petscan.training.fit import fit_end_to_end

    class_names = params.data.class_names
    return fit_end_to_end(
        read_manifest(manifests["train"]),
        read_manifest(manifests["val"]),
        params.model,
        params.train,
        params.featurize.augmentation,
        weights_path,
        len(class_names),
        root=root,
        callbacks=[logger],
        verbose=verbose,
        class_names=class_names,
    )


def _log_feature_health(meta: FeatureMeta) -> None:
    """The cached training features' health (scale, constant dimensions) as run params."""
    import mlflow

    mlflow.log_params({f"features.health.{k}": f"{v:.4g}" for k, v in meta.health.items()})
    mlflow.log_param("features.precision", meta.precision)


def save_outputs(
    result: TrainResult,
    full_model: keras.Model,
    out_dir: Path,
    weights: WeightsInfo,
    class_names: list[str],
    seed: int,
) -> tuple[dict[str, Path], TrainInfo]:
    """Write `model.keras`, `history.csv` and `train.json` (with the model's sha256) into
    `out_dir`. Same inputs, same bytes: nothing run-dependent (times, run ids) goes in."""
    from petscan.handoff.records import TrainInfo, write_train_info
    from petscan.model.saving import save_model
    from petscan.utils import io

    paths = {"model": out_dir / "model.keras", "history": out_dir / "history.csv"}
    save_model(full_model, paths["model"])
    io.write_csv(paths["history"], result.history)
    info = TrainInfo(
        mode=result.info["mode"],
        weights=weights,
        class_names=list(class_names),
        seed=seed,
        best_epoch=int(result.best_epoch),
        epochs_run=int(result.epochs_run),
        stopped_early=bool(result.stopped_early),
        model_sha256=io.sha256_file(paths["model"]),
        best=result.best_values(),
        collapse=dict(result.info.get("collapse") or {}),
        details={k: v for k, v in result.info.items() if k not in ("mode", "collapse")},
    )
    paths["summary"] = write_train_info(out_dir, info)
    return paths, info


def write_protocol(out_dir: Path, values: dict[str, Any]) -> Path:
    """`<train.out_dir>/cv/protocol.json`: the protocol (holdout or cv) and, for cv, the folds."""
    from petscan.utils import io

    path = out_dir / "cv" / "protocol.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(path, values)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser.parse_args(argv)


@errors.reports_user_errors("train")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)  # validated before TensorFlow or a run starts
    logs.setup(args.verbose)
    logs.import_tensorflow()
    summary = train(params, workspace_root(), verbose=0 if args.quiet else 2)
    if summary.get("protocol") == "cv":
        print(
            f"train: cv, {summary['folds']} fold heads (best epochs {summary['fold_best_epochs']},"
            f" early stopping on each fold's own patients), temperature {summary['temperature']}"
            f"; the fold ensemble saved; MLflow run {summary['mlflow_run_id']}"
            + (f"; {text}" if (text := banner(summary)) else "")
        )
        return 0
    print(
        f"train: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
        f"(val data loss {summary.get('best_val_data_loss', float('nan')):.4f}, "
        f"val macro AUC {summary.get('best_val_roc_auc_macro', float('nan')):.3f}); "
        f"MLflow run {summary['mlflow_run_id']}"
        + (f"; {text}" if (text := banner(summary)) else "")
    )
    if summary["collapse"]["collapsed"]:
        print(f"WARNING: {summary['collapse']['message']}", file=sys.stderr)
    return 0
