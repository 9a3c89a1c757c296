"""DVC stage `ingest`: DICOM PET series and NIfTI volumes -> SUV MIP views in class folders.

Reads the studies under `ingest.source_dir` (one a sub-folder of DICOM files or a NIfTI
file) and the labels table `ingest.labels` (the only source of classes), and writes
`ingest.out_dir/<class folder>/<pseudonym>_v<k>.png` (16-bit grey MIPs at `ingest.angles`)
and `ingest.report` (one row per study: SUV scale factor, scan-time source, uptake time,
voxel size, or why it was left out). A bad study is a row of the report, never the end of
the run; the folder is built beside `out_dir` and moved into place when every study is done.

The pipeline starts from these images when `data.raw_dir` is `ingest.out_dir`
(`dvc exp run -S data.raw_dir=data/ingested`); otherwise (the demo's images) the stage only
writes an empty `out_dir` and a report that says so.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.params.loading import load_sections, repo_root, stage_parser, workspace_root
from petscan.utils import errors, logs
from petscan.utils.errors import UserError

if TYPE_CHECKING:
    from petscan.params.loading import StageParams

log = logging.getLogger(__name__)

SECTIONS = ("ingest", "data.raw_dir", "data.classes")


def _at(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def ingest(params: StageParams, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Ingest every study (module docstring); the report rows."""
    from petscan.ingest.labels import read_labels
    from petscan.ingest.pseudonym import load_key
    from petscan.ingest.report import write_report

    cfg = params.ingest
    root = Path(root or workspace_root())
    out_dir, report = _at(root, cfg.out_dir), _at(root, cfg.report)
    if _at(root, params.data.raw_dir).resolve() != out_dir.resolve():
        _replace_dir(out_dir, _fresh_dir(out_dir))
        note = f"data.raw_dir ({params.data.raw_dir}) is not ingest.out_dir: nothing ingested"
        write_report(report, [{"study": "-", "status": "skipped", "reason": note}])
        log.info("ingest: %s (the pipeline starts from the images)", note)
        return []
    source = _at(root, cfg.source_dir)
    if not source.is_dir():
        raise errors.MissingInputError(
            f"{cfg.source_dir}: no such folder (ingest.source_dir); `petscan generate --volumes`"
            " writes synthetic studies there"
        )
    labels = read_labels(_at(root, cfg.labels), params.data.classes)
    key = load_key(cfg.key_env, cfg.key_file, repo_root())
    _check_map_path(cfg.pseudonym_map, root)
    staging = _fresh_dir(out_dir)
    try:
        rows, mapping = _ingest_all(source, labels, key, cfg, staging)
        done = sum(row["status"] == "ok" for row in rows)
        write_report(report, rows)
        if not done:
            raise errors.BadInputError(
                f"{cfg.source_dir}: no study could be ingested ({len(rows)} found); the reasons"
                f" are in {cfg.report}"
            )
        _replace_dir(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if cfg.pseudonym_map:
        _write_map(_at(root, cfg.pseudonym_map), mapping)
    log.info("ingest: %d of %d studies -> %s; report %s", done, len(rows), cfg.out_dir, cfg.report)
    for row in rows:
        if row["status"] != "ok":
            log.info("  left out: %s", row["reason"])
    return rows


def _ingest_all(source, labels, key, cfg, staging) -> tuple[list[dict], dict[str, str]]:
    """Each study in turn, one in memory at a time; a failure is that study's row."""
    from petscan.ingest.studies import find_studies

    rows, mapping, views = [], {}, {}
    studies, skipped = find_studies(source, cfg.nifti_names)
    for name in skipped:
        reason = f"{name}: not a PET volume by its name (ingest.nifti_names), skipped"
        rows.append({"study": name, "status": "skipped", "reason": reason})
    for study in studies:
        written: list[Path] = []
        try:
            row, patient_id = _one_study(study, labels, key, cfg, staging, views, written)
        except Exception as err:  # noqa: BLE001 - one bad study never stops the others
            for path in written:  # no view of a study left out stays behind
                path.unlink(missing_ok=True)
            reason = str(err)
            if not isinstance(err, UserError):
                reason = f"study {study.name}: unexpected {type(err).__name__}: {err} (a bug?)"
                log.debug("study %s failed", study.name, exc_info=True)
            rows.append({"study": study.name, "status": "excluded", "reason": reason})
            continue
        mapping[row["pseudonym"]] = patient_id
        rows.append(row)
    return rows, mapping


def _one_study(study, labels, key, cfg, staging, views, written) -> tuple[dict, str]:
    """Load, project and write one study's views (appended to `written`); its report row.
    Its arrays are freed on return, before the next study is read."""
    from petscan.ingest import mip
    from petscan.ingest.pseudonym import pseudonym
    from petscan.ingest.studies import load_study

    volume = load_study(study, labels, cfg)
    alias = pseudonym(volume.patient_id, key)
    iso = mip.isotropic(volume.suv, volume.spacing, cfg.voxel_mm)
    del volume.suv  # only the resampled copy is needed from here on
    first = views.get(alias, 0)
    for k, angle in enumerate(cfg.angles, start=first + 1):
        projection = mip.mip(iso, angle)
        picture = mip.display(projection, tuple(cfg.suv_window), cfg.display == "inverted")
        written.append(staging / volume.label.folder / f"{alias}_v{k}.png")
        mip.write_png(written[-1], picture)
    views[alias] = first + len(cfg.angles)
    row = {
        "study": study.name,
        "status": "ok",
        "pseudonym": alias,
        **volume.record,
        "voxel_mm": cfg.voxel_mm,
        "shape": "x".join(str(n) for n in iso.shape),
        "views": " ".join(path.name for path in written),
        "angles": " ".join(f"{a:g}" for a in cfg.angles),
    }
    return row, volume.patient_id


def _fresh_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def _replace_dir(out_dir: Path, staging: Path) -> None:
    """Swap the finished `staging` folder in for `out_dir` (the old one removed first)."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        shutil.rmtree(old)
    staging.chmod(0o755)
    staging.rename(out_dir)


def _check_map_path(name: str | None, root: Path) -> None:
    if name and _at(root, name).resolve().is_relative_to((root / "data").resolve()):
        raise errors.ParamsError(
            f"params.yaml: ingest.pseudonym_map = {name}: the pseudonym -> PatientID map must "
            "stay out of data/ (choose a path outside the repository)"
        )


def _write_map(path: Path, mapping: dict[str, str]) -> None:
    from petscan.utils.io import write_text

    lines = ["pseudonym,patient_id"] + [f"{a},{p}" for a, p in sorted(mapping.items())]
    write_text(path, "\n".join(lines) + "\n", mode=0o600)
    log.info("ingest: pseudonym -> PatientID map written to %s (keep it private)", path)


@errors.reports_user_errors("ingest")
def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ingest(params, root=workspace_root())
    return 0
