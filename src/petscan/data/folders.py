"""Listing image files under a folder: symbolic links followed safely, each real file once,
names that are not valid UTF-8 set aside (they crash pyarrow, CSV and JSON writers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, hidden files skipped.

    Each real file once; links are handled as `FolderScan` does (see `scan_images` for
    the list of links that were not followed).
    """
    return scan_images(folder)[0]


def scan_images(folder: str | Path) -> tuple[list[Path], list[dict[str, str]]]:
    """(image files, problems: links not followed, names not UTF-8) under `folder`:
    `FolderScan` with `folder` as boundary."""
    scan = FolderScan(Path(folder))
    files = [p for p in scan.walk(Path(folder)) if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files), scan.problems + scan.bad_names


BAD_NAME = "the file name is not valid UTF-8 (shown with \\x escapes): rename the file"


def is_utf8(path: str | Path) -> bool:
    """False for a path holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | Path) -> str:
    """`path` as text that prints and writes anywhere: bytes that are not UTF-8 become
    backslash escapes (b"scan\\xff.png" -> "scan\\xff.png")."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


@dataclass
class FolderScan:
    """Walk folders following symbolic links safely; each real file is yielded once.

    - a link that cannot be resolved (broken, or a loop of links) is a problem;
    - a folder link that points to the scanned folder, one of its ancestors, or a folder
      inside it is not followed (a loop, or files that are counted where they are);
    - a folder link leaving `boundary` is followed, and noted (`notes`), as is a folder
      reached twice through links from outside;
    - a folder link into one of `others` (folders inside `boundary`: the other classes'
      folders) is followed and noted: its files are reached from here too;
    - a file reached a second time (through a link) is not yielded again, and noted.
    File links leaving the folder are followed silently (a DVC cache linked in).
    Hidden files and folders are skipped; a file whose path is not valid UTF-8 is not
    yielded but listed in `bad_names`. `problems`, `notes` and `bad_names` hold
    {"path", "reason"} (and "target" for links) with paths as found.
    """

    boundary: Path
    others: tuple[Path, ...] = ()
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    bad_names: list[dict[str, str]] = field(default_factory=list)
    _files: dict[Path, Path] = field(default_factory=dict)
    _dirs: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.boundary = Path(os.path.realpath(self.boundary))
        self.others = tuple(Path(os.path.realpath(p)) for p in self.others)

    def walk(self, folder: Path) -> Iterator[Path]:
        """Files under `folder` (recursively, sorted by name within each folder)."""
        links: list[Path] = []
        for current, dirs, files in os.walk(folder, followlinks=False):
            here = Path(current)
            self._dirs.add(Path(os.path.realpath(here)))
            kept = []
            for name in sorted(d for d in dirs if not d.startswith(".")):
                (links if (here / name).is_symlink() else kept).append(here / name)
            dirs[:] = [p.name for p in kept]
            for name in sorted(f for f in files if not f.startswith(".")):
                path = here / name
                if path.is_symlink():
                    links.append(path)
                else:
                    yield from self._file(path, Path(os.path.realpath(path)))
        for link in sorted(links):
            yield from self.follow(link)

    def _file(self, path: Path, real: Path) -> Iterator[Path]:
        if not is_utf8(path):
            self.bad_names.append({"path": path.as_posix(), "reason": BAD_NAME})
            return
        first = self._files.setdefault(real, path)
        if first is path:
            yield path
        else:
            self._note(self.notes, path, real, f"the same file as {first.as_posix()}: counted once")

    def follow(self, link: Path) -> Iterator[Path]:
        """The files reached through one symbolic link (file or folder), by the rules above."""
        try:
            real = link.resolve(strict=True)
        except (OSError, RuntimeError):
            self._note(self.problems, link, None, "broken symbolic link, or a loop of links")
            return
        if not real.is_dir():
            yield from self._file(link, real)
            return
        if any(real == other or real.is_relative_to(other) for other in self.others):
            if real in self._dirs:
                self._note(self.problems, link, real, "symbolic link loop: folder already scanned")
                return
            self._note(
                self.notes, link, real, "symbolic link into another class's folder: followed"
            )
            yield from self.walk(link)
            return
        inside = real == self.boundary or real.is_relative_to(self.boundary)
        if inside or self.boundary.is_relative_to(real):
            reason = (
                "symbolic link loop: points to a folder that holds it; not followed"
                if _holds(real, link)
                else "points to a folder inside the scanned one: not followed (its files "
                "are counted where they are)"
            )
            self._note(self.problems, link, real, reason)
            return
        if real in self._dirs:
            self._note(self.problems, link, real, "symbolic link loop: folder already scanned")
            return
        self._note(self.notes, link, real, "symbolic link leaving the data folder: followed")
        yield from self.walk(link)

    @staticmethod
    def _note(where: list, path: Path, real: Path | None, reason: str) -> None:
        entry = {"path": path.as_posix(), "reason": reason}
        if real is not None:
            entry["target"] = real.as_posix()
        where.append(entry)


def _holds(folder: Path, link: Path) -> bool:
    """True when `link` lies inside `folder` (by real path of its parent)."""
    parent = Path(os.path.realpath(link.parent))
    return parent == folder or parent.is_relative_to(folder)
