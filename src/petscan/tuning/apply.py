"""`make tune APPLY=1`: write the best values into params.yaml, keeping its comments."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petscan import config, io


def _round_trip_yaml():
    """A ruamel.yaml round-trip loader/dumper in params.yaml's layout."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)

    def null(representer, _):
        return representer.represent_scalar("tag:yaml.org,2002:null", "null")

    def real(representer, value):
        text = repr(float(value))
        if "e" in text and "." not in text.split("e")[0]:  # PyYAML reads 1e-05 as a string
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return representer.represent_scalar("tag:yaml.org,2002:float", text)

    rt.representer.add_representer(type(None), null)
    rt.representer.add_representer(float, real)
    return rt


def _parent_node(data: Any, key: str, params_path: Path) -> tuple[Any, str]:
    """(mapping holding the dotted `key`'s leaf, leaf name); KeyError if any part is missing."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping) or leaf not in node:
        raise KeyError(f"{params_path} has no {key}: cannot apply the tuned value")
    return node, leaf


def apply_best(best: Mapping[str, Any], params_path: str | Path) -> dict[str, tuple[Any, Any]]:
    """Write the best values into params.yaml, keeping its comments and layout.

    Returns {dotted key: (old, new)} for the values that changed. Lists keep their flow
    style; every key must already exist in the file.
    """
    params_path = Path(params_path)
    rt = _round_trip_yaml()
    with params_path.open() as fh:
        data = rt.load(fh)
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in config.flatten(dict(best)).items():
        node, leaf = _parent_node(data, key, params_path)
        old = node[leaf]
        plain_old = list(old) if isinstance(old, list) else old
        if plain_old == value:
            continue
        if isinstance(old, list) and isinstance(value, list):
            old.clear()  # in place: keeps the list's flow style
            old.extend(value)
        else:
            node[leaf] = value
        changed[key] = (plain_old, value)
    with io.atomic_path(params_path) as tmp, tmp.open("w") as fh:
        rt.dump(data, fh)
    return changed
