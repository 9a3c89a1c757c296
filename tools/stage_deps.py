"""The project files each DVC stage runs, read from the imports (`make deps`).

A stage's `src/...` deps in `dvc.yaml` must be exactly the project modules its script
imports, directly or through other modules: one missing, and an edit to it does not re-run
the stage; one too many, and an unrelated edit re-runs it. This module computes the lists
from the code and keeps `dvc.yaml` in step:

    python tools/stage_deps.py           # each stage's files; +/- where dvc.yaml differs
    python tools/stage_deps.py --check   # exit 1 when dvc.yaml differs (tests do this)
    python tools/stage_deps.py --write   # rewrite the `- src/...` deps lines (make deps)
    python tools/stage_deps.py --why evaluate src/petscan/backbones.py   # the import chain

The code is read with `ast`, never imported, so this is fast and has no side effects.
What counts as an import of a project module (`petscan` under `src/`):

- `import petscan.x`, `from petscan import x`, `from petscan.x import y`, relative imports
  (`from . import x`, `from ..x import y`), wherever they are: an import inside a function
  runs when the function does, so it is a dependency too. Blocks under
  `if TYPE_CHECKING:` never run and are skipped.
- A package's `__init__.py` whenever the package or one of its submodules is imported
  (Python runs it). Importing a *submodule* runs only the `__init__.py`'s module-level
  code, so the imports inside its functions are followed only when the package itself is
  used: `import petscan`, `from petscan import <a name defined in __init__.py>`.
  (Otherwise every stage would depend on `serving/loading.py`, which `petscan.load_model`
  imports.) An `__init__.py` that holds only a docstring (a package's map) runs no code,
  so no output can change with it: it is not listed.
- `importlib.import_module("petscan.x")` (or `__import__`) with a literal string: as
  `import petscan.x`. With an f-string, every project module whose name starts with its
  literal beginning: `import_module(f"{__name__}.{name}")` in a package's `__init__.py`
  (a lazy `__getattr__` registry, as `petscan.tuning` had) is every module of that
  package, so `from <package> import <a lazily exported name>` depends on all of them.
- `import_module(variable)`: every project module named by a string literal in the same
  file (`"petscan.x"`: `cli.py`'s command table). A dynamic import whose name is built
  some other way is not seen: name the module in a literal.
- A module that names `__file__` and a sibling `.py` file in a string literal uses that
  file by path: `pyfunc_model.py` logs `pyfunc_code.py` as the MLflow model's code.

Anything else (the standard library, third-party packages) is ignored. In `dvc.yaml`,
only `src/**.py` deps are managed; other `src/...` deps (a data file) are kept as written.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from petscan.utils import io
from petscan.utils.errors import UserError, reports_user_errors

PACKAGE = "petscan"
DVC_YAML = "dvc.yaml"
REGENERATE = "python tools/stage_deps.py --write"  # `make deps`
_SCRIPT = re.compile(r"(?:^|\s)(stages/[\w/.-]+\.py)(?=\s|$)")
_SRC_LINE = re.compile(r"^(?P<indent>\s*)- (?P<path>src/\S+?)(?P<comment>\s+#.*)?$")


@dataclass(frozen=True)
class Need:
    """A project module an import runs: the whole of it, or (packages) only module level."""

    module: str
    whole: bool = True


@dataclass(frozen=True)
class _Found:
    need: Need
    module_level: bool  # not inside a function body


class ImportGraph:
    """The project's modules under `src` and, on demand, what each one imports.

    `src` is the folder holding the `package` folder (`<repo>/src`).
    """

    def __init__(self, src: str | Path, package: str = PACKAGE):
        self.src = Path(src)
        self.package = package
        self.files = _module_files(self.src, package)
        if package not in self.files:
            raise UserError(f"{self.src / package / '__init__.py'} not found: pass the src folder")
        self._cache: dict[str, list[_Found]] = {}

    def is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def modules_of(self, script: str | Path) -> set[str]:
        """The project modules a script (not itself a project module) runs, transitively."""
        return set(self._walk(self._script_needs(script)))

    def files_of(self, script: str | Path) -> set[Path]:
        """`modules_of` as files (under `src`), without docstring-only `__init__.py` files."""
        return {self.files[m] for m in self.modules_of(script) if self.runs_code(m)}

    def runs_code(self, module: str) -> bool:
        """False for a package whose `__init__.py` holds nothing but a docstring."""
        if not self.is_package(module):
            return True
        body = ast.parse(self.files[module].read_text(encoding="utf-8")).body
        docstring = (
            body[:1] and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        )
        return len(body) > (1 if docstring else 0)

    def why(self, script: str | Path, module: str) -> list[str]:
        """A shortest chain of imports from `script` to `module` (empty if it is not run)."""
        parents = self._walk(self._script_needs(script))
        chain = [module] if module in parents else []
        while chain and parents[chain[-1]] is not None:
            chain.append(parents[chain[-1]])
        return chain[::-1]

    def imports_of(self, module: str, whole: bool = True) -> set[Need]:
        """What one project module imports directly (module level only if not `whole`)."""
        return {f.need for f in self._imports(module) if whole or f.module_level}

    def closure(self, needs: Iterable[Need]) -> set[str]:
        """The modules `needs` run, following imports transitively."""
        return set(self._walk(needs))

    def _script_needs(self, script: str | Path) -> list[Need]:
        return [f.need for f in self._parse(Path(script), name="__main__", package_name="")]

    def _walk(self, needs: Iterable[Need]) -> dict[str, str | None]:
        """Module -> the module whose import ran it (all of it, for a package), breadth first."""
        parents: dict[str, str | None] = {}
        whole_done: dict[str, bool] = {}  # whether its function-level imports were followed
        todo = deque((need, None) for need in needs)
        while todo:
            need, parent = todo.popleft()
            whole = need.whole or not self.is_package(need.module)
            if need.module in whole_done and (whole_done[need.module] or not whole):
                continue
            whole_done[need.module], parents[need.module] = whole, parent
            subs = sorted(self.imports_of(need.module, whole), key=lambda n: (n.module, n.whole))
            todo.extend((sub, need.module) for sub in subs)
        return parents

    def _imports(self, module: str) -> list[_Found]:
        if module not in self._cache:
            package = module if self.is_package(module) else module.rpartition(".")[0]
            self._cache[module] = self._parse(self.files[module], module, package)
        return self._cache[module]

    def _parse(self, path: Path, name: str, package_name: str) -> list[_Found]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except FileNotFoundError:
            raise UserError(f"{path} not found: is the stage's command right?") from None
        except SyntaxError as err:
            raise UserError(f"{path}: cannot parse line {err.lineno}: {err.msg}") from None
        reader = _Reader(self, name, package_name)
        reader.visit(tree)
        if reader.uses_file:  # Path(__file__).with_name("x.py"): a sibling used by path
            for text, module_level in reader.strings:
                sibling = self._module_at(path.parent / text) if text.endswith(".py") else None
                if sibling and "/" not in text:
                    reader.found.append(_Found(Need(sibling), module_level))
        if reader.dynamic_levels:  # import_module(variable): the modules named in the file
            named = sorted({text for text, _ in reader.strings if "." in text} & set(self.files))
            for module_level in reader.dynamic_levels:
                needs = [need for m in named for need in self.needs_of_import(m)]
                reader.found += [_Found(need, module_level) for need in needs]
        return reader.found

    def _module_at(self, path: Path) -> str | None:
        return next((m for m, file in self.files.items() if file == path), None)

    # ------------------------------------------------------------- names to needs

    def needs_of_import(self, dotted: str) -> list[Need]:
        """`import a.b.c`: the packages on the way run their module level, `c` all of it."""
        parts = dotted.split(".")
        if parts[0] != self.package:
            return []
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        needs = [Need(p, whole=False) for p in prefixes[:-1] if p in self.files]
        if dotted in self.files:
            needs.append(Need(dotted))
        return needs

    def needs_of_from(self, base: str, names: Iterable[str]) -> list[Need]:
        """`from base import names`: a submodule each, or a name of `base` (all of it)."""
        needs = self.needs_of_import(base)
        if base not in self.files or not self.is_package(base):
            return needs
        needs[-1] = Need(base, whole=False)
        for name in names:
            child = f"{base}.{name}"
            needs.append(Need(child) if child in self.files else Need(base))
        return needs

    def needs_of_prefix(self, prefix: str) -> list[Need]:
        """`import_module(f"<prefix>{...}")`: every project module whose name could match."""
        if prefix.split(".")[0] != self.package or "." not in prefix:
            return []
        base = prefix.rpartition(".")[0]
        needs = self.needs_of_import(base)
        return needs + [Need(m) for m in sorted(self.files) if m.startswith(prefix)]


class _Reader(ast.NodeVisitor):
    """Collects the `Need`s of one file, each marked module level or not."""

    def __init__(self, graph: ImportGraph, name: str, package_name: str):
        self.graph, self.name, self.package_name = graph, name, package_name
        self.depth = 0  # function bodies entered
        self.found: list[_Found] = []
        self.dynamic_levels: set[bool] = set()
        self.uses_file = False  # the module names `__file__`
        self.strings: list[tuple[str, bool]] = []  # each string literal, at module level?

    def _add(self, needs: Iterable[Need]) -> None:
        self.found += [_Found(need, self.depth == 0) for need in needs]

    def _in_function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_Name(self, node: ast.Name) -> None:
        self.uses_file = self.uses_file or node.id == "__file__"

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.strings.append((node.value, self.depth == 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs; its `else:` does
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self.graph.needs_of_import(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module or "", node.level)
        if base is not None:
            self._add(self.graph.needs_of_from(base, (a.name for a in node.names)))

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        if not (_is_dynamic_import(node.func) and node.args):
            return
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            level = len(arg.value) - len(arg.value.lstrip("."))
            base = self._absolute(arg.value[level:], level)
            self._add(self.graph.needs_of_import(base) if base else [])
        elif isinstance(arg, ast.JoinedStr):
            self._add(self.graph.needs_of_prefix(self._literal_start(arg)))
        else:
            self.dynamic_levels.add(self.depth == 0)

    def _absolute(self, module: str, level: int) -> str | None:
        """The absolute name of a (relative) import; None if it leaves the project."""
        if level == 0:
            return module
        parts = self.package_name.split(".") if self.package_name else []
        if level - 1 >= len(parts):
            return None
        base = ".".join(parts[: len(parts) - (level - 1)])
        return f"{base}.{module}" if module else base

    def _literal_start(self, text: ast.JoinedStr) -> str:
        """The start of an f-string that is known here (`__name__`, `__package__`)."""
        known = {"__name__": self.name, "__package__": self.package_name}
        start = ""
        for part in text.values:
            if isinstance(part, ast.Constant):
                start += str(part.value)
            elif (
                isinstance(part, ast.FormattedValue)
                and isinstance(part.value, ast.Name)
                and part.value.id in known
                and part.format_spec is None
            ):
                start += known[part.value.id]
            else:
                break
        return start


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_dynamic_import(func: ast.expr) -> bool:
    """`importlib.import_module`, `import_module` (imported by name) or `__import__`."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def _module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module under `src/<package>` (packages: __init__.py)."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


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
