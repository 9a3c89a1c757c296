"""Reading a params file as YAML, within bounds, before anything validates or formats it.

A params file is a few KB. `read_params_yaml` refuses, each with one `ParamsError` line and in
well under a second whatever the file holds:

- a file above `MAX_PARAMS_BYTES` (a 50 MB value or a 3-million-item list is not a param);
- bytes that are not UTF-8 text (a UTF-16 or binary file);
- more than `MAX_PARAMS_NODES` values, counting every use of an alias as a copy of what it
  names (an alias bomb, "billion laughs", is refused while it is read, before it expands),
  an alias that refers to itself, or nesting deeper than `MAX_PARAMS_DEPTH`;
- a key written twice in one mapping, at any depth (PyYAML keeps the last silently; DVC
  refuses the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from petscan.utils.errors import ParamsError

MAX_PARAMS_BYTES = 1_000_000  # 1 MB; the shipped params.yaml is about 11 KB
MAX_PARAMS_NODES = 20_000  # values, aliases expanded; the shipped file has a few hundred
MAX_PARAMS_DEPTH = 32  # levels of nesting; the schema's deepest key is 5 levels down
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A bound was hit while reading; `line` is 1-based."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line


if yaml.__with_libyaml__:
    from yaml.cyaml import CParser

    _PARSER: tuple[type, ...] = (CParser,)  # libyaml's events: fast
else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER = (Reader, Scanner, Parser)


class _BoundedLoader(Composer, *_PARSER, SafeConstructor, Resolver):  # type: ignore[misc]
    """A safe loader that counts values (aliases expanded) and depth while it composes."""

    def __init__(self, text: str) -> None:
        _PARSER[0].__init__(self, text)
        for base in _PARSER[1:]:
            base.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._values = 0
        self._depth = 0
        self._weights: dict[int, int] = {}  # id(anchored node) -> its values, aliases expanded
        self._keys: list[str] = []  # where the node being composed is: ["train", "loss"]

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if self.check_event(AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                weight = self._weights.get(id(target))
                if weight is None:
                    raise _Refused(line, f"alias *{event.anchor} refers to itself: remove it")
                self._count(weight, line)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_PARAMS_DEPTH:
            raise _Refused(line, f"nested deeper than {MAX_PARAMS_DEPTH} levels")
        before = self._values
        self._keys.append(_key_part(index))
        node = super().compose_node(parent, index)
        self._keys.pop()
        self._depth -= 1
        self._count(1, line)
        if event.anchor is not None:
            self._weights[id(node)] = self._values - before
        return node

    def _count(self, values: int, line: int) -> None:
        self._values += values
        if self._values > MAX_PARAMS_NODES:
            raise _Refused(
                line,
                f"more than {MAX_PARAMS_NODES:,} values (aliases counted once per use);"
                " a params file needs a few hundred: write the values out",
            )

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        where = "".join(self._keys).lstrip(".")
        _refuse_duplicate_keys(node, where)  # as written: before merge keys (<<) are flattened
        return node


def _key_part(index: Any) -> str:
    """`.name` for a mapping's value, `[i]` for a list item, "" for a key or the document."""
    if isinstance(index, ScalarNode):
        return f".{index.value}"
    return f"[{index}]" if isinstance(index, int) else ""


def _refuse_duplicate_keys(node: MappingNode, where: str) -> None:
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        name = f"{key.tag}:{key.value}"
        if name in seen:
            raise _Refused(
                line,
                f"key {key.value!r}{f' of {where}' if where else ''} is written twice (first at"
                f" line {seen[name]}); YAML would keep only the last, DVC refuses it: merge them",
            )
        seen[name] = line


def read_params_yaml(path: Path) -> Any:
    """The YAML document in `path` (plain Python values), or `ParamsError` with one line."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PARAMS_BYTES + 1)
    except OSError as err:
        raise ParamsError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(
            f"{path}: larger than {MAX_PARAMS_BYTES // 1_000_000} MB, the most a params file may"
            f" be (params.yaml is a few KB): is it the right file?"
        )
    text = _decoded(data, path)
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as err:
        raise ParamsError(f"{path}: line {err.line}: {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML{line}: {problem}") from None
    finally:
        loader.dispose()


def _decoded(data: bytes, path: Path) -> str:
    """The text of a UTF-8 file (a UTF-8 byte-order mark is allowed)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        kind = "UTF-16 text (it starts with a UTF-16 byte-order mark)"
    elif b"\x00" in data:
        kind = f"not UTF-8 text (a NUL byte at offset {data.index(0)}: UTF-16 or binary)"
    else:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            kind = f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
    raise ParamsError(f"{path}: {kind}; a params file must be UTF-8 text: save it as UTF-8")
