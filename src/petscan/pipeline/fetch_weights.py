"""DVC stage `fetch_weights`: put the backbone weights at `<weights.dir>/weights.h5`.

Reads params sections `weights` and `model` (backbone, input_size). Tries each entry of
`weights.sources` in order, checks the file loads into the configured backbone, and writes
`weights.json` beside it (source, sha256, random_init, label). Without any working source,
`weights.fallback` decides: none (fail), random (labelled random-init), imagenet.

`weights.json` (its first fields are `handoff.records.WeightsInfo`):

    {"backbone": ..., "weights_source": "file:/x.h5" | "url:https://..." | "kaggle:..." |
     "huggingface:..." | "demo:..." | "random" | "imagenet", "weights_sha256": ...,
     "random_init": bool, "weights_label": "RadImageNet" | "RANDOM-INIT backbone (not
     RadImageNet)" | ..., the checks' summary, ..., "settings": {...}}

`settings` are the params that decide which file is installed (URLs redacted); the stage
does nothing when the installed file matches its record and these settings, unless a
random init is installed and a `file` source's file has appeared since. The `pet_demo`
backbone is installed from `weights.demo`, never from the sources.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.handoff.records import (
    DEFAULT_LABEL,
    DEMO_LABEL,
    IMAGENET_LABEL,
    RANDOM_LABEL,
    WEIGHTS_META_FILE,
    WeightsInfo,
    read_weights_meta,
    weights_file,
    write_weights_meta,
)
from petscan.params import loading
from petscan.utils import errors, logs
from petscan.utils.errors import DiskFullError, disk_full_message, is_disk_full
from petscan.utils.io import sha256_file
from petscan.utils.redact import redact_values
from petscan.weights.errors import SourceError, WeightsError, failure_text
from petscan.weights.sources import expected_sha256, fetch_source, resolve_file, source_name
from petscan.weights.transfer import drop_part

if TYPE_CHECKING:
    from petscan.params.inputs import WeightsParams, WeightsSource
    from petscan.params.learning import ModelParams

SECTIONS = ("weights", "model.backbone", "model.input_size")
DEMO_BACKBONE = "pet_demo"  # installed from weights.demo, never from weights.sources
CANDIDATE = ".weights.candidate.h5"  # Keras wants an .h5 name to load the legacy format

log = logging.getLogger(__name__)


def fetch_weights(
    params: loading.StageParams,
    root: Path,
    *,
    repo: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Install `<weights.dir>/weights.h5` and `weights.json`; return the record.

    `weights.dir` resolves against `root` (the folder holding params.yaml), relative `file`
    sources against `repo` (default: the real repository root, which differs inside `dvc
    exp run --queue`). Nothing is done when the installed file is current, unless `force`.
    """
    weights, model = params.weights, params.model
    repo = repo or loading.repo_root()
    out_dir = root / weights.dir
    settings = recorded_settings(weights, model)
    if not force and (meta := _up_to_date(out_dir, settings, weights, repo)):
        log.info(
            "%s is up to date (%s); nothing to do", weights_file(out_dir), meta["weights_source"]
        )
        return meta
    logs.import_tensorflow()  # the checks build the backbone (TensorFlow takes ~5 s to load)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidate = out_dir / CANDIDATE
    try:
        if model.backbone == DEMO_BACKBONE:
            meta = _demo(weights, model, candidate, repo)
        else:
            meta = _first_working_source(weights, model, candidate, repo, progress)
        return _install(candidate, out_dir, {**meta, **_common(model, settings)})
    finally:
        candidate.unlink(missing_ok=True)


def recorded_settings(weights: WeightsParams, model: ModelParams) -> dict[str, Any]:
    """The params that decide which file is installed (timeouts and retries do not), as
    recorded in weights.json: the sources as written, URLs without credentials or query."""
    written = weights.model_dump()  # the sources' optional fields only where given
    return {
        "backbone": model.backbone,
        "input_size": list(model.input_size),
        "sha256": weights.sha256,
        "sources": redact_values(written["sources"]),
        "fallback": weights.fallback,
        "seed": weights.seed,
        "demo": written["demo"] if model.backbone == DEMO_BACKBONE else None,
    }


def _input_shape(model: ModelParams) -> tuple[int, int, int]:
    return (*model.input_size, 3)


def _file_paths(weights: WeightsParams) -> list[str]:
    """The paths of the `file` sources, as written."""
    return [s.path for s in weights.sources if s.type == "file" and s.path]


# --------------------------------------------------------------------------- candidates


def _first_working_source(
    weights: WeightsParams, model: ModelParams, candidate: Path, repo: Path, progress: bool
) -> dict[str, Any]:
    """The record of the first source that works, else of the fallback."""
    failures: list[str] = []
    for source in weights.sources:
        result = _try_source(source, candidate, repo, weights, model, progress)
        if isinstance(result, dict):
            return result
        failures.append(result)
    return _fallback(weights, model, candidate, failures, repo)


def _try_source(
    source: WeightsSource,
    candidate: Path,
    repo: Path,
    weights: WeightsParams,
    model: ModelParams,
    progress: bool,
) -> dict[str, Any] | str:
    """The record of a working source, or the line saying why it failed.

    Any failure of a source, of any exception type (a corrupt archive, a client's own
    error, a bug in a client), is that source's failure: the next source is tried. Only a
    full disk stops the chain (`DiskFullError`: every source writes to the same folder);
    Ctrl-C and SystemExit propagate."""
    from petscan.weights.checks import check_weights  # Keras

    name = source_name(source)
    try:
        label = fetch_source(source, candidate, root=repo, weights=weights, progress=progress)
        digest = sha256_file(candidate)
        expected = expected_sha256(source, weights)
        if expected and digest != expected:
            raise SourceError(f"sha256 mismatch: got {digest}, expected {expected}")
        summary = check_weights(candidate, model.backbone, _input_shape(model))
    except Exception as exc:  # noqa: BLE001 (the rule: a failing source never stops the chain)
        candidate.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(exc, candidate)) from None
        if isinstance(exc, DiskFullError):
            raise
        text = failure_text(exc)
        log.info("source %s failed: %s", name, text)
        return f"{name}: {text}"
    log.info("weights from %s (sha256 %s)", label, digest)
    return {
        "weights_source": label,
        "weights_sha256": digest,
        "random_init": False,
        "weights_label": source.label or DEFAULT_LABEL,
        **summary,
    }


def _demo(
    weights: WeightsParams, model: ModelParams, candidate: Path, repo: Path
) -> dict[str, Any]:
    """The record of the shipped `pet_demo` backbone, checked against its pinned sha256."""
    from petscan.weights.checks import check_weights  # Keras
    from petscan.weights.fallback import copy_demo_backbone

    digest = copy_demo_backbone(weights.demo, candidate, repo)
    summary = check_weights(candidate, DEMO_BACKBONE, _input_shape(model))
    log.info("the %s (%s)", DEMO_LABEL, resolve_file(weights.demo.path, repo))
    return {
        "weights_source": f"demo:{weights.demo.path}",
        "weights_sha256": digest,
        "random_init": False,
        "weights_label": DEMO_LABEL,
        **summary,
    }


def _fallback(
    weights: WeightsParams, model: ModelParams, candidate: Path, failures: list[str], repo: Path
) -> dict[str, Any]:
    """The record of `weights.fallback`'s backbone; `WeightsError` with the failure
    report for `none` (or when the ImageNet weights cannot be had)."""
    from petscan.weights import fallback  # Keras
    from petscan.weights.checks import check_weights

    backbone, shape = model.backbone, _input_shape(model)
    report = _failure_report(weights, backbone, failures, repo)
    if weights.fallback == "none":
        raise WeightsError(report)
    if weights.fallback == "imagenet":
        try:
            fallback.save_imagenet_backbone(backbone, shape, candidate)
        except WeightsError as exc:
            raise WeightsError(f"{report}\n{exc}") from None
        meta = {"weights_source": "imagenet", "random_init": False, "weights_label": IMAGENET_LABEL}
        log.warning("no RadImageNet weights: using Keras' ImageNet weights instead")
    else:
        fallback.save_random_backbone(backbone, shape, weights.seed, candidate)
        meta = {"weights_source": "random", "random_init": True, "weights_label": RANDOM_LABEL}
        log.warning(
            "!!! %s: no source gave the weights, so '%s' is RANDOMLY INITIALISED "
            "(seed %s). Every number computed with it says nothing about RadImageNet.\n%s",
            RANDOM_LABEL,
            backbone,
            weights.seed,
            report,
        )
    summary = check_weights(candidate, backbone, shape)
    meta = {**meta, "weights_sha256": sha256_file(candidate), **summary}
    meta["rejected_files"] = _local_files(weights, repo)  # so they do not "appear" next time
    return meta


def _failure_report(weights: WeightsParams, backbone: str, failures: list[str], repo: Path) -> str:
    """Every source's failure, one line each, then how to place the file by hand."""
    lines = [f"no backbone weights for {backbone!r}: every weights.sources entry failed"]
    lines += [f"  {i}. {text}" for i, text in enumerate(failures, 1)] or ["  (no sources listed)"]
    paths = _file_paths(weights)
    if paths:
        lines.append(
            f"To place the file by hand: cp RadImageNet-IRV2_notop.h5 "
            f"{resolve_file(paths[0], repo)} (the `file` source's path), then rerun."
        )
    else:
        lines.append(
            "To place the file by hand: add {type: file, path: /path/to/the.h5} to "
            "weights.sources in params.yaml, then rerun."
        )
    if weights.fallback != "random":
        lines.append(
            "Or set weights.fallback: random for a labelled random-init backbone (demo only)."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- installing


def _common(model: ModelParams, settings: dict[str, Any]) -> dict[str, Any]:
    """The record's fields that do not depend on where the file came from."""
    import keras  # loaded by the checks already (kept out of the module: `--help` is fast)

    return {
        "backbone": model.backbone,
        "input_size": settings["input_size"],
        "size_bytes": None,
        "keras_version": keras.__version__,
        "settings": settings,
    }


def _install(candidate: Path, out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Move the checked file into place, then write its record (the stale record goes
    first, so an interruption leaves a mismatch that the next run redoes)."""
    target = weights_file(out_dir)
    meta["size_bytes"] = candidate.stat().st_size
    info = WeightsInfo.from_dict(meta)
    (out_dir / WEIGHTS_META_FILE).unlink(missing_ok=True)
    os.replace(candidate, target)
    meta = write_weights_meta(out_dir, info, meta)
    for part in out_dir.glob(f"{CANDIDATE}.*.part"):  # other URLs' unfinished downloads
        drop_part(part)
    log.info("wrote %s (%s, %s)", target, info.weights_label, info.weights_source)
    return meta


def _local_files(weights: WeightsParams, repo: Path) -> dict[str, dict[str, Any]]:
    """{path: {size, mtime_ns, sha256}} of the `file` sources that exist (and were refused)."""
    found = {}
    for path in _file_paths(weights):
        if (file := resolve_file(path, repo)).is_file():
            stat = file.stat()
            found[str(file)] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": sha256_file(file),
            }
    return found


def _is_new_file(file: Path, refused: dict[str, Any] | None) -> bool:
    """True unless `file` is the one refused before (same size and time, or same bytes)."""
    if not refused:
        return True
    stat = file.stat()
    if stat.st_size == refused.get("size") and stat.st_mtime_ns == refused.get("mtime_ns"):
        return False
    return sha256_file(file) != refused.get("sha256")


def _up_to_date(
    out_dir: Path, settings: dict[str, Any], weights: WeightsParams, repo: Path
) -> dict[str, Any] | None:
    """The installed record when the file is current: same settings, same bytes, and no
    new file at a `file` source's path replacing a random init. Else None."""
    target, meta_path = weights_file(out_dir), out_dir / WEIGHTS_META_FILE
    if not (target.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_weights_meta(out_dir)
    except (ValueError, OSError):
        return None
    if meta.get("settings") != settings or sha256_file(target) != meta["weights_sha256"]:
        return None
    if meta["random_init"]:
        refused = meta.get("rejected_files") or {}
        for path in _file_paths(weights):
            file = resolve_file(path, repo)
            if file.is_file() and _is_new_file(file, refused.get(str(file))):
                log.info("a weights file appeared at %s: replacing the random init", path)
                return None
    return meta


# --------------------------------------------------------------------------- the command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loading.stage_parser(
        __doc__.split("\n\n")[0],
        prog="fetch_weights",
        epilog="Place the RadImageNet file by hand at the `file` source's path in params.yaml.",
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument(
        "--force", action="store_true", help="fetch again even when the installed file is current"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


@errors.reports_user_errors("fetch_weights")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = loading.load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = fetch_weights(
        params,
        loading.workspace_root(Path(args.params).resolve().parent),
        force=args.force,
        progress=not args.no_progress,
    )
    flag = "  <-- NOT RadImageNet" if meta["random_init"] else ""
    print(
        f"backbone {meta['backbone']}: {meta['weights_label']} from {meta['weights_source']}{flag}"
    )
    print(f"sha256 {meta['weights_sha256']}")
    return 0
