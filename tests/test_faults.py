"""A stage killed with SIGKILL half-way through writing: nothing it leaves behind looks
finished to `dvc repro`, and the rerun completes (tiny repository copy, as test_pipeline)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from test_pipeline import VENV_BIN, dvc, tiny_repo

SPLITS = ("train", "val", "test")


def _slow_featurize(params: dict) -> None:
    # enough backbone inputs (120 images x 25 views) for featurize to take a few seconds
    params["synthetic"]["counts"] = {"No cancer": 40, "breast cancer": 40, "prostate cancer": 40}
    params["featurize"].update(augment_views=24, batch_size=25)


@pytest.fixture
def repo(tmp_path) -> tuple[Path, dict]:
    return tiny_repo(tmp_path / "repo", _slow_featurize)


def _stage_processes(parent: psutil.Process, script: str) -> list[psutil.Process]:
    """The Python processes running `script` under `parent` (not a `sh -c` wrapper whose
    command line also names it: killing only the shell would leave Python running)."""
    found = []
    for child in parent.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmdline and "python" in Path(cmdline[0]).name and script in cmdline[1:]:
            found.append(child)
    return found


def _kill_mid_write(root: Path, env: dict, staging: Path, timeout_s: float = 240) -> None:
    """Run `dvc repro featurize` and SIGKILL the stage once it has started writing."""
    proc = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro", "featurize"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if staging.is_dir() and any(staging.iterdir()):
                stages = _stage_processes(psutil.Process(proc.pid), "stages/featurize.py")
                assert stages, "featurize is writing, so its process exists"
                for stage in stages:
                    stage.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, "featurize finished before it could be killed:\n" + (
                proc.stdout.read()
            )
            time.sleep(0.01)
        else:
            raise AssertionError("featurize never started writing")
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    assert "failed to reproduce 'featurize'" in output.lower() or "-9" in output, output


@pytest.mark.slow
def test_featurize_killed_mid_write_is_redone_by_the_next_repro(repo):
    root, env = repo
    dvc(root, env, "repro", "featurize")
    features = root / "data" / "features"
    staging = root / "data" / ".features.partial"
    old = {s: json.loads((features / f"{s}.json").read_text()) for s in SPLITS}
    assert {meta["seed"] for meta in old.values()} == {101}

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["featurize"]["seed"] = 7  # featurize must run again
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _kill_mid_write(root, env, staging)

    # DVC removed the old outputs before it ran the stage, and the killed run moved nothing
    # in: data/features is absent, its partial files sit only in the staging folder
    assert not features.exists()
    assert staging.is_dir() and any(staging.iterdir())
    status = dvc(root, env, "status", "featurize")
    assert "changed" in status and "featurize" in status, "DVC does not take it for finished"

    out = dvc(root, env, "repro", "featurize")
    assert "Running stage 'featurize'" in out
    assert not staging.exists(), "the killed run's partial files are cleaned up"
    from petscan.data.features import load_features

    for split in SPLITS:
        meta = json.loads((features / f"{split}.json").read_text())
        assert meta["seed"] == 7
        cached = load_features(features, split, root / "data" / "split" / f"{split}.csv")
        assert cached.features.shape == (meta["rows"], meta["views"], meta["dim"])
    assert "up to date" in dvc(root, env, "repro", "featurize").lower()
