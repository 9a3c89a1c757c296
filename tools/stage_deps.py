"""The project files each DVC stage runs, read from the imports (`make deps`).

A stage's `src/...` deps in `dvc.yaml` must be exactly the project modules its script
imports, directly or through other modules: one missing, and an edit to it does not re-run
the stage; one too many, and an unrelated edit re-runs it. This module computes the lists
from the code and keeps `dvc.yaml` in step:

    python tools/stage_deps.py           # each stage's files; +/- where dvc.yaml differs
    python tools/stage_deps.py --check   # exit 1 when dvc.yaml differs (tests do this)
    python tools/stage_deps.py --write   # rewrite the `- src/...` deps lines (make deps)
    python tools/stage_deps.py --why evaluate src/petscan/model/backbones.py   # the import chain

What counts as an import: `tools/import_graph.py`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml
from import_graph import ImportGraph

from petscan.utils import io
from petscan.utils.errors import UserError, reports_user_errors

DVC_YAML = "dvc.yaml"
REGENERATE = "python tools/stage_deps.py --write"  # `make deps`
_SCRIPT = re.compile(r"(?:^|\s)(stages/[\w/.-]+\.py)(?=\s|$)")
_SRC_LINE = re.compile(r"^(?P<indent>\s*)- (?P<path>src/\S+?)(?P<comment>\s+#.*)?$")


# --------------------------------------------------------------------------- dvc.yaml


def stage_scripts(dvc: dict) -> dict[str, str]:
    """Stage name -> the `stages/<x>.py` its `cmd` runs (stages that run none are left out)."""
    scripts = {}
    for name, stage in (dvc.get("stages") or {}).items():
        cmd = stage.get("cmd", "") if isinstance(stage, dict) else ""
        cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
        match = _SCRIPT.search(cmd)
        if match:
            scripts[name] = match.group(1)
    return scripts


def listed_deps(dvc: dict, stage: str) -> list[str]:
    """The deps of `stage` as written in `dvc.yaml` (strings; `${...}` not expanded)."""
    deps = dvc["stages"][stage].get("deps") or []
    return [d if isinstance(d, str) else next(iter(d)) for d in deps]


def managed(paths: Iterable[str]) -> set[str]:
    """The deps this module computes: Python files under `src/`."""
    return {p for p in paths if p.startswith("src/") and p.endswith(".py")}


def computed_deps(root: str | Path, dvc: dict | None = None) -> dict[str, list[str]]:
    """Stage -> the sorted `src/...` files its script imports, as `dvc.yaml` paths."""
    root = Path(root)
    dvc = read_dvc_yaml(root) if dvc is None else dvc
    graph = ImportGraph(root / "src")
    return {
        stage: sorted(p.relative_to(root).as_posix() for p in graph.files_of(root / script))
        for stage, script in stage_scripts(dvc).items()
    }


def read_dvc_yaml(root: str | Path) -> dict:
    path = Path(root) / DVC_YAML
    if not path.is_file():
        raise UserError(f"{path} not found: run from the repository root or pass --root")
    return yaml.safe_load(path.read_text()) or {}


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """`dvc.yaml`'s text with each stage's `- src/...` deps lines replaced by `wanted`.

    Every other byte is kept. The new lines are sorted and go where the first old one was
    (or before the stage script's line if there was none); a line's trailing comment stays
    with its path. `src/` deps that are not `.py` files are kept.
    """
    lines = text.splitlines(keepends=True)
    for stage, paths in wanted.items():
        start, end, indent = _deps_block(lines, stage)
        olds = {i: _SRC_LINE.match(lines[i].rstrip("\r\n")) for i in range(start, end)}
        olds = {i: match for i, match in olds.items() if match}
        comments = {match["path"]: match["comment"] or "" for match in olds.values()}
        kept = {path for path in comments if path not in managed([path])}
        eol = "\r\n" if lines[start - 1].endswith("\r\n") else "\n"
        block = [f"{indent}- {p}{comments.get(p, '')}{eol}" for p in sorted({*paths, *kept})]
        at = min(olds) if olds else _script_line(lines, start, end)
        rest = [line for i, line in enumerate(lines[start:end], start) if i not in olds]
        lines[start:end] = rest[: at - start] + block + rest[at - start :]
    return "".join(lines)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _is_key(line: str, key: str, indent: int | None = None) -> bool:
    """`line` is `key:` alone (a trailing comment allowed): a block follows."""
    found = re.fullmatch(rf"\s*{re.escape(key)}:\s*(#.*)?", line.rstrip("\r\n"))
    return found is not None and indent in (None, _indent(line))


def _deps_block(lines: list[str], stage: str) -> tuple[int, int, str]:
    """(first line, end, item indent) of `stage`'s `deps:` list in `dvc.yaml`'s lines."""
    top = next((i for i, line in enumerate(lines) if _is_key(line, "stages", indent=0)), None)
    body = [] if top is None else [i for i in range(top + 1, len(lines)) if _is_content(lines[i])]
    body = body[: next((n for n, i in enumerate(body) if _indent(lines[i]) == 0), len(body))]
    if not body:
        raise UserError(f"{DVC_YAML}: no top-level `stages:` block")
    level = _indent(lines[body[0]])
    headers = [i for i in body if _indent(lines[i]) == level]
    header = next((i for i in headers if _is_key(lines[i], stage)), None)
    if header is None:
        raise UserError(f"{DVC_YAML}: no stage {stage!r} under `stages:`")
    after = next((i for i in headers if i > header), len(lines))
    inside = [i for i in body if header < i < after]
    keys = [i for i in inside if _indent(lines[i]) == _indent(lines[inside[0]])] if inside else []
    deps = next((i for i in keys if _is_key(lines[i], "deps")), None)
    if deps is None:
        raise UserError(f"{DVC_YAML}: stage {stage!r} has no block `deps:` list to update")
    items = []
    for i in (i for i in inside if i > deps):
        line = lines[i]
        if _indent(line) < _indent(lines[deps]) or (
            _indent(line) == _indent(lines[deps]) and not line.lstrip().startswith("- ")
        ):
            break
        items.append(i)
    if not items:
        return deps + 1, deps + 1, " " * (_indent(lines[deps]) + 2)
    return deps + 1, items[-1] + 1, " " * _indent(lines[items[0]])


def _script_line(lines: list[str], start: int, end: int) -> int:
    """Where new src lines go when a stage lists none: before `- stages/...`, else last."""
    for i in range(start, end):
        if lines[i].lstrip().startswith("- stages/"):
            return i
    return end


# --------------------------------------------------------------------------- command


def differences(root: str | Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Stage -> (computed files, missing from dvc.yaml, listed but not imported)."""
    dvc = read_dvc_yaml(root)
    result = {}
    for stage, files in computed_deps(root, dvc).items():
        listed = managed(listed_deps(dvc, stage))
        result[stage] = (files, sorted(set(files) - listed), sorted(listed - set(files)))
    return result


def why(root: str | Path, stage: str, target: str) -> str:
    """`stages/x.py -> petscan.a -> petscan.b`: why `stage` depends on `target`."""
    root = Path(root)
    scripts = stage_scripts(read_dvc_yaml(root))
    if stage not in scripts:
        raise UserError(f"no stage {stage!r} running a stages/ script; stages: {sorted(scripts)}")
    graph = ImportGraph(root / "src")
    by_file = {path.relative_to(root).as_posix(): m for m, path in graph.files.items()}
    module = by_file.get(target, target)
    chain = graph.why(root / scripts[stage], module)
    if not chain:
        return f"{stage} does not run {target}"
    return " -> ".join([scripts[stage], *chain])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/stage_deps.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, help="repository root (default: the cwd's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the src deps in dvc.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs")
    mode.add_argument(
        "--why",
        nargs=2,
        metavar=("STAGE", "FILE"),
        help="the chain of imports by which STAGE runs FILE (src/petscan/x.py or petscan.x)",
    )
    args = parser.parse_args(argv)
    root = args.root or _find_root(Path.cwd())
    if args.why:
        print(why(root, *args.why))
        return 0

    diffs = differences(root)
    stale = [stage for stage, (_, missing, extra) in diffs.items() if missing or extra]
    for stage, (files, missing, extra) in diffs.items():
        state = "differs from dvc.yaml" if stage in stale else "as in dvc.yaml"
        print(f"{stage}: {len(files)} project files ({state})")
        for path in sorted({*files, *extra}):
            mark = "+" if path in missing else "-" if path in extra else " "
            print(f"  {mark} {path}")
    if args.write:
        path = Path(root) / DVC_YAML
        text = path.read_text()
        new = rewrite(text, {stage: files for stage, (files, _, _) in diffs.items()})
        if new != text:  # also when only the order or a duplicate changed
            io.write_text(path, new)
            print(f"{path}: rewrote the src deps of {', '.join(stale) or 'no stage: sorted'}")
    elif stale:
        print(f"dvc.yaml: + missing, - not imported; `{REGENERATE}` (make deps) fixes it")
        return 1 if args.check else 0
    return 0


def _find_root(start: Path) -> Path:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / DVC_YAML).is_file():
            return folder
    raise UserError(f"no {DVC_YAML} at or above {start}: run from the repository or pass --root")


if __name__ == "__main__":
    sys.exit(reports_user_errors("tools/stage_deps.py")(main)())
