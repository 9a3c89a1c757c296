"""DVC stage `explain`: Grad-CAM heatmaps of held-out images and how well they localize.

Reads the `explain` section of params.yaml, plus `data` (classes, raw_dir), `model.resize`,
`evaluate` (bootstrap_resamples, confidence), `mlflow`, `train.out_dir` and
`split.out_dir`. Explains every image of the `explain.splits` manifests with the saved
model and writes into `explain.out_dir`: localization.csv (per image: prediction, peaks,
and with the generator's lesion ground truth, pointing-game hit and energy inside visible
lesions for the model's heatmap and two reference maps), metrics.json (DVC metrics: means
with patient-bootstrap intervals) and gallery/ (overlays of chosen test images, drawn into
a figure by the plot stage). Without `<data.raw_dir>/.lesions.csv` the localization is
skipped and the reason is recorded. Logs its params and `explain/...` metrics into the
training run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from petscan.handoff.records import banner
from petscan.params.loading import StageParams, load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs

SECTIONS = (
    "explain",
    "data.classes",
    "data.raw_dir",
    "model.resize",
    "evaluate.bootstrap_resamples",
    "evaluate.confidence",
    "mlflow",
    "train.out_dir",
    "split.out_dir",
)
MAPS_PRINTED = ("model", "centre_prior", "random")


def explain(params: StageParams, root: Path) -> dict[str, Any]:
    """The `explain` stage: localization on the explained splits, gallery panels, MLflow.

    Writes into `explain.out_dir`: metrics.json, metrics_full.json, localization.csv and
    gallery/ (overlay PNGs of chosen test images plus gallery.csv), and logs the stage's
    params, the metrics (`explain/...`) and files into the training run. Returns what
    metrics_full.json holds.
    """
    import mlflow  # here, as TensorFlow below: a stage's --help does not wait for them
    import numpy as np
    import pandas as pd

    from petscan.evaluation import localization
    from petscan.evaluation.gallery import write_gallery
    from petscan.handoff.records import read_train_info
    from petscan.handoff.results import json_safe
    from petscan.model.saving import load_model
    from petscan.tracking.runs import training_run
    from petscan.utils import io

    p = params.explain
    mode = params.model.resize
    out_dir = root / p.out_dir
    train_dir = root / params.train.out_dir
    info = read_train_info(train_dir)
    # the names the model's outputs were trained under (train wrote them from `data.classes`;
    # the stage declares only `data.classes`, so `DataParams.class_names` is not in its view)
    class_names = info.class_names
    model = load_model(train_dir / "model.keras")
    lesions, skipped = localization.read_lesions(root / params.data.raw_dir)
    if skipped:
        print(f"explain: localization skipped: {skipped}")
    rng = np.random.default_rng(p.seed)
    rows: list[dict[str, Any]] = []
    for split in p.splits:
        frame = pd.read_csv(root / params.split.out_dir / f"{split}.csv", dtype=str)
        rows += localization.explain_split(
            model,
            frame,
            split,
            class_names,
            mode,
            p.method,
            p.batch_size,
            lesions,
            p.tolerance_mm,
            rng,
            root,
        )
    table = pd.DataFrame(rows)
    scored = table.dropna(subset=["model_hit"]) if "model_hit" in table else table.iloc[:0]
    if lesions is not None and scored.empty:
        skipped = "no explained image has a visible lesion in the ground truth"
    summary = None
    if not skipped:
        evaluate = params.evaluate
        summary = localization.summarize(
            scored, evaluate.bootstrap_resamples, evaluate.confidence, p.seed
        )
    result = {
        **info.weights.to_dict(),
        "method": p.method,
        "heatmap_of": "true class",
        "splits": list(p.splits),
        "tolerance_mm": p.tolerance_mm,
        "localization": summary,
        "skipped": skipped,
    }
    io.write_csv(out_dir / "localization.csv", table)
    io.write_json(out_dir / "metrics_full.json", json_safe(result))
    io.write_json(out_dir / "metrics.json", json_safe(localization.headline(result)))
    panels = write_gallery(
        model, table, class_names, mode, p.method, lesions, out_dir / "gallery", root
    )
    with training_run(info.model_sha256, params.mlflow, params.as_dict()) as run:
        if run is not None:
            if summary is not None:
                mlflow.log_metrics(
                    {f"explain/{k}": float(v) for k, v in summary.items() if np.isfinite(v)}
                )
            mlflow.set_tag("explain.localization", skipped or json.dumps(result["splits"]))
            for path in (out_dir / "metrics_full.json", out_dir / "localization.csv"):
                mlflow.log_artifact(str(path), artifact_path="reports/explain")
    print(f"explain: {len(table)} images explained, {panels} gallery panels")
    return result


def report(result: dict[str, Any]) -> None:
    """The stage's last lines: each map's pointing game and energy, the empty heatmaps."""
    summary = result["localization"]
    if summary is None:
        print(f"explain: no localization ({result['skipped']})")
        return
    label = f"  ({text})" if (text := banner(result)) else ""
    for name in MAPS_PRINTED:
        print(
            f"explain: {name:>12}: pointing game {summary[f'{name}/pointing_game']:.3f} "
            f"[{summary[f'{name}/pointing_game_ci_low']:.3f}, "
            f"{summary[f'{name}/pointing_game_ci_high']:.3f}], energy inside "
            f"{summary[f'{name}/energy_inside']:.3f} on {summary['images']} images{label}"
        )
    print(f"explain: empty heatmaps (no positive evidence): {summary['model/empty_heatmaps']:.3f}")


@errors.reports_user_errors("explain")
def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    report(explain(params, workspace_root()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
