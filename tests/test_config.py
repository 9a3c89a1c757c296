"""config: reading sections and single keys of params.yaml, and the stages' parser."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from petscan import config
from petscan.params import defaults

PARAMS = {
    "data": {
        "raw_dir": "data/raw",
        "classes": {"a": "A", "b": "B", "c": "A"},
        "patient_pattern": None,
    },
    "split": {"out_dir": "data/split", "seed": 101},
    "train": {"loss": {"name": "focal", "gamma": 2.0}, "out_dir": "models"},
}
STAGES = ("split", "fetch_weights", "featurize", "train", "evaluate", "plot")


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    return path


def test_load_sections_picks_whole_sections_and_single_keys(params_file):
    picked = config.load_sections(["data", "split.out_dir", "train.loss.gamma"], params_file)
    assert picked == {
        "data": PARAMS["data"],
        "split": {"out_dir": "data/split"},
        "train": {"loss": {"gamma": 2.0}},
    }
    assert list(picked) == ["data", "split", "train"], "keeps the order asked for"
    # a whole section and one of its keys: the whole section, whichever comes first,
    # with the keys the file leaves out at their defaults
    whole = {**defaults()["split"], **PARAMS["split"]}
    assert whole["mode"] == "group" and whole["ratios"] == [0.9, 0.05, 0.05]
    for names in (["split", "split.seed"], ["split.seed", "split"]):
        assert config.load_sections(names, params_file) == {"split": whole}
    assert config.load_sections([], params_file) == {}


def test_load_sections_agrees_with_load_section(params_file):
    for name in PARAMS:
        assert config.load_sections([name], params_file)[name] == config.load_section(
            name, params_file
        )


def test_load_sections_names_the_file_and_the_missing_name(params_file):
    with pytest.raises(KeyError, match=r"params\.yaml has no 'nope' section \(sections: synth"):
        config.load_sections(["data", "nope"], params_file)
    with pytest.raises(KeyError, match=r"no 'split\.nope' \('split' keys: mode, ratios, seed,"):
        config.load_sections(["split.nope"], params_file)
    with pytest.raises(KeyError, match=r"no 'split\.seed\.x' \('split\.seed' not a mapping\)"):
        config.load_sections(["split.seed.x"], params_file)
    with pytest.raises(FileNotFoundError, match="pass --params"):
        config.load_sections(["data"], params_file.parent / "absent.yaml")


def test_stage_parser_keeps_the_docstring_layout_and_adds_params(capsys):
    doc = "Line one.\n\n    an indented example\nlast line"
    parser = config.stage_parser(doc, prog="stage")
    assert parser.parse_args([]).params == "params.yaml"
    assert parser.parse_args(["--params", "p.yaml"]).params == "p.yaml"
    parser.print_help()
    out = capsys.readouterr().out
    assert "    an indented example\nlast line" in out
    assert "--params PARAMS  params file (params.yaml)" in out
    plain = config.stage_parser(doc, formatter_class=argparse.HelpFormatter, epilog="E")
    assert plain.formatter_class is argparse.HelpFormatter and plain.epilog == "E"


def test_stage_help_answers_without_loading_tensorflow():
    """`--help` of every stage parses before any heavy import (one fresh interpreter)."""
    code = (
        "import contextlib, io, sys\n"
        "from conftest import load_script\n"
        "for stage in sys.argv[1:]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        load_script(f'stages/{stage}.py').main(['--help'])\n"
        "print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *STAGES],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
