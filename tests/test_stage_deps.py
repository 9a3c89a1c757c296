"""`petscan.stage_deps`: the import reader on a package built here, the real `dvc.yaml`'s
deps against the code, and the in-place rewrite of those deps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import stage_deps
import yaml
from conftest import REPO
from import_graph import ImportGraph, Need

# A fake `petscan` under tmp_path/src: one file per import form (file -> source).
FAKE = {
    "__init__.py": """
        from petscan import core

        def load():
            from petscan import heavy  # runs only when `petscan.load` is called
            return heavy
        """,
    "core.py": "import os\n",
    "heavy.py": "import json\n",
    "plain.py": "",
    "func_level.py": """
        def go():
            import petscan.plain
        """,
    "sub/__init__.py": """
        X = 1

        def deeper():
            from . import deep
        """,
    "sub/leaf.py": """
        from . import sibling
        from ..plain import anything
        """,
    "sub/sibling.py": "",
    "sub/deep.py": "",
    "sub/inner/__init__.py": "",
    "sub/inner/bottom.py": "from ...core import thing\nfrom .. import X\n",
    "literal.py": """
        import importlib

        def load():
            return importlib.import_module("petscan.plain")
        """,
    "table.py": """
        import importlib

        COMMANDS = {"a": "petscan.core", "b": "petscan.sub.deep", "c": "json"}

        def main(name):
            return importlib.import_module(COMMANDS[name])
        """,
    "lazy/__init__.py": """
        import importlib

        _MODULE_OF = {"thing": "one", "other": "two"}

        def __getattr__(name):
            return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        """,
    "lazy/one.py": "thing = 1\n",
    "lazy/two.py": "from petscan import plain\nother = 2\n",
    "typed.py": """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from petscan import heavy
        else:
            from petscan import plain
        """,
    "by_path.py": """
        from pathlib import Path

        CODE_FILE = Path(__file__).with_name("code_file.py")
        """,
    "code_file.py": "from petscan import plain\n",
    "ring_a.py": "from petscan import ring_b\n",
    "ring_b.py": "from petscan import ring_a\n",
}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture
def fake(tmp_path: Path) -> ImportGraph:
    write_tree(tmp_path / "src" / "petscan", FAKE)
    return ImportGraph(tmp_path / "src")


def script_modules(graph: ImportGraph, source: str) -> set[str]:
    script = graph.src.parent / "stages" / "script.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(textwrap.dedent(source))
    return graph.modules_of(script)


# "petscan" (its __init__.py) and "petscan.core" (its module-level import) are in every set.
BASE = {"petscan", "petscan.core"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import json\nimport numpy as np\n", set()),  # not the project's
        ("import petscan.plain\n", {"petscan.plain"}),
        ("from petscan import plain\n", {"petscan.plain"}),
        ("from petscan.plain import anything\n", {"petscan.plain"}),
        # `__init__.py` defines `load`: its function-level import counts, as for `import petscan`
        ("from petscan import load\n", {"petscan.heavy"}),
        ("import petscan\n", {"petscan.heavy"}),
        # a submodule runs only the module level of its packages' __init__.py
        ("from petscan.sub import sibling\n", {"petscan.sub", "petscan.sub.sibling"}),
        ("import petscan.sub.sibling\n", {"petscan.sub", "petscan.sub.sibling"}),
        # a name defined in sub/__init__.py: all of it, `deeper`'s relative import included
        ("from petscan.sub import X\n", {"petscan.sub", "petscan.sub.deep"}),
        # relative imports, one and two levels up
        (
            "from petscan.sub import leaf\n",
            {"petscan.sub", "petscan.sub.leaf", "petscan.sub.sibling", "petscan.plain"},
        ),
        (
            "from petscan.sub.inner import bottom\n",
            {"petscan.sub", "petscan.sub.inner", "petscan.sub.inner.bottom", "petscan.sub.deep"},
        ),
        (
            "def main():\n    from petscan import func_level\n",
            {"petscan.func_level", "petscan.plain"},
        ),
        ("from petscan import literal\n", {"petscan.literal", "petscan.plain"}),
        (
            "from petscan import table\n",
            {"petscan.table", "petscan.sub", "petscan.sub.deep"},
        ),
        # the lazy registry: a submodule is itself; a lazily exported name is the package
        ("from petscan.lazy.one import thing\n", {"petscan.lazy", "petscan.lazy.one"}),
        (
            "from petscan.lazy import thing\n",
            {"petscan.lazy", "petscan.lazy.one", "petscan.lazy.two", "petscan.plain"},
        ),
        ("from petscan import typed\n", {"petscan.typed", "petscan.plain"}),
        (
            "from petscan import by_path\n",
            {"petscan.by_path", "petscan.code_file", "petscan.plain"},
        ),
        ("from petscan import ring_a\n", {"petscan.ring_a", "petscan.ring_b"}),
        (
            "import importlib\nimportlib.import_module('petscan.sub.deep')\n",
            {"petscan.sub", "petscan.sub.deep"},
        ),
    ],
)
def test_import_forms(fake, source, expected):
    extra = set() if source.startswith("import json") else BASE
    assert script_modules(fake, source) == expected | extra


def test_direct_imports_split_module_level_from_function_level(fake):
    assert fake.imports_of("petscan", whole=False) == {
        Need("petscan", whole=False),
        Need("petscan.core"),
    }
    assert fake.imports_of("petscan") == {
        Need("petscan", whole=False),
        Need("petscan.core"),
        Need("petscan.heavy"),
    }
    assert fake.imports_of("petscan.sub.leaf") == {
        Need("petscan", whole=False),
        Need("petscan.sub", whole=False),
        Need("petscan.sub.sibling"),
        Need("petscan.plain"),
    }


def test_files_of_are_the_module_files(fake):
    script = fake.src.parent / "run.py"
    script.write_text("from petscan.sub import leaf\n")
    src = fake.src / "petscan"
    assert fake.files_of(script) == {
        src / "__init__.py",
        src / "core.py",
        src / "plain.py",
        src / "sub" / "__init__.py",
        src / "sub" / "leaf.py",
        src / "sub" / "sibling.py",
    }


def test_why_is_a_shortest_chain_of_imports(fake):
    script = fake.src.parent / "run.py"
    script.write_text("from petscan.sub import leaf\nfrom petscan import typed\n")
    # both reach plain in two steps: the first import in the script wins
    assert fake.why(script, "petscan.plain") == ["petscan.sub.leaf", "petscan.plain"]
    assert fake.why(script, "petscan.sub.sibling") == ["petscan.sub.leaf", "petscan.sub.sibling"]
    assert fake.why(script, "petscan.heavy") == []
    script.write_text("import petscan\n")  # all of __init__.py: `load` imports heavy
    assert fake.why(script, "petscan.heavy") == ["petscan", "petscan.heavy"]


def test_a_missing_script_or_bad_syntax_is_a_user_error(fake, tmp_path):
    with pytest.raises(stage_deps.UserError, match="nope.py not found"):
        fake.modules_of(tmp_path / "nope.py")
    (tmp_path / "bad.py").write_text("import (\n")
    with pytest.raises(stage_deps.UserError, match=r"bad.py: cannot parse line 1"):
        fake.modules_of(tmp_path / "bad.py")


# Imports each module named on its command line into a fresh `petscan` (third-party modules
# stay loaded) and prints, as JSON, the project modules Python loaded for it.
PROBE = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m.split(".")[0] == "petscan"]:
        del sys.modules[module]
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.split(".")[0] == "petscan")
print(json.dumps(loaded))
"""


def test_python_loads_no_project_module_the_reader_misses():
    """Python's import system as the reference: importing any project module loads only
    modules the reader found (it finds more: the imports inside functions)."""
    graph = ImportGraph(REPO / "src")
    names = sorted(m for m in graph.files if not m.endswith("__main__"))  # those run a worker
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *names], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    features = set(loaded["petscan.data.features"])
    assert {"petscan.model.network", "petscan.model.backbones", "petscan.utils.io"} <= features
    for name in names:
        missed = set(loaded[name]) - graph.closure(graph.needs_of_import(name))
        assert not missed, f"importing {name} loads {sorted(missed)}, which the reader missed"


# --------------------------------------------------------------------------- the real dvc.yaml

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
SCRIPTS = stage_deps.stage_scripts(DVC)
COMPUTED = stage_deps.computed_deps(REPO, DVC)


def test_every_stage_that_runs_a_script_is_checked():
    assert set(SCRIPTS) == set(DVC["stages"])  # a new stage without a script: look here
    assert SCRIPTS["train"] == "stages/train.py"


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_dvc_yaml_src_deps_are_what_the_stage_imports(stage):
    listed = stage_deps.managed(stage_deps.listed_deps(DVC, stage))
    computed = set(COMPUTED[stage])
    missing, extra = sorted(computed - listed), sorted(listed - computed)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: its src deps differ from what {SCRIPTS[stage]} imports; "
        f"missing: {missing or 'none'}; listed but not imported: {extra or 'none'}. "
        f"Regenerate with `{stage_deps.REGENERATE}` (make deps)."
    )


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_the_stage_script_is_a_dep_of_its_stage(stage):
    assert SCRIPTS[stage] in stage_deps.listed_deps(DVC, stage)


def test_the_stage_lists_follow_the_import_graph():
    """A few edges read by hand from the code, so an empty graph cannot pass the test above."""
    assert "src/petscan/model/backbones.py" in COMPUTED["featurize"]
    assert "src/petscan/serving/pyfunc_code.py" in COMPUTED["train"]  # logged by path
    assert "src/petscan/training/fit.py" not in COMPUTED["featurize"]
    assert "src/petscan/weights/http.py" not in COMPUTED["featurize"]  # the downloader
    assert "src/petscan/weights/http.py" in COMPUTED["fetch_weights"]
    assert "src/petscan/__init__.py" in COMPUTED["split"]


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_each_stage_runs_only_what_it_uses(stage):
    """No stage hashes the web app, the scoring server, batch prediction or the search-space
    parser; only train logs the MLflow model; featurize does not hash the losses."""
    never = ("src/petscan/serving/app/", "src/petscan/serving/serve.py",
             "src/petscan/serving/predict.py", "src/petscan/params/space.py",
             "src/petscan/tuning/")  # fmt: skip
    assert not [f for f in COMPUTED[stage] if f.startswith(never)]
    if stage != "train":
        assert not [f for f in COMPUTED[stage] if f.startswith("src/petscan/serving/")]
    if stage == "featurize":
        assert "src/petscan/model/losses.py" not in COMPUTED[stage]
    assert SCRIPTS[stage] == f"stages/{stage}.py"
    assert f"src/petscan/pipeline/{stage}.py" in COMPUTED[stage], "a stage's code is named so"


# --------------------------------------------------------------------------- the rewrite

REAL_TEXT = (REPO / "dvc.yaml").read_text()
UP_TO_DATE = stage_deps.rewrite(REAL_TEXT, COMPUTED)  # == REAL_TEXT when the test above passes


def without_src_lines(text: str) -> list[str]:
    return [line for line in text.splitlines(keepends=True) if "- src/" not in line]


def test_rewrite_changes_only_src_lines_and_is_idempotent():
    assert without_src_lines(UP_TO_DATE) == without_src_lines(REAL_TEXT)
    assert stage_deps.rewrite(UP_TO_DATE, COMPUTED) == UP_TO_DATE
    rewritten = yaml.safe_load(UP_TO_DATE)
    for stage, files in COMPUTED.items():
        deps = stage_deps.listed_deps(rewritten, stage)
        assert [d for d in deps if d.startswith("src/")] == files  # sorted, one each
        others = [d for d in stage_deps.listed_deps(DVC, stage) if not d.startswith("src/")]
        assert [d for d in deps if not d.startswith("src/")] == others
        assert rewritten["stages"][stage] == {**DVC["stages"][stage], "deps": deps}


def scramble(text: str) -> str:
    """dvc.yaml with each stage's src lines reversed, one dropped, one replaced."""
    out, block = [], []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("- src/"):
            block.append(line)
            continue
        out += block[::-1]
        block = []
        out.append(line)
    text = "".join(out)
    split, plots = (
        "      - src/petscan/data/split.py\n",
        "      - src/petscan/evaluation/plots.py\n",
    )
    assert split in text and plots in text
    text = text.replace(split, "", 1)
    return text.replace(plots, "      - src/petscan/demo/generate.py\n", 1)


def test_rewrite_restores_a_scrambled_file_byte_for_byte():
    scrambled = scramble(UP_TO_DATE)
    assert scrambled != UP_TO_DATE
    assert stage_deps.rewrite(scrambled, COMPUTED) == UP_TO_DATE


SMALL = """\
# header comment
stages:
  first:
    cmd: python stages/first.py
    deps:
    - data/in   # a data dep
    - src/petscan/zeta.py  # keeps its comment
    - src/petscan/schema.yaml
    - src/petscan/alpha.py
    - stages/first.py
    params:
    - first
  first_more:
    cmd: python stages/first_more.py
    deps:
      - src/petscan/alpha.py
      - stages/first_more.py
  bare:
    cmd: python stages/bare.py
    deps:
      - data/in
      - stages/bare.py
    outs:
      - out/bare   # output
"""


def test_rewrite_keeps_comments_other_deps_and_other_stages():
    wanted = {
        "first": ["src/petscan/beta.py", "src/petscan/zeta.py"],
        "bare": ["src/petscan/a.py", "src/petscan/b.py"],
    }
    assert stage_deps.rewrite(SMALL, wanted) == SMALL.replace(
        "    - src/petscan/zeta.py  # keeps its comment\n"
        "    - src/petscan/schema.yaml\n"
        "    - src/petscan/alpha.py\n",
        "    - src/petscan/beta.py\n"
        "    - src/petscan/schema.yaml\n"
        "    - src/petscan/zeta.py  # keeps its comment\n",
    ).replace(
        "      - data/in\n      - stages/bare.py\n",
        "      - data/in\n      - src/petscan/a.py\n      - src/petscan/b.py\n"
        "      - stages/bare.py\n",
    )


def test_rewrite_names_a_stage_it_cannot_find():
    with pytest.raises(stage_deps.UserError, match="no stage 'missing'"):
        stage_deps.rewrite(SMALL, {"missing": []})
    no_deps = "stages:\n  s:\n    cmd: python stages/s.py\n"
    with pytest.raises(stage_deps.UserError, match="stage 's' has no block `deps:`"):
        stage_deps.rewrite(no_deps, {"s": []})


# --------------------------------------------------------------------------- the command


def test_check_and_write_on_a_small_repository(fake, capsys):
    root = fake.src.parent
    (root / "stages").mkdir()
    (root / "stages" / "one.py").write_text("from petscan.sub import leaf\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  one:\n    cmd: PYTHONPATH=src python stages/one.py\n    deps:\n"
        "      - src/petscan/heavy.py  # not imported\n      - src/petscan/plain.py\n"
        "      - stages/one.py\n"
    )
    assert stage_deps.main(["--check", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "  - src/petscan/heavy.py\n" in out and "  + src/petscan/sub/leaf.py\n" in out
    assert "    src/petscan/plain.py\n" in out and stage_deps.REGENERATE in out

    assert stage_deps.main(["--write", "--root", str(root)]) == 0
    assert (root / "dvc.yaml").read_text() == (
        "stages:\n  one:\n    cmd: PYTHONPATH=src python stages/one.py\n    deps:\n"
        "      - src/petscan/__init__.py\n      - src/petscan/core.py\n"
        "      - src/petscan/plain.py\n      - src/petscan/sub/__init__.py\n"
        "      - src/petscan/sub/leaf.py\n      - src/petscan/sub/sibling.py\n"
        "      - stages/one.py\n"
    )
    assert stage_deps.main(["--check", "--root", str(root)]) == 0
    assert "one: 6 project files (as in dvc.yaml)" in capsys.readouterr().out

    written = (root / "dvc.yaml").read_text()
    unsorted = written.replace("core.py", "CORE").replace("plain.py", "core.py")
    (root / "dvc.yaml").write_text(unsorted.replace("CORE", "plain.py"))
    assert stage_deps.main(["--check", "--root", str(root)]) == 0  # the same files
    assert stage_deps.main(["--write", "--root", str(root)]) == 0
    assert (root / "dvc.yaml").read_text() == written  # sorted again
    assert "dvc.yaml: rewrote the src deps of no stage: sorted" in capsys.readouterr().out

    assert stage_deps.main(["--why", "one", "src/petscan/plain.py", "--root", str(root)]) == 0
    assert capsys.readouterr().out == "stages/one.py -> petscan.sub.leaf -> petscan.plain\n"
    assert stage_deps.why(root, "one", "petscan.heavy") == "one does not run petscan.heavy"


def test_the_project_has_no_import_cycle():
    """Module-level imports only: Python runs them on import, so a cycle among them makes
    the result depend on which module is imported first."""
    graph = ImportGraph(REPO / "src")
    by_path = {"petscan.serving.pyfunc_code"}  # pyfunc hands the file to MLflow, never imports it
    edges = {
        module: {need.module for need in graph.imports_of(module, whole=False)} - {module}
        for module in graph.files
    }
    edges["petscan.serving.pyfunc"] -= by_path
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert "petscan.model.network" in edges["petscan.training.fit"], "the graph is not empty"
