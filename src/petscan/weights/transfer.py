"""Copying bytes under a budget: a size cap, a deadline, a progress bar, part files.

Every copy of a weights file (a download, an archive member, a local file) goes through
`pump`, in reads of at most `CHUNK` bytes. A `Budget` stops a copy that grows past its size
cap (the part file is deleted) or outlasts its deadline (the part file is kept to resume).
A part file `<name>.part` has a resume record `<name>.part.json` beside it (`resume_file`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from petscan.weights.errors import SourceError

CHUNK = 1 << 20
MB = 1 << 20  # weights.max_download_mb counts these


class Budget:
    """The size cap (bytes, None: none) and the overall deadline (seconds, None: none)
    of one download."""

    def __init__(self, max_bytes: int | None, deadline_s: float | None) -> None:
        self.max_bytes = max_bytes or None
        self.deadline_s = deadline_s or None
        self.ends = time.monotonic() + self.deadline_s if self.deadline_s else None

    def left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return max(0.0, self.ends - time.monotonic()) if self.ends is not None else float("inf")

    def timeout(self, per_read_s: float) -> float:
        """The socket timeout for the next request; `SourceError` once the deadline passed."""
        self.check_time(None)
        if self.ends is None:
            return per_read_s
        return max(0.1, min(per_read_s, self.ends - time.monotonic()))

    def check_time(self, part: Path | None) -> None:
        """`SourceError` once the deadline passed (`part` is kept, to resume)."""
        if self.ends is not None and time.monotonic() > self.ends:
            kept = (
                f"; {part.stat().st_size} bytes are kept in {part.name} to resume"
                if (part is not None and part.exists())
                else ""
            )
            raise SourceError(
                f"the download took longer than weights.deadline_s = {self.deadline_s:g} s{kept}"
            )

    def check_size(self, size: int, part: Path, what: str) -> None:
        """`SourceError` (and the part file deleted) when `size` bytes exceed the cap."""
        if self.max_bytes is not None and size > self.max_bytes:
            drop_part(part)
            raise SourceError(
                f"{what} {size} bytes, more than weights.max_download_mb "
                f"({self.max_bytes / MB:g} MB); the download was deleted"
            )


def resume_file(part: Path) -> Path:
    """Beside a part file: the validators (ETag, Last-Modified) of the file it is part of."""
    return part.with_name(part.name + ".json")


def drop_part(part: Path) -> None:
    """Delete a part file and its resume record."""
    part.unlink(missing_ok=True)
    resume_file(part).unlink(missing_ok=True)


def byte_bar(desc: str, total: int | None, progress: bool, initial: int = 0) -> tqdm:
    """A progress bar counting bytes (KiB, MiB, ...); `total=None` when the size is unknown."""
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
    )


def pump(
    source: BinaryIO,
    sink: BinaryIO,
    bar: tqdm,
    budget: Budget | None = None,
    already: int = 0,
    part: Path | None = None,
) -> int:
    """Copy `source` into `sink` in reads of at most `CHUNK` bytes, advancing `bar`; the
    bytes copied. With a `budget`, `already + copied` must stay within its size cap and
    the copy within its deadline (checked after every read; `part` is the file written)."""
    copied = 0
    read = getattr(source, "read1", source.read)  # read1: returns what has arrived
    while chunk := read(CHUNK):
        sink.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
        if budget is not None:
            budget.check_size(already + copied, part, "the body reached")
            budget.check_time(part)
    return copied


def copy_file(src: Path, dest: Path, progress: bool) -> None:
    """Copy `src` to `dest` (through `pump`, so a full disk is seen on the first write)."""
    with (
        src.open("rb") as fin,
        dest.open("wb") as fout,
        byte_bar(f"copy {src.name}", src.stat().st_size, progress) as bar,
    ):
        pump(fin, fout, bar)
