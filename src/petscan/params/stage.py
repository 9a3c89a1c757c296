"""What one stage may read of the params: the sections and single keys it declares.

A stage declares them in its module (`SECTIONS`) and, the same names, in its `dvc.yaml`
`params:`; DVC re-runs the stage when one of them changes, and only then. `StageParams`
makes the declaration binding: reading anything else is an `AttributeError` that names the
key, a bug in the stage (its output would go stale when that value changes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from petscan.params.schema import Params

UNDECLARED = (
    "{} is not among the params this stage declares: add it to the stage's SECTIONS and its"
    " dvc.yaml params"
)


class StageParams:
    """The declared part of `params`, typed.

    `StageParams(params, ["train", "split.out_dir"])` gives `.train` (the `TrainParams`)
    and `.split`, a `SplitParams` holding `out_dir` only: `.split.ratios` and `.evaluate`
    are refused. `as_dict()` is the declared values, nested as in the file (what the stage
    logs to MLflow).
    """

    def __init__(self, params: Params, names: Iterable[str], path: str | Path = "params.yaml"):
        self._names = tuple(names)
        self._params = params
        tree: dict[str, Any] = {}
        for name in self._names:
            _declare(tree, name.split("."), params, name, path)
        self._tree = tree
        self._sections = {key: _part(getattr(params, key), sub, key) for key, sub in tree.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._sections:
            raise AttributeError(UNDECLARED.format(name))
        return self._sections[name]

    def as_dict(self) -> dict[str, Any]:
        """The declared sections and keys as plain values, nested as in params.yaml."""
        return _as_dict(self._tree, self._params.model_dump())

    def __repr__(self) -> str:
        return f"StageParams({', '.join(self._names)})"


def _declare(tree: dict[str, Any], parts: list[str], node: Any, name: str, path: Any) -> None:
    """Mark `parts` in `tree` (True: the whole value), checking the schema has them."""
    for depth, part in enumerate(parts):
        fields = getattr(type(node), "model_fields", None)
        if fields is None or part not in fields:
            where = ".".join(parts[:depth])
            if not depth:
                raise KeyError(f"{path} has no '{name}' section (sections: {', '.join(fields)})")
            found = f"keys: {', '.join(fields)}" if fields is not None else "not a mapping"
            raise KeyError(f"{path} has no '{name}' ('{where}' {found})")
        node = getattr(node, part)
        if depth == len(parts) - 1:
            tree[part] = True
        elif tree.get(part) is not True:
            tree = tree.setdefault(part, {})
        else:
            return  # the whole of it is declared already


def _part(value: Any, declared: dict[str, Any] | bool, where: str) -> Any:
    """`value` whole, or a copy of the section holding only the declared keys."""
    if declared is True:
        return value
    cls = _restricted(type(value), where)
    kept = {key: _part(getattr(value, key), sub, f"{where}.{key}") for key, sub in declared.items()}
    part = cls.model_construct(**kept)
    for key in cls.model_fields:
        if key not in kept:
            part.__dict__.pop(key, None)  # not declared: reading it raises (below)
    return part


@functools.cache
def _restricted(cls: type[BaseModel], where: str) -> type[BaseModel]:
    """`cls` for a section of which a stage declares some keys: the others are refused."""

    def __getattr__(self: BaseModel, name: str) -> Any:  # only for names not in __dict__
        if name.startswith("_") or name not in cls.model_fields:
            return cls.__getattr__(self, name)  # pydantic's own (private attributes, ...)
        raise AttributeError(UNDECLARED.format(f"{where}.{name}"))

    return type(cls.__name__, (cls,), {"__getattr__": __getattr__, "__module__": cls.__module__})


def _as_dict(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: values[key] if sub is True else _as_dict(sub, values[key]) for key, sub in tree.items()
    }
