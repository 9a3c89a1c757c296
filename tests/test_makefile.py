"""Makefile: the UI and dashboard stay on 127.0.0.1 unless asked on the command line, and a
storage URL never reaches a command line (checked with `make -n`, which runs nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(*args: str, **env: str) -> str:
    """The recipe lines `make -n` prints (the setup target's included)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return result.stdout


def test_ui_host_is_loopback_whatever_the_environment_says():
    text = dry_run("ui", HOST="0.0.0.0", UI_HOST="0.0.0.0")
    assert "--host '127.0.0.1'" in text and "0.0.0.0" not in text


def test_ui_host_from_the_command_line_comes_with_a_warning():
    text = dry_run("ui", "UI_HOST=0.0.0.0")
    assert "--host '0.0.0.0'" in text
    assert "WARNING: UI_HOST=0.0.0.0: the MLflow UI will be reachable from other machines" in text


def test_dashboard_storage_stays_off_the_command_line():
    secret = 'postgresql://u:S3CRET"$(id)`id`@127.0.0.1/x'
    text = dry_run("dashboard", f"STORAGE={secret}")
    assert "stages/tune.py --dashboard" in text and "--host '127.0.0.1'" in text
    assert "S3CRET" not in text and "`id`" not in text and "$(id)" not in text
