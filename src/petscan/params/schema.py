"""The schema of `params.yaml`: the whole file as `Params`, one frozen section per key.

`validate(raw, path)` checks a whole params file (as loaded from YAML) once and returns
`Params`, every default filled in, or raises `ParamsError` with one line per problem naming
the file, the dotted key, the value and what is allowed (`params.messages`); an unknown key
gets a "did you mean" suggestion. `params.loading.load_sections` validates the whole file
before it gives a stage its sections, so every stage (and `dvc exp run -S`, which writes
params.yaml) goes through the same check before it does any work. The sections are defined
by concern in `params.inputs`, `params.learning` and `params.results`.

To add a key: add a field to its section's model, with its type, constraints and default
(the default is the value `params.yaml` ships with), then add it to `params.yaml` with a
short comment, and to the `SECTIONS` of the stages that read it (`pipeline/<stage>.py`) and
their `params:` in `dvc.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from petscan.params.fields import Section
from petscan.params.inputs import (
    BACKBONE_DEFAULTS,
    DEMO_PATIENT_PREFIX,
    DataParams,
    IngestParams,
    SplitParams,
    SyntheticParams,
    WeightsParams,
)
from petscan.params.learning import (
    FeaturizeParams,
    ModelParams,
    PretrainParams,
    TrainParams,
    TuneParams,
)
from petscan.params.messages import problem_lines, show
from petscan.params.results import (
    AppParams,
    EvaluateParams,
    ExplainParams,
    MlflowParams,
    PlotParams,
    ServeParams,
)
from petscan.utils.errors import ParamsError


class Params(Section):
    """The whole `params.yaml`; a missing section or key takes the default below."""

    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    data: DataParams = Field(default_factory=DataParams)
    ingest: IngestParams = Field(default_factory=IngestParams)
    split: SplitParams = Field(default_factory=SplitParams)
    weights: WeightsParams = Field(default_factory=WeightsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    featurize: FeaturizeParams = Field(default_factory=FeaturizeParams)
    train: TrainParams = Field(default_factory=TrainParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    app: AppParams = Field(default_factory=AppParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    explain: ExplainParams = Field(default_factory=ExplainParams)
    plot: PlotParams = Field(default_factory=PlotParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)

    @model_validator(mode="after")
    def _pretraining_apart_from_the_demo(self) -> Params:
        for name in ("corpus", "selection"):
            spec = getattr(self.pretrain, name)
            if spec.seed == self.synthetic.seed or spec.prefix == DEMO_PATIENT_PREFIX:
                raise ValueError(
                    f"pretrain.{name} must not share the demo's seed ({self.synthetic.seed}) "
                    f"or its patient-id prefix {DEMO_PATIENT_PREFIX!r}: the pretraining corpus "
                    "never holds a demo patient"
                )
        return self

    @model_validator(mode="after")
    def _across_sections(self, info: ValidationInfo) -> Params:
        """What one section's values must agree with in another (one line each); not for
        `section()`, which checks one section with the others at their defaults."""
        if info.context and info.context.get("one_section"):
            return self
        names = list(dict.fromkeys(self.data.classes.values()))
        classes = f"{len(names)}: {', '.join(names)}"
        problems = []
        if len(names) < 2:
            problems.append(f"data.classes names one class ({classes}): a classifier needs 2+")
        train, loss = self.train, self.train.loss
        per_class = [
            ("train.loss.alpha", loss.alpha, "alpha" in loss.model_fields_set),
            ("train.class_weight", train.class_weight, "class_weight" in train.model_fields_set),
        ]
        for key, value, given in per_class:
            if isinstance(value, list) and len(value) != len(names):
                problems.append(
                    f"{key} = {show(value)}{'' if given else ' (the default)'}: needs one value"
                    f" a class, in the order of data.classes ({classes}), got {len(value)}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --------------------------------------------------------------------------- validating


def validate(raw: Any, path: str | Path = "params.yaml", across_sections: bool = True) -> Params:
    """The whole params file, checked once, every default filled in: frozen typed sections.

    Raises `ParamsError` listing every problem, one line each. `across_sections=False` leaves
    out the checks between sections (class count against `train.loss.alpha`, ...). The
    search space `tune.space` is checked by `make tune` (`params.space.check_space`), so the
    stages do not depend on the tuning code.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(
            f"{path}: must hold a mapping of sections (data:, split:, ...), "
            f"got {type(raw).__name__}"
        )
    try:
        context = {"one_section": not across_sections}
        return Params.model_validate(dict(raw), context=context)
    except ValidationError as err:
        raise ParamsError("\n".join(problem_lines(err, path, Params))) from None


def resolve_model(params: Params, file_exists: Callable[[str], bool]) -> Params:
    """`params` with `model.backbone: auto` and null `input_size` / `preprocessing` resolved.

    `auto` is the seed's `inception_resnet_v2` when a `file` source of `weights.sources`
    exists (the RadImageNet file is in place), else the shipped `pet_demo` backbone;
    `file_exists(path)` answers for a source's path as written.
    """
    model = params.model
    backbone = model.backbone
    if backbone == "auto":
        files = [s.path for s in params.weights.sources if s.type == "file" and s.path]
        found = any(file_exists(path) for path in files)
        backbone = "inception_resnet_v2" if found else "pet_demo"
    size, preprocessing = BACKBONE_DEFAULTS[backbone]
    resolved = model.model_copy(
        update={
            "backbone": backbone,
            "input_size": list(size) if model.input_size is None else model.input_size,
            "preprocessing": model.preprocessing or preprocessing,
        }
    )
    return params.model_copy(update={"model": resolved})


def with_overrides(
    params: Params, overrides: Mapping[str, Any], path: str = "params.yaml"
) -> Params:
    """`params` with dotted keys replaced (`{"train.loss.gamma": 1.0}`), validated again by the
    schema: a trial of `make tune` gets the same checks as the file."""
    raw = params.model_dump()
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = value
    return validate(raw, path)


def defaults() -> Params:
    """Every section with its default values (what an empty params.yaml means)."""
    return Params()


def section(name: str, values: Mapping[str, Any] | None = None) -> Section:
    """Section `name` of params.yaml made from `values`: checked against the schema, every
    missing key filled with its default. For code that builds a section by hand (tests,
    benchmarks); the stages get theirs from `params.loading.load_sections`.
    """
    raw = {name: dict(values or {})}
    return getattr(validate(raw, f"params section {name!r}", across_sections=False), name)
