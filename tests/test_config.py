"""config: reading params.yaml (within bounds), its sections and single keys, the stages' parser."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError

from petscan.params import loading as config
from petscan.params.schema import DataParams, SplitParams, defaults
from petscan.utils.errors import ParamsError

PARAMS = {
    "data": {
        "raw_dir": "data/raw",
        "classes": {"a": "A", "b": "B", "c": "A"},
        "patient_pattern": None,
    },
    "split": {"out_dir": "data/split", "seed": 101},
    "train": {"loss": {"name": "focal", "gamma": 2.0, "alpha": [0.6, 0.4]}, "out_dir": "models"},
}
STAGES = ("split", "fetch_weights", "featurize", "train", "evaluate", "plot")


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    return path


def test_load_sections_picks_whole_sections_and_single_keys(params_file):
    picked = config.load_sections(["data", "split.out_dir", "train.loss.gamma"], params_file)
    assert picked.as_dict() == {
        "data": PARAMS["data"],
        "split": {"out_dir": "data/split"},
        "train": {"loss": {"gamma": 2.0}},
    }
    assert list(picked.as_dict()) == ["data", "split", "train"], "keeps the order asked for"
    assert isinstance(picked.data, DataParams) and picked.data.class_names == ["A", "B"]
    assert picked.split.out_dir == "data/split" and picked.train.loss.gamma == 2.0
    # a whole section and one of its keys: the whole section, whichever comes first,
    # with the keys the file leaves out at their defaults
    whole = {**defaults().split.model_dump(), **PARAMS["split"]}
    assert whole["mode"] == "group" and whole["ratios"] == [0.9, 0.05, 0.05]
    for names in (["split", "split.seed"], ["split.seed", "split"]):
        view = config.load_sections(names, params_file)
        assert view.as_dict() == {"split": whole}
        assert isinstance(view.split, SplitParams) and view.split.ratios == [0.9, 0.05, 0.05]
    assert config.load_sections([], params_file).as_dict() == {}


def test_a_stage_reads_only_what_it_declares(params_file):
    """What a stage did not declare is an AttributeError naming the declaration: dvc.yaml
    would not re-run the stage when that value changed."""
    picked = config.load_sections(["data", "split.out_dir", "train.loss.gamma"], params_file)
    for read in (
        lambda: picked.split.seed,
        lambda: picked.train.loss.alpha,
        lambda: picked.train.epochs,
        lambda: picked.evaluate,
    ):
        with pytest.raises(AttributeError, match=r"not among the params this stage declares"):
            read()
    with pytest.raises(ValidationError, match="frozen"):
        picked.data.raw_dir = "elsewhere"  # validated once, then read only


def test_load_sections_agrees_with_load_section(params_file):
    for name in PARAMS:
        assert getattr(config.load_sections([name], params_file), name) == config.load_section(
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


# --------------------------------------------------------------------------- bounded reading


def bomb(last: str, mappings: bool = False) -> str:
    """Nine levels of nine aliases each (9 ** 9 = 387 million values once expanded) in a few
    hundred bytes; the last level is written as `last` (a key path) instead of `i:`."""
    lines, previous = [], None
    for name in "abcdefghi":
        items = [f"*{previous}" if previous else "x"] * 9
        if mappings:
            items = [f"k{k}: {item}" for k, item in enumerate(items)]
        joined = ", ".join(items)
        value = f"{{{joined}}}" if mappings else f"[{joined}]"
        lines.append(f"{name}: &{name} {value}\n")
        previous = name
    return "".join(lines).replace("i: &i", last)


def bomb_in_a_list() -> str:
    """The same nine levels as the items of one known key's list (no anchor outside it)."""
    levels = bomb("i: &i").splitlines()
    return "train:\n  epochs:\n" + "".join(f"    - {line.split(': ', 1)[1]}\n" for line in levels)


BOUNDED_CASES = {  # file content -> what its one line must say
    "bomb_known_key": bomb("train:\n  epochs: &i"),
    "bomb_free_form": bomb("tune:\n  space:\n    train.epochs: &i"),
    "bomb_of_mappings": bomb("data:\n  classes: &i", mappings=True),
    "bomb_in_a_list": bomb_in_a_list(),
    "recursive": "train:\n  epochs: &a [1, *a]\n",
    "long_list": "train:\n  epochs: [" + ",".join(["1"] * 400_000) + "]\n",  # 800 KB
    "huge_string": 'train:\n  out_dir: "' + "x" * 3_000_000 + '"\n',  # 3 MB
    "deep": "train:\n  epochs: " + "[" * 100_000 + "]" * 100_000 + "\n",
}
EXPECTED = {
    # refused at the fifth level (9 ** 5 values), long before the key the bomb is under
    "bomb_known_key": "line 5: more than 20,000 values (aliases counted once per use)",
    "bomb_free_form": "line 5: more than 20,000 values",
    "bomb_of_mappings": "line 5: more than 20,000 values",
    "bomb_in_a_list": "line 7: more than 20,000 values",
    "recursive": "line 2: alias *a refers to itself",
    "long_list": "line 2: more than 20,000 values",
    "huge_string": "larger than 1 MB, the most a params file may be",
    "deep": "nest",  # libyaml's own limit or ours, whichever comes first
}
LOADER = """
import json, sys, time, tracemalloc
from pathlib import Path
from petscan.params import loading as config
from petscan.utils.errors import ParamsError
def load(path):
    try:
        config.load_validated(path)
    except ParamsError as err:
        return str(err)
results = {}
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    start = time.perf_counter()
    message = load(path)
    seconds = time.perf_counter() - start
    tracemalloc.start()  # a second time, for the memory (tracing slows it down)
    load(path)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    results[path.stem] = [message, seconds, peak_mb]
print(json.dumps(results))
"""


def _memory_cap(limit: int = 1_000_000_000) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_alias_bombs_and_huge_params_files_are_refused_fast_in_one_line(tmp_path):
    """Bounded before anything validates or formats them: each case within 2 s and 50 MB
    (the loader runs in a child capped at 1 GB and 30 s, so a regression cannot eat the
    machine: it fails this test instead)."""
    for name, text in BOUNDED_CASES.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_memory_cap,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout)
    assert set(results) == set(BOUNDED_CASES)
    for name, (message, seconds, peak_mb) in results.items():
        assert message is not None, f"{name} was accepted"
        assert message.startswith(str(tmp_path / f"{name}.yaml")), message
        assert EXPECTED[name] in message and "\n" not in message, message
        assert len(message) < 300, message
        assert seconds < 2.0 and peak_mb < 50, (name, seconds, peak_mb)


def test_error_lines_never_expand_a_value_whole():
    """The formatter shows a value cut short without building its full repr first."""
    from petscan.params.messages import show as _show

    class Leaf:
        calls = 0

        def __repr__(self) -> str:
            Leaf.calls += 1
            assert Leaf.calls <= 1000, "the whole value was expanded"
            return "x"

    shared: list = [Leaf()] * 9
    for _ in range(8):
        shared = [shared] * 9  # 387 million leaves through shared references
    text = _show(shared)
    assert len(text) <= 60 and text.startswith("[[[[") and text.endswith("..."), text
    long = _show("y" * 10_000_000)
    assert len(long) <= 60 and long.startswith("'yyyy") and "..." in long, long


def test_duplicate_keys_are_refused_at_any_depth_naming_key_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    cases = {
        "train:\n  epochs: 3\nsplit:\n  seed: 1\ntrain:\n  batch_size: 4\n": (
            "line 5: key 'train' is written twice (first at line 1)"
        ),
        "train:\n  loss:\n    gamma: 1.0\n    name: focal\n    gamma: 2.0\n": (
            "line 5: key 'gamma' of train.loss is written twice (first at line 3)"
        ),
        "tune:\n  space:\n    - {model.dropout: 0.1, model.dropout: 0.2}\n": (
            "line 3: key 'model.dropout' of tune.space[0] is written twice (first at line 3)"
        ),
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(ParamsError) as caught:
            config.load_params(path)
        assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)
        assert "DVC refuses it" in str(caught.value) and "\n" not in str(caught.value)
    # anchors, aliases and merge keys within bounds still work; a merged key is overridden
    path.write_text("x: &base {epochs: 3, batch_size: 4}\ntrain:\n  <<: *base\n  epochs: 5\n")
    assert config.load_params(path)["train"] == {"epochs": 5, "batch_size": 4}
    path.write_text("train:\n  epochs: 2\n  '1': a\n  1: b\n")  # a str and an int key differ
    assert config.load_params(path)["train"] == {"epochs": 2, "1": "a", 1: "b"}


def test_params_file_must_be_utf8_text(tmp_path):
    path = tmp_path / "params.yaml"
    text = "train:\n  out_dir: modèles\n"
    cases = {
        text.encode("utf-16"): "UTF-16 text (it starts with a UTF-16 byte-order mark)",
        text.encode("utf-16-le"): "not UTF-8 text (a NUL byte at offset 1: UTF-16 or binary)",
        text.encode("latin-1"): "not UTF-8 text (byte 0xe8 at offset 21)",
        bytes(range(256)): "not UTF-8 text (a NUL byte at offset 0: UTF-16 or binary)",
    }
    for data, expected in cases.items():
        path.write_bytes(data)
        with pytest.raises(ParamsError) as caught:
            config.load_validated(path)
        assert str(caught.value) == (
            f"{path}: {expected}; a params file must be UTF-8 text: save it as UTF-8"
        )
    path.write_bytes(text.encode("utf-8-sig"))  # a UTF-8 byte-order mark is fine
    assert config.load_validated(path).train.out_dir == "modèles"


def test_an_unreadable_params_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: 2}\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(ParamsError) as caught:
        config.load_params(path)
    assert str(caught.value) == f"{path}: cannot be read (Permission denied)"
