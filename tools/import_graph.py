"""Which project modules a script runs, read from its imports with `ast` (never imported).

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
  file (`"petscan.x"`: `cli/main.py`'s command table). A dynamic import whose name is built
  some other way is not seen: name the module in a literal.
- A module that names `__file__` and a sibling `.py` file in a string literal uses that
  file by path: `serving/pyfunc.py` logs `pyfunc_code.py` as the MLflow model's code.

Anything else (the standard library, third-party packages) is ignored. In `dvc.yaml`,
only `src/**.py` deps are managed; other `src/...` deps (a data file) are kept as written.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from petscan.utils.errors import UserError

PACKAGE = "petscan"


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
