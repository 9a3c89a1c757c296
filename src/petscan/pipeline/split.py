"""DVC stage `split`: index `data.raw_dir`, report bad files and write the split manifests.

Reads the `data` and `split` sections of params.yaml and writes into `split.out_dir`:
train.csv, val.csv, test.csv, index.csv, summary.json (DVC metrics) and report.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from petscan.handoff.manifests import SPLITS
from petscan.params.loading import load_sections, stage_parser, workspace_root
from petscan.utils import errors, logs
from petscan.utils.io import write_csv, write_json

if TYPE_CHECKING:
    from petscan.data.split import SplitResult
    from petscan.params.loading import StageParams

log = logging.getLogger(__name__)

SECTIONS = ("data", "split")
OUTPUTS = ("train.csv", "val.csv", "test.csv", "index.csv", "summary.json", "report.json")


def split(
    params: StageParams, root: str | Path | None = None, progress: bool = True
) -> SplitResult:
    """Index, split, write into `split.out_dir` (relative to `root`) and log a summary.

    When the split fails (`DataError`), the old outputs are removed and `report.json`
    holds the error and what was found, so nothing stale looks like a result.
    """
    from petscan.data.index import DataError  # here: pandas and SciPy load in ~1 s
    from petscan.data.split import make_split

    out_name = Path(params.split.out_dir)
    out_dir = out_name if root is None or out_name.is_absolute() else Path(root) / out_name
    try:
        result = make_split(params.data, params.split, root=root, progress=progress)
    except DataError as err:
        remove_outputs(out_dir)
        write_json(out_dir / "report.json", {"error": str(err), **getattr(err, "report", {})})
        log.debug("split failed; wrote %s/report.json", out_name)  # the error is THE line
        raise
    write_split(result, out_dir)
    for line in describe(result):
        log.info(line)
    log.info("wrote %s/{train,val,test}.csv, index.csv, summary.json, report.json", out_name)
    return result


def remove_outputs(out_dir: str | Path) -> None:
    """Delete the stage's outputs in `out_dir`, so none from an earlier run looks current."""
    for name in OUTPUTS:
        (Path(out_dir) / name).unlink(missing_ok=True)


def write_split(result: SplitResult, out_dir: str | Path) -> None:
    """Write train/val/test.csv, index.csv, summary.json and report.json, each atomically.

    The old outputs go first and the report comes last: a run stopped half-way leaves
    missing files (which DVC reruns), never a mix of old and new ones.
    """
    out = Path(out_dir)
    remove_outputs(out)
    for name in SPLITS:
        write_csv(out / f"{name}.csv", result.manifest(name))
    index_columns = [c for c in result.images.columns if c != "folder"]
    write_csv(out / "index.csv", result.images[index_columns].sort_values("path"))
    write_json(out / "summary.json", result.summary)
    write_json(out / "report.json", result.report)


def describe(result: SplitResult) -> list[str]:
    """A short human summary of the split."""
    summary, report = result.summary, result.report
    files = summary["files"]
    lines = [
        f"split mode {report['mode']}, seed {report['seed']}, ratios {report['ratios']}: "
        + ", ".join(f"{s} {summary[s]['total']}" for s in SPLITS)
        + f" of {summary['total']['total']} images ({summary['patients']['total']} patients)"
    ]
    for name in report["classes"]:
        counts = " / ".join(str(summary[s][name]) for s in SPLITS)
        wanted = " / ".join(str(report["targets"][s][name]) for s in SPLITS)
        lines.append(f"  {name}: {counts} (target {wanted})")
    lines.append(
        f"left out: {files['bad']} bad, {files['skipped']} skipped, "
        f"{files['cross_class_duplicate_files']} cross-class duplicates; "
        f"{files['duplicate_groups']} same-class duplicate groups kept together; "
        f"{files['unmatched_patient_names']} names without a patient id; "
        f"{files['link_problems']} symbolic links not followed"
    )
    lines += _first(report["bad_files"], lambda e: f"  bad: {e['path']}: {e['reason']}")
    lines += _first(
        report["cross_class_duplicates"],
        lambda g: f"  cross-class duplicate ({', '.join(g['classes'])}): {', '.join(g['paths'])}",
    )
    for entry in report["link_problems"][:10]:
        lines.append(f"  link: {entry['path']}: {entry['reason']}")
    for entry in report["ignored_folders"]:
        lines.append(f"  ignored folder {entry['folder']} ({entry['files']} files)")
    return lines


def _first(entries: list, line, shown: int = 10) -> list[str]:
    """One line for each of the first `shown` entries, then how many more the report has."""
    lines = [line(entry) for entry in entries[:shown]]
    if len(entries) > shown:
        lines.append(f"  ... {len(entries) - shown} more in report.json")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


@errors.reports_user_errors("split")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    split(params, root=workspace_root(), progress=not args.no_progress)
    return 0
