"""The search space of `tune.space` and how a trial's values become params overrides.

An entry of `tune.space` is keyed by the dotted params name it sets (`train.loss.gamma`,
`model.dropout`, ...) and is

* a plain value (a number, a string, a list): the dimension is fixed;
* `{low, high}` with optional `log: true`, `step`, `type: int | float`: a range (whole
  numbers for `low` and `high` make it an integer range);
* `{choices: [...]}`: a categorical choice.

Two entries are special. `train.loss.alpha` expands to one dimension per class
(`train.loss.alpha.0`, `.1`, ... in `data.classes` order); give one spec for all
classes or a list of one spec per class. `schedule.*` describes the piecewise learning
rate as phases: `warmup_lr`, `peak_lr`, `decay_lr`, `final_lr` (rates) and
`warmup_epochs`, `peak_epochs`, `decay_epochs` (durations), which map onto
`train.lr_schedule` as `boundaries = [w, w + p, w + p + d]` and
`values = [warmup_lr, peak_lr, decay_lr, final_lr]`, so boundaries always increase.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from petscan.params.learning import ModelParams, TrainParams
from petscan.params.messages import show
from petscan.utils.errors import ParamsError

if TYPE_CHECKING:
    import optuna

    from petscan.params.schema import Params

ALPHA_KEY = "train.loss.alpha"
SCHEDULE_RATES = ("warmup_lr", "peak_lr", "decay_lr", "final_lr")
SCHEDULE_EPOCHS = ("warmup_epochs", "peak_epochs", "decay_epochs")
SCHEDULE_KEYS = SCHEDULE_RATES + SCHEDULE_EPOCHS
RANGE_KEYS = frozenset({"low", "high", "log", "step", "type"})


@dataclass(frozen=True)
class Dimension:
    """One dimension of `tune.space`: fixed, a float/int range, or a categorical choice."""

    name: str
    kind: str  # fixed | float | int | categorical
    value: Any = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def sample(self, trial: optuna.Trial) -> Any:
        if self.kind == "fixed":
            return copy.deepcopy(self.value)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this dimension can produce (a stored trial is checked
        with it before its values are trusted)."""
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return math.isfinite(value) and self.low <= value <= self.high

    def lowest(self) -> Any:
        """The smallest value the dimension can take."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return min(self.choices)
        return self.low


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, .inf or .nan)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_dimension(name: str, spec: Any) -> Dimension:
    """One `tune.space` entry -> a `Dimension`; a clear error names the bad entry."""
    where = f"params.yaml tune.space.{name}"
    if not isinstance(spec, Mapping):
        return Dimension(name, "fixed", value=spec)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            raise ParamsError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Dimension(name, "categorical", choices=tuple(choices))
    if "value" in spec:
        return Dimension(name, "fixed", value=spec["value"])
    return _parse_range(where, name, spec)


def _parse_range(where: str, name: str, spec: Mapping[str, Any]) -> Dimension:
    if not {"low", "high"} <= set(spec):
        raise ParamsError(
            f"{where}: give a plain value, {{low, high[, log, step]}} or {{choices: [...]}}, "
            f"got {dict(spec)!r}"
        )
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {sorted(unknown)}")
    low, high, step, log_scale = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log"))
    whole = _is_whole(low) and _is_whole(high) and (step is None or _is_whole(step))
    kind = spec.get("type") or ("int" if whole else "float")
    if kind not in ("int", "float"):
        raise ParamsError(f"{where}: type must be int or float, got {kind!r}")
    if not all(isinstance(v, int | float) for v in (low, high)) or low > high:
        raise ParamsError(f"{where}: needs numbers low <= high, got low={low!r} high={high!r}")
    if not all(_is_number(v) for v in (low, high, 1 if step is None else step)):
        raise ParamsError(
            f"{where}: low, high and step must be finite numbers (not true/false, .inf or .nan),"
            f" got low={low!r} high={high!r} step={step!r}"
        )
    if log_scale and low <= 0:
        raise ParamsError(f"{where}: a log range needs low > 0, got {low}")
    if log_scale and step is not None:
        raise ParamsError(f"{where}: log and step cannot be combined")
    return Dimension(name, kind, low=low, high=high, log=log_scale, step=step)


def parse_space(
    space: Mapping[str, Any], num_classes: int, sections: Mapping[str, Any] | None = None
) -> list[Dimension]:
    """All dimensions of `tune.space`, with `train.loss.alpha` expanded per class.

    `sections` ({"train": ..., "model": ...}) lets every key be checked against the
    params it overrides, so a typo fails before the first trial.
    """
    dims: list[Dimension] = []
    for name, spec in (space or {}).items():
        name = str(name)
        if name == ALPHA_KEY:
            dims.extend(_alpha_dims(spec, num_classes))
            continue
        if name.startswith("schedule."):
            _check_schedule_name(name)
        elif name.startswith(("train.", "model.")):
            _check_target(name, sections)
        else:
            raise ParamsError(
                f"params.yaml tune.space.{name}: keys must start with train., model. or "
                "schedule. (the sections a trial overrides)"
            )
        dims.append(parse_dimension(name, spec))
    _check_schedule(dims)
    return dims


def _alpha_dims(spec: Any, num_classes: int) -> list[Dimension]:
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != num_classes:
            raise ParamsError(
                f"params.yaml tune.space.{ALPHA_KEY} lists {len(spec)} specs for {num_classes} "
                "classes: give one per class (data.classes order) or a single spec for all"
            )
        specs = list(spec)
    else:
        specs = [spec] * num_classes
    return [parse_dimension(f"{ALPHA_KEY}.{i}", s) for i, s in enumerate(specs)]


def _check_schedule_name(name: str) -> None:
    if name.removeprefix("schedule.") not in SCHEDULE_KEYS:
        raise ParamsError(
            f"params.yaml tune.space.{name}: unknown schedule dimension; use "
            f"{', '.join('schedule.' + k for k in SCHEDULE_KEYS)}"
        )


def _check_target(name: str, sections: Mapping[str, Any] | None) -> None:
    if sections is None:
        return
    node: Any = sections
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(
                f"params.yaml tune.space.{name}: {name} is not a key of params.yaml; "
                "fix the name (dotted path into the train or model section)"
            )
        node = node[part]


def _check_schedule(dims: Sequence[Dimension]) -> None:
    """schedule.* phases: all or none, not with train.lr_schedule.*, durations large enough."""
    phases = {d.name.removeprefix("schedule."): d for d in dims if d.name.startswith("schedule.")}
    if not phases:
        return
    missing = [k for k in SCHEDULE_KEYS if k not in phases]
    if missing:
        raise ParamsError(
            f"params.yaml tune.space: the schedule.* dimensions need all of "
            f"{list(SCHEDULE_KEYS)}; missing {missing} (a plain value fixes one)"
        )
    if any(d.name.startswith("train.lr_schedule") for d in dims):
        raise ParamsError(
            "params.yaml tune.space: give the learning-rate schedule either as schedule.* "
            "phases or as train.lr_schedule.*, not both"
        )
    for key in SCHEDULE_EPOCHS:
        least = 0 if key == "warmup_epochs" else 1
        lowest = phases[key].lowest()
        if lowest is None or lowest < least:
            raise ParamsError(
                f"params.yaml tune.space.schedule.{key}: durations must be >= {least} epochs"
            )


def sample(dims: Sequence[Dimension], trial: optuna.Trial) -> dict[str, Any]:
    """Every dimension's value for this trial: {dimension name: value}."""
    return {dim.name: dim.sample(trial) for dim in dims}


def schedule_from_phases(phases: Mapping[str, Any]) -> dict[str, list]:
    """Warm-up/peak/decay/final phases -> `train.lr_schedule` {boundaries, values}."""
    warmup, peak, decay = (int(phases[k]) for k in SCHEDULE_EPOCHS)
    boundaries = [warmup, warmup + peak, warmup + peak + decay]
    values = [float(phases[k]) for k in SCHEDULE_RATES]
    return {"boundaries": boundaries, "values": values}


def overrides_from(values: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """Sampled values -> dotted params overrides (`train.loss.alpha` as one list)."""
    out: dict[str, Any] = {}
    alpha: dict[int, float] = {}
    phases: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith("schedule."):
            phases[name.removeprefix("schedule.")] = value
        elif name.startswith(ALPHA_KEY + "."):
            alpha[int(name.rsplit(".", 1)[1])] = float(value)
        else:
            out[name] = value
    if alpha:
        out[ALPHA_KEY] = [alpha[i] for i in range(num_classes)]
    if phases:
        schedule = schedule_from_phases(phases)
        out["train.lr_schedule.boundaries"] = schedule["boundaries"]
        out["train.lr_schedule.values"] = schedule["values"]
    return out


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with every dotted override set."""
    out = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"train.loss.gamma": 2}` -> `{"train": {"loss": {"gamma": 2}}}`."""
    return apply_overrides({}, flat)


def check_space(params: Params, path: str | Path = "params.yaml") -> list[Dimension]:
    """The dimensions of `tune.space`, checked: each entry's shape, that it names a real
    train.*/model.* key, and that every value it can give a trial (a fixed value, each
    choice, both ends of a range) is one the schema accepts for that key. `ParamsError`
    (naming `path`) otherwise; `make tune` calls this before its first trial."""
    classes = len(params.data.class_names)
    sections = {"train": params.train.model_dump(), "model": params.model.model_dump()}
    try:
        dims = parse_space(params.tune.space, classes, sections)
    except ValueError as err:
        raise ParamsError(f"{path}: {str(err).removeprefix('params.yaml ')}") from None
    for dim in dims:
        problem = _refused_trial_value(dim, sections, classes)
        if problem:
            raise ParamsError(f"{path}: tune.space.{dim.name}: {problem}")
    return dims


def _refused_trial_value(dim: Dimension, sections: dict[str, Any], classes: int) -> str | None:
    if dim.name.startswith("schedule."):
        return None  # phases: parse_space checks them
    model = {"train": TrainParams, "model": ModelParams}[dim.name.split(".")[0]]
    alpha = dim.name.startswith(f"{ALPHA_KEY}.")
    section, *keys = (ALPHA_KEY if alpha else dim.name).split(".")
    values = {"fixed": (dim.value,), "categorical": dim.choices}.get(dim.kind, (dim.low, dim.high))
    for value in values:
        trial = copy.deepcopy(sections[section])
        node = trial
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = [value] * classes if alpha else value
        try:
            model.model_validate(trial)
        except ValidationError as err:
            message = err.errors()[0]["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            return f"a trial could get {show(value)}, which {dim.name} refuses: {message}"
    return None
