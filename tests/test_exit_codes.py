"""The exit-code contract of every command (`petscan.utils.errors`): 0 ok, 1 a user error in ONE
stderr line, 2 usage (argparse), 70 a bug (its traceback, then one line saying so).

Every DVC stage and every `petscan <command>` runs as a subprocess with an input that is
the user's fault (a missing params file, a missing store or model, a missing database
driver, a non-empty output folder); most stop before TensorFlow is imported."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, load_script

from petscan.cli import main as cli
from petscan.utils import errors

STAGES = ("evaluate", "explain", "featurize", "fetch_weights", "plot", "split", "train", "tune")
COMMANDS = ("generate", "contact-sheet", "predict", "explain", "serve", "app", "compare")
FREE_SPACE = "free space on that disk (or raise your quota) and rerun"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PETSCAN_ROOT": str(cwd)}
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "PETSCAN_TUNE_STORAGE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def assert_user_error(done: subprocess.CompletedProcess, prog: str, *words: str) -> None:
    """Exit 1 and exactly one stderr line `<prog>: error: ...` holding `words`."""
    assert done.returncode == 1, done.stderr
    assert_one_line(done.stderr, prog, *words)


def assert_one_line(stderr: str, prog: str, *words: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for word in words:
        assert word in lines[0]


def command_args(name: str, tmp_path: Path) -> list[str]:
    """`petscan <name>` with an absent params file (and whatever else it requires)."""
    absent = str(tmp_path / "absent.yaml")
    extra = {
        "predict": ["x.png", "--model", "absent.keras"],
        "explain": ["x.png", "--model", "absent.keras", "--out", "o"],
        "compare": ["run-a", "run-b"],
    }.get(name, [])
    return ["-m", "petscan.cli", name, *extra, "--params", absent]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_reports_a_user_error_in_one_line_and_exits_1(stage, tmp_path):
    done = run([str(REPO / "stages" / f"{stage}.py"), "--params", "absent.yaml"], tmp_path)
    assert_user_error(done, stage, "absent.yaml not found")


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "generate"])
def test_every_command_reports_a_user_error_in_one_line_and_exits_1(name, tmp_path):
    done = run(command_args(name, tmp_path), tmp_path)
    prog = f"petscan {name}"
    if name in ("predict", "explain"):  # the model file is checked first
        assert_user_error(done, prog, "absent.keras not found")
    else:
        assert_user_error(done, prog, "absent.yaml not found")


def test_split_without_data_is_one_line_and_writes_its_report(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    done = run([str(REPO / "stages" / "split.py"), "--no-progress"], tmp_path)
    assert_user_error(done, "split", "data folder data/raw does not exist", "make data")
    assert "error" in json.loads((tmp_path / "data/split/report.json").read_text())


def test_generate_into_a_non_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("keep")
    args = ["-m", "petscan.cli", "generate", "--params", str(REPO / "params.yaml")]
    done = run([*args, "--out", "raw", "--quiet"], tmp_path)
    assert_user_error(done, "petscan generate", "raw is not empty", "--force")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["mine.txt"]


def test_a_usage_error_exits_2(tmp_path):
    done = run([str(REPO / "stages" / "split.py"), "--no-such-option"], tmp_path)
    assert done.returncode == errors.EXIT_USAGE == 2
    assert "unrecognized arguments: --no-such-option" in done.stderr


def test_petscan_without_a_known_command_is_a_usage_error(capsys):
    assert cli.main(["--help"]) == errors.EXIT_OK
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS)
    assert cli.main([]) == errors.EXIT_USAGE
    capsys.readouterr()
    assert cli.main(["no-such-command"]) == errors.EXIT_USAGE
    assert capsys.readouterr().err == (
        "petscan: unknown command 'no-such-command'; see `petscan --help`\n"
    )


def test_every_command_module_is_where_the_table_says(tmp_path):
    """Each `petscan <command>` module can be found (not imported: most load TensorFlow)."""
    assert set(COMMANDS) < set(cli.COMMANDS)  # every command this file tests
    for name, (module, _) in cli.COMMANDS.items():
        assert importlib.util.find_spec(module) is not None, f"{name}: {module} missing"


def params_with_store(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/store/mlflow.db"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("name", ["serve", "app"])
def test_serve_and_app_without_a_store_or_model_say_so_in_one_line(
    name, tmp_path, monkeypatch, capsys, empty_store
):
    """In this process (MLflow and TensorFlow load once); `main` is what `petscan` runs."""
    import importlib

    main = importlib.import_module(cli.COMMANDS[name][0]).main
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = str(params_with_store(tmp_path))
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    prog = f"petscan {name}"
    assert main(["--params", params]) == 1
    assert_one_line(capsys.readouterr().err, prog, f"no MLflow store at {store}", "make run")
    assert not (tmp_path / "store").exists()  # not created empty
    copy_store(empty_store, tmp_path)
    assert main(["--params", params]) == 1
    assert_one_line(capsys.readouterr().err, prog, "no version of the model 'pet-classifier'")
    if name == "app":  # serve would start MLflow's server in this process if it did not check
        assert main(["--params", params, "--model", "models:/x/3"]) == 1
        text = capsys.readouterr().err
        assert_one_line(text, prog, "cannot load the model models:/x/3", "name=x not found")


def test_serve_checks_the_model_before_it_starts_mlflows_server(tmp_path, empty_store):
    params = str(params_with_store(tmp_path))
    copy_store(empty_store, tmp_path)
    done = run(
        ["-m", "petscan.cli", "serve", "--params", params, "--model", "models:/x/3"], tmp_path
    )
    assert_user_error(
        done, "petscan serve", "cannot load the model models:/x/3", "name=x not found"
    )


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with no model, made once (creating one takes seconds)."""
    import mlflow

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")
    mlflow.MlflowClient().search_registered_models()
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])
    return db


def copy_store(db: Path, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir(exist_ok=True)
    shutil.copyfile(db, tmp_path / "store" / "mlflow.db")


def test_tune_with_a_database_driver_missing_names_the_package(tmp_path):
    args = [str(REPO / "stages" / "tune.py"), "--params", str(REPO / "params.yaml")]
    done = run([*args, "--storage", "postgresql://u:S3CRET@127.0.0.1:1/optuna"], tmp_path)
    assert_user_error(
        done,
        "tune",
        "postgresql://u:***@127.0.0.1:1/optuna needs the Python module 'psycopg'",
        "pip install 'psycopg[binary]'",
    )
    assert "S3CRET" not in done.stderr
    if importlib.util.find_spec("psycopg2"):  # the `dev` extra's driver works when named
        assert "or write postgresql+psycopg2:// to use the installed psycopg2" in done.stderr
    done = run([*args, "--storage", "nosuchdb://h/optuna"], tmp_path)
    assert_user_error(done, "tune", "is no database URL that SQLAlchemy knows")


# --------------------------------------------------------------------------- bugs


BUG = "def boom(*args, **kwargs):\n    raise ZeroDivisionError('a bug')\n"


@pytest.mark.parametrize(
    ("setup", "target"),
    [
        ("import petscan.params.loading as p\np.load_validated = boom", ["stages/split.py"]),
        (
            "import petscan.data.contact_sheet as cs\ncs.contact_sheet = boom",
            ["-m", "petscan.cli", "contact-sheet", "--params", "params.yaml"],
        ),
    ],
    ids=["stage", "command"],
)
def test_a_bug_keeps_its_traceback_and_exits_70(setup, target, tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    if target[0] == "-m":  # petscan <command>: patch, then run the CLI
        main = f"import sys\nfrom petscan.cli.main import main\nsys.exit(main({target[2:]!r}))"
    else:
        script = str(REPO / target[0])
        main = (
            f"import runpy, sys\nsys.argv = [{script!r}]\n"
            f"runpy.run_path({script!r}, run_name='__main__')"
        )
    done = run(["-c", f"{BUG}{setup}\n{main}"], tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == errors.EXIT_BUG == 70, done.stderr
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2] == "ZeroDivisionError: a bug"
    assert lines[-1].endswith(
        "internal error: this is a bug in petscan (exit code 70); please "
        "report it with the traceback above"
    )


# --------------------------------------------------------------------------- full disks


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, f"cannot write /out/x.csv: No space left on device; {FREE_SPACE}"),
        (errno.EDQUOT, f"cannot write /out/x.csv: Disk quota exceeded; {FREE_SPACE}"),
        (
            errno.EROFS,
            "cannot write /out/x.csv: Read-only file system; choose a writable folder (or "
            "remount it read-write) and rerun",
        ),
    ],
)
def test_a_full_disk_is_a_user_error_not_a_bug(code, expected, capsys):
    @errors.reports_user_errors("stage")
    def main(argv=None) -> int:
        raise OSError(code, os.strerror(code), "/out/x.csv")

    assert main([]) == 1
    assert capsys.readouterr().err == f"stage: error: {expected}\n"


def test_split_on_a_full_disk_says_which_file_in_one_line(
    make_raw_dir, data_params, split_params, tmp_path, monkeypatch, capsys
):
    make_raw_dir({"No cancer": 20, "breast cancer": 20, "prostate cancer": 20})
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": data_params, "split": split_params})
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    real = pd.DataFrame.to_csv

    def to_full_disk(frame, path=None, **kwargs):  # the CSV goes to /dev/full: ENOSPC
        return real(frame, "/dev/full", **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_full_disk)
    stage = load_script("stages/split.py")
    assert stage.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"split: error: cannot write {tmp_path / 'data/split/train.csv'}: No space left on "
        f"device; {FREE_SPACE}\n"
    )
    assert sorted(p.name for p in (tmp_path / "data/split").iterdir()) == []  # nothing half-written


def test_a_full_disk_in_h5py_is_one_line_too(tmp_path, capsys):
    import h5py
    import numpy as np

    @errors.reports_user_errors("stage")
    def main(argv=None) -> int:
        with h5py.File("/dev/full", "w") as fh:  # h5py's OSError spans two lines
            fh["x"] = np.zeros(100_000)
        return 0

    assert main([]) == 1
    assert capsys.readouterr().err == (
        f"stage: error: cannot write the outputs: No space left on device; {FREE_SPACE}\n"
    )


def test_a_command_whose_module_fails_to_import_exits_70(tmp_path):
    code = (
        "import sys\nsys.modules['petscan.data.contact_sheet'] = None  # import fails\n"
        "from petscan.cli.main import main\nsys.exit(main(['contact-sheet']))"
    )
    done = run(["-c", code], tmp_path)
    assert done.returncode == 70, done.stderr
    assert done.stderr.splitlines()[-1].startswith("petscan contact-sheet: internal error:")


def test_tune_reports_its_checks_in_one_line_but_a_bug_as_a_bug(tmp_path, monkeypatch, capsys):
    import petscan.tuning.run
    from petscan.utils.errors import ParamsError

    stage = load_script("stages/tune.py")
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    args = ["--params", str(REPO / "params.yaml"), "--no-progress"]
    for error, code in ((ParamsError("params.yaml tune.space.x: bad"), 1), (ValueError("bug"), 70)):

        def run_tune(*a, error=error, **k):
            raise error

        monkeypatch.setattr(petscan.tuning.run, "run_tune", run_tune)
        assert stage.main(args) == code
        err = capsys.readouterr().err
        if code == 1:
            assert err == "tune: error: params.yaml tune.space.x: bad\n"
        else:
            assert "Traceback" in err and err.splitlines()[-2] == "ValueError: bug"
