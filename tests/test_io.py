"""io: atomic writes, and the permission bits of files holding secrets."""

from __future__ import annotations

import os
import stat

import pytest

from petscan.utils import io


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_mode_holds_from_creation(tmp_path):
    seen = []
    with io.atomic_path(tmp_path / "spec.json", mode=0o600) as tmp:
        seen.append(mode_of(tmp))  # before any byte of the secret is written
        tmp.write_text('{"storage": "postgresql://u:pw@db/o"}')
        seen.append(mode_of(tmp))
    assert seen == [0o600, 0o600] and mode_of(tmp_path / "spec.json") == 0o600
    io.write_json(tmp_path / "b.json", {"a": 1}, mode=0o600)
    assert mode_of(tmp_path / "b.json") == 0o600


def test_atomic_path_default_follows_the_umask(tmp_path):
    io.write_text(tmp_path / "a.txt", "x")
    assert mode_of(tmp_path / "a.txt") == 0o666 & ~io._UMASK
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
