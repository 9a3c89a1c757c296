"""`make tune APPLY=1`: write the best values into params.yaml, keeping its comments.

The study storage may be shared (a database server, a journal file) and is not trusted:
the values are rebuilt from the best trial's sampled `params`, each checked against
`tune.space` of the local params.yaml, and only the keys the space names are written.
What a trial stored as `user_attrs["overrides"]` is never applied.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML

from petscan.params.loading import flatten
from petscan.params.space import Dimension, overrides_from
from petscan.utils import io
from petscan.utils.errors import BadInputError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)


def trusted_overrides(
    trial: FrozenTrial, dims: Sequence[Dimension], num_classes: int
) -> dict[str, Any]:
    """{dotted params key: value} of `trial`, rebuilt through the space `dims`.

    Fixed dimensions take their value from the space; every searched one must be in the
    trial's params and inside its range or choices, else `ValueError` (a changed space
    or a tampered storage). Other params of the trial and its stored overrides are
    ignored, with a warning naming the keys that the space does not name.
    """
    values: dict[str, Any] = {}
    for dim in dims:
        if dim.kind == "fixed":
            values[dim.name] = dim.value
            continue
        if dim.name not in trial.params:
            raise BadInputError(
                f"trial {trial.number} has no value for tune.space {dim.name} (the space "
                "changed since it ran?): nothing applied; start a new study with --study NAME"
            )
        value = trial.params[dim.name]
        if not dim.contains(value):
            raise BadInputError(
                f"trial {trial.number} has {dim.name} = {value!r}, which tune.space cannot "
                "produce (a changed space, or a tampered study storage): nothing applied"
            )
        values[dim.name] = value
    overrides = overrides_from(values, num_classes)
    stored = trial.user_attrs.get("overrides")
    foreign = set(trial.params) - set(values)
    if isinstance(stored, Mapping):
        foreign |= set(map(str, stored)) - set(overrides)
    if foreign:
        log.warning(
            "trial %d of the study storage names keys outside tune.space, ignored: %s",
            trial.number,
            ", ".join(sorted(foreign)),
        )
    return overrides


def _round_trip_yaml():
    """A ruamel.yaml round-trip loader/dumper in params.yaml's layout."""
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


def apply_best(
    best: Mapping[str, Any], params_path: str | Path, allowed: Collection[str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Write the best values into params.yaml, keeping its comments and layout.

    Returns {dotted key: (old, new)} for the values that changed. Lists keep their flow
    style; every key must already exist in the file and, if `allowed` is given, be one of
    those dotted keys (`ValueError` before anything is written).
    """
    params_path = Path(params_path)
    flat = flatten(dict(best))
    if allowed is not None and (refused := sorted(set(flat) - set(allowed))):
        raise BadInputError(
            f"refusing to write {refused} into {params_path}: not keys of tune.space"
        )
    rt = _round_trip_yaml()
    with params_path.open() as fh:
        data = rt.load(fh)
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in flat.items():
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
