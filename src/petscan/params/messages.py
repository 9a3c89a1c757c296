"""`ParamsError` lines from pydantic's validation errors: one line a problem, naming the file,
the dotted key, the value (cut short, never expanded whole) and what is allowed; an unknown
key gets a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from petscan.utils.redact import redact_url

MAX_PROBLEMS = 20  # lines of one ParamsError; the rest are counted


def problem_lines(err: ValidationError, path: str | Path, root: type[BaseModel]) -> list[str]:
    """One line a problem (the same problem once), at most `MAX_PROBLEMS` and a count."""
    lines = list(dict.fromkeys(_problem_line(error, path, root) for error in err.errors()))
    if len(lines) > MAX_PROBLEMS:
        more = len(lines) - MAX_PROBLEMS
        lines = [*lines[:MAX_PROBLEMS], f"{path}: ... and {more} more problems"]
    return lines


def _problem_line(error: Mapping[str, Any], path: str | Path, root: type[BaseModel]) -> str:
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    key = _dotted(loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, error["loc"][:-1])
        name = str(loc[-1])
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{path}: {key}: unknown key ({hint}allowed: {', '.join(allowed) or 'none'})"
    if kind == "missing":
        return f"{path}: {key}: required key is missing"
    if kind == "union_tag_invalid":
        return f"{path}: {key}: unknown type {value.get('type')!r}" + (
            f" ({error['msg'].split('expected tags: ')[-1].rstrip(')')})"
            if "expected tags" in error["msg"]
            else ""
        )
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    if not loc:  # a check across sections (Params): each line names its keys
        return "\n".join(f"{path}: {line}" for line in message.splitlines())
    return f"{path}: {key} = {show(value)}: {message}"


def _is_union_tag(part: Any) -> bool:
    """Discriminator tags and union member names pydantic puts into error locations."""
    return isinstance(part, str) and (
        part in ("file", "url", "kaggle", "huggingface")
        or "[" in part
        or part in ("int", "float", "str", "list", "none", "literal['balanced','none']")
        or part.startswith(("constrained-", "function-", "literal["))
    )


def _dotted(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 8, 6
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def show(value: Any) -> str:
    """A value as written (a URL without its password or query), cut to 60 characters (and
    never expanded whole first)."""
    text = _REPR.repr(redact_url(value) if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at `loc` under `root` (for a "did you mean")."""
    node: Any = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            args = get_args(node)
            node = args[0] if args else None
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            member = _union_member(node, part)
            if member is None:
                return []
            node = member
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _union_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    for member in get_args(annotation):
        member = _unwrap(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = member.model_fields.get("type")
            if kind is not None and tag in get_args(kind.annotation):
                return member
    return None
