"""TensorFlow's start-up notices: hidden by default, all back with PETSCAN_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

CODE = (
    "from petscan import logs\n"
    "logs.setup()\n"
    "logs.import_tensorflow()\n"
    "import sys; print('after', file=sys.stderr)\n"
)


def run(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PETSCAN_VERBOSE"))}
    result = subprocess.run(
        [sys.executable, "-c", CODE],
        env={**env, "PYTHONPATH": str(REPO / "src"), **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stderr


def test_startup_notices_are_hidden_and_come_back_when_verbose():
    assert run({}) == "after\n"
    verbose = run({"PETSCAN_VERBOSE": "1"})
    notices = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard")
    assert any(notice in verbose for notice in notices), verbose
    assert verbose.endswith("after\n")
