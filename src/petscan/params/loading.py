"""Reading `params.yaml` and locating the repository.

Stage scripts read only the sections (and single keys) they declare in `dvc.yaml`;
`load_section` and `load_sections` are the way they do it: they validate the whole file
against the schema (`petscan.params.schema`) once, first, so a typo anywhere fails before
any work, and give frozen typed sections with every default filled in (`StageParams`).
`stage_parser` is every stage's command line: its docstring as `--help`, `--params` and
`--verbose`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from petscan.params.reading import read_params_yaml
from petscan.params.schema import Params, resolve_model, validate
from petscan.params.stage import StageParams
from petscan.utils.errors import MissingInputError, ParamsError

PARAMS_FILE = "params.yaml"


def repo_root(start: Path | None = None) -> Path:
    """The real repository root.

    `dvc exp run --queue` runs stages in a temporary copy and exports `DVC_ROOT`
    pointing at the real repository; stores that must be shared between
    experiments (MLflow, Optuna) are anchored there.
    """
    if os.environ.get("PETSCAN_ROOT"):
        return Path(os.environ["PETSCAN_ROOT"]).resolve()
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    return workspace_root(start)


def workspace_root(start: Path | None = None) -> Path:
    """The folder holding `params.yaml` at or above `start` (default: the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    return here


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file as written (not validated, no defaults): for tools that edit it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found: run from the repository root or pass --params")
    params = read_params_yaml(path) or {}  # bounded: size, encoding, aliases, duplicates
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def load_validated(path: str | Path = PARAMS_FILE) -> Params:
    """The whole params file, checked against the schema, every default filled in, and
    `model.backbone: auto` resolved (`schema.resolve_model`): frozen typed sections."""
    return resolve_model(validate(load_params(path), path), source_file_exists)


def source_file_exists(path: str) -> bool:
    """Whether a `file` weights source is in place (`~` expanded, relative to the repo root)."""
    file = Path(path).expanduser()
    return (file if file.is_absolute() else repo_root() / file).is_file()


def load_section(name: str, path: str | Path = PARAMS_FILE) -> Any:
    """One typed section of `params.yaml` (`TrainParams`, ...), validated with the whole file."""
    return getattr(load_sections([name], path), name)


def load_sections(names: Iterable[str], path: str | Path = PARAMS_FILE) -> StageParams:
    """The sections and single keys a stage reads (its `SECTIONS`, its `dvc.yaml` params).

    The whole file is validated first (`ParamsError`, one line per problem), defaults filled
    in; the result gives only what `names` declares (`StageParams`).
    """
    return StageParams(load_validated(path), names, path)


def stage_parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """A stage script's parser: `doc` (its `__doc__`) as the description, line breaks kept,
    and `--params`. Keyword arguments go to `argparse.ArgumentParser` and win.
    """
    kwargs.setdefault("description", doc)
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = argparse.ArgumentParser(**kwargs)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up and library messages (or set PETSCAN_VERBOSE=1)",
    )
    return parser


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"loss": {"gamma": 2}}}` -> `{"train.loss.gamma": 2}` (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
