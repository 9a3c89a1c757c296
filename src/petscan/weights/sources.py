"""The four kinds of weights source, each putting one file at a given path.

`file` (a path, `~` expanded, relative to the repository root), `url` (https, including
Google Drive share links: `weights.http`), `kaggle` (a data set file, through the optional
`kaggle` client) and `huggingface` (a hub file at a pinned revision, through the optional
`huggingface_hub` client). A remote source is used only with a pinned sha256 (its own, or
`weights.sha256`); the caller compares the file with it (`expected_sha256`).

Older Kaggle clients deliver `<file>.zip`. A member's name could be absolute, climb out
with `..` or be a link (zip slip): names only select the member (`safe_member_name`), and
its bytes are copied to a path of our choosing, within the size cap (`extract_member`).
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from petscan.utils.redact import redact_url
from petscan.weights.errors import SourceError
from petscan.weights.http import download, make_ssl_context
from petscan.weights.transfer import MB, Budget, byte_bar, copy_file, pump

if TYPE_CHECKING:
    from types import ModuleType

    from petscan.params.inputs import (
        FileSource,
        HuggingFaceSource,
        KaggleSource,
        UrlSource,
        WeightsParams,
        WeightsSource,
    )

# the fields that name a source's file: a null one skips the source
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "file": ("path",),
    "url": ("url",),
    "kaggle": ("dataset", "file"),
    "huggingface": ("repo_id", "filename"),
}
REMOTE_SOURCES = ("url", "kaggle", "huggingface")  # these need a pinned sha256


def source_name(source: WeightsSource) -> str:
    """A short name for messages: `url https://...` (redacted), `kaggle owner/set/file`..."""
    values = [getattr(source, field) for field in SOURCE_FIELDS[source.type]]
    return f"{source.type} {'/'.join(redact_url(v) for v in values if v)}".strip()


def resolve_file(path: str | Path, root: Path) -> Path:
    """A `file` source path: `~` expanded, relative paths against the repository root
    (the rule `params.loading.source_file_exists` applies to `model.backbone: auto`)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def expected_sha256(source: WeightsSource, weights: WeightsParams) -> str | None:
    """The source's own `sha256`, else `weights.sha256`, in lower case."""
    value = source.sha256 or weights.sha256
    return value.lower() if value else None


def max_download_bytes(weights: WeightsParams) -> int:
    """`weights.max_download_mb` in bytes."""
    return int(weights.max_download_mb * MB)


def check_pins(source: WeightsSource, weights: WeightsParams) -> None:
    """A remote source needs a pinned sha256 (the first download is not trusted blindly)
    and a hub source a pinned revision (a commit hash). Raises `SourceError`."""
    if source.type not in REMOTE_SOURCES:
        return
    if not expected_sha256(source, weights):
        raise SourceError(
            "no sha256 pinned, and a remote file is installed only when its checksum is known: "
            "the first time, download the file yourself, install it once as a `file` source "
            "(its sha256 is printed and written to weights.json) or run `sha256sum` on it, then "
            "set weights.sha256 (or this source's sha256) to that value"
        )
    if source.type == "huggingface" and not re.fullmatch(r"[0-9a-f]{40}", source.revision or ""):
        raise SourceError(
            f"revision must pin a commit (40 hexadecimal characters), got "
            f"{source.revision!r}: a branch or tag can be moved; copy the commit hash "
            "from the repository's history on the hub"
        )


def fetch_source(
    source: WeightsSource, dest: Path, *, root: Path, weights: WeightsParams, progress: bool = True
) -> str:
    """Put the file of one source at `dest`; return its metadata `source` string.

    Raises `SourceError` (a null field, a missing pin or optional client, not found, an
    HTTP error...).
    """
    nulls = [field for field in SOURCE_FIELDS[source.type] if not getattr(source, field)]
    if nulls:
        raise SourceError(f"skipped: {', '.join(nulls)} is null")
    check_pins(source, weights)
    fetchers = {
        "file": _fetch_file,
        "url": _fetch_url,
        "kaggle": _fetch_kaggle,
        "huggingface": _fetch_huggingface,
    }
    return fetchers[source.type](source, dest, root=root, weights=weights, progress=progress)


def _fetch_file(
    source: FileSource, dest: Path, *, root: Path, weights: WeightsParams, progress: bool
) -> str:
    path = resolve_file(source.path, root)
    if not path.is_file():
        raise SourceError(f"not found at {path}")
    copy_file(path, dest, progress)
    return f"file:{path}"


def _fetch_url(
    source: UrlSource, dest: Path, *, root: Path, weights: WeightsParams, progress: bool
) -> str:
    ca_bundle = weights.ca_bundle
    download(
        source.url,
        dest,
        sha256=expected_sha256(source, weights),
        retries=weights.retries,
        timeout_s=weights.timeout_s,
        retry_wait_s=weights.retry_wait_s,
        progress=progress,
        max_bytes=max_download_bytes(weights),
        deadline_s=weights.deadline_s,
        ssl_context=make_ssl_context(resolve_file(ca_bundle, root)) if ca_bundle else None,
    )
    return f"url:{redact_url(source.url)}"


def _fetch_kaggle(
    source: KaggleSource, dest: Path, *, root: Path, weights: WeightsParams, progress: bool
) -> str:
    api_module = _import_optional("kaggle.api.kaggle_api_extended", "kaggle", "kaggle")
    try:
        api = api_module.KaggleApi()
        api.authenticate()
    except Exception as exc:  # the client raises OSError/ValueError without credentials
        raise SourceError(
            f"Kaggle credentials are not configured ({exc}): put kaggle.json in ~/.kaggle/ "
            "(chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kaggle-") as tmp:
        try:
            api.dataset_download_file(
                source.dataset, source.file, path=tmp, force=True, quiet=not progress
            )
        except Exception as exc:
            raise SourceError(f"Kaggle download failed: {exc}") from None
        got = _kaggle_result(Path(tmp), source.file, max_download_bytes(weights))
        os.replace(got, dest)
    return f"kaggle:{source.dataset}/{source.file}"


def _kaggle_result(folder: Path, filename: str, max_bytes: int | None = None) -> Path:
    """The downloaded file inside `folder` (a private temporary folder); older Kaggle
    clients deliver `<file>.zip`, whose member is copied to `folder/<file>`."""
    name = Path(filename).name
    target = folder / name
    if target.is_file() and not target.is_symlink():
        return target
    archive = folder / f"{name}.zip"
    if archive.is_file() and not archive.is_symlink():
        extract_member(archive, name, target, max_bytes)
        return target
    raise SourceError(f"the Kaggle client wrote no {name} (found {sorted(os.listdir(folder))})")


def safe_member_name(info: zipfile.ZipInfo) -> str | None:
    """The normalised name of a regular-file member that stays inside the folder it is
    extracted to; None for a folder, a symlink, an absolute name or one with `..`."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or kind not in (0, stat.S_IFREG):  # 0: made on a system without modes
        return None
    name = info.filename.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or not parts:
        return None
    return "/".join(parts)


def extract_member(archive: Path, name: str, target: Path, max_bytes: int | None = None) -> None:
    """Copy the archive's regular member whose base name is `name` to `target`.

    A member's own name never becomes a path: only its bytes are read. Members that are
    links, absolute or climb out with `..` are ignored; several candidates, or none, is
    an error. At most `max_bytes` are written (a zip bomb stops there)."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        safe = [(safe_member_name(i), i) for i in infos]
        matches = [i for n, i in safe if n is not None and n.rsplit("/", 1)[-1] == name]
        if len(matches) != 1:
            refused = sum(1 for n, i in safe if n is None and not i.is_dir())
            raise SourceError(
                f"the Kaggle archive {archive.name} holds {len(matches)} safe members named "
                f"{name} ({len(infos)} members, {refused} refused: links, absolute or `..` "
                "names); expected exactly one"
            )
        member = matches[0]
        if max_bytes is not None and member.file_size > max_bytes:
            raise SourceError(
                f"{member.file_size} bytes in the archive, more than weights.max_download_mb"
            )
        budget = Budget(max_bytes, None)
        with zf.open(member) as src, target.open("wb") as out:
            pump(src, out, byte_bar("unzip", None, False), budget=budget, part=target)


def _fetch_huggingface(
    source: HuggingFaceSource, dest: Path, *, root: Path, weights: WeightsParams, progress: bool
) -> str:
    hub = _import_optional("huggingface_hub", "huggingface_hub", "hub")
    try:
        cached = hub.hf_hub_download(
            repo_id=source.repo_id,
            filename=source.filename,
            revision=source.revision,
            repo_type=source.repo_type,
        )
    except Exception as exc:  # hub errors (offline, 404, gated) have many classes
        raise SourceError(f"Hugging Face download failed: {exc}") from None
    copy_file(Path(cached), dest, progress)
    return f"huggingface:{source.repo_id}/{source.filename}@{source.revision}"


def _import_optional(module: str, package: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SourceError(
            f"the optional '{package}' client is not installed: pip install 'petscan[{extra}]'"
        ) from None
    except Exception as exc:  # `import kaggle` authenticates at import time
        raise SourceError(
            f"the '{package}' client failed to start ({exc}); for Kaggle put kaggle.json in "
            "~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
