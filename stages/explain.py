"""DVC stage `explain`: Grad-CAM heatmaps of held-out images and how well they localize.

Reads the `explain` section of params.yaml, plus `data` (classes, raw_dir), `model.resize`,
`evaluate` (bootstrap_resamples, confidence), `mlflow`, `train.out_dir` and
`split.out_dir`. Explains every image of the `explain.splits` manifests with the saved
model and writes into `explain.out_dir`: localization.csv (per image: prediction, peaks,
and with the generator's lesion ground truth, pointing-game hit and energy inside visible
lesions for the model's heatmap and two reference maps), metrics.json (DVC metrics: means
with patient-bootstrap intervals) and gallery/ (overlays of chosen test images, drawn into
a figure by the plot stage). Without `<data.raw_dir>/.lesions.csv` the localization is
skipped and the reason is recorded. Logs `explain/...` metrics into the training run.
"""

from __future__ import annotations

import argparse
import sys

from petscan.handoff.records import banner
from petscan.params import loading as config
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return config.stage_parser(__doc__).parse_args(argv)


@errors.reports_user_errors("explain")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = config.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logs.import_tensorflow()
    from petscan.evaluation.localization import run_explain  # here: TensorFlow takes ~5 s to load

    result = run_explain(params, root=config.workspace_root())
    summary = result["localization"]
    if summary is None:
        print(f"explain: no localization ({result['skipped']})")
        return 0
    label = f"  ({text})" if (text := banner(result)) else ""
    for name in ("model", "centre_prior", "random"):
        print(
            f"explain: {name:>12}: pointing game {summary[f'{name}/pointing_game']:.3f} "
            f"[{summary[f'{name}/pointing_game_ci_low']:.3f}, "
            f"{summary[f'{name}/pointing_game_ci_high']:.3f}], energy inside "
            f"{summary[f'{name}/energy_inside']:.3f} on {summary['images']} images{label}"
        )
    print(f"explain: empty heatmaps (no positive evidence): {summary['model/empty_heatmaps']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
