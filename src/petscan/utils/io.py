"""Atomic file output: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from petscan.utils.errors import DiskFullError, disk_full_message, is_disk_full


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would race with
# threads (TensorFlow, MLflow) creating files later on.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(
    path: str | Path, suffix: str | None = None, mode: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only on success.

    `suffix` keeps an extension that a writer insists on (Keras wants `.keras`).
    `mode` (e.g. 0o600 for a file holding a password) is the file's permission bits from
    its creation on; by default the umask decides, as for any new file.
    A full disk or quota, or a read-only folder, raises `DiskFullError` naming `path`.
    """
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.",
            suffix=suffix if suffix is not None else ".tmp",
            dir=path.parent,
        )
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_full_names(path):
            if mode is not None:
                os.chmod(tmp_path, mode)  # before anything is written into it
            yield tmp_path
            os.chmod(tmp_path, mode if mode is not None else 0o666 & ~_UMASK)  # mkstemp: 0600
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """An OSError of a full disk (or quota, or read-only folder) inside the block becomes a
    `DiskFullError` naming `path` (a write() that fails says no file name)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise DiskFullError(disk_full_message(err, path)) from err


def write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any, mode: int | None = None) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_text(path, text, mode=mode)


def read_json(path: str | Path) -> Any:
    with Path(path).open() as fh:
        return json.load(fh)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
