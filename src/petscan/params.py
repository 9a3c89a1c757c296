"""The schema of `params.yaml`: every section, key, type, allowed value and default.

`validate(raw, path)` checks a whole params file (as loaded from YAML) and returns it as
plain dicts with every default filled in, or raises `ParamsError` with one line per problem
naming the file, the dotted key, the value and what is allowed; an unknown key gets a
"did you mean" suggestion. `config.load_sections` validates the whole file before it picks
a stage's sections, so every stage (and `dvc exp run -S`, which writes params.yaml) goes
through the same check before it does any work.

To add a key: add a field to the section's model below, with its type, constraints and
default (the default is the value `params.yaml` ships with), then add it to `params.yaml`
with a short comment and to the `params:` of the stages that read it in `dvc.yaml`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from petscan.errors import ParamsError
from petscan.tuning.space import parse_space

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Monitor = Literal["val_data_loss", "val_loss", "val_accuracy", "val_roc_auc_macro"]

SEED_CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}


class Section(BaseModel):
    """A mapping of params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- sections


class SyntheticParams(Section):
    out_dir: str = "data/raw"
    seed: int = 2024
    counts: dict[str, NonNegInt] = Field(
        default_factory=lambda: {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}
    )
    images_per_patient: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [1, 3]
    base_height: PositiveInt = 512
    visible_contrast: Fraction = 0.1


class DataParams(Section):
    raw_dir: str = "data/raw"
    classes: Annotated[dict[str, str], Field(min_length=1)] = Field(
        default_factory=lambda: dict(SEED_CLASSES)
    )
    patient_pattern: str | None = r"^(?P<patient>[A-Za-z0-9-]+?)_v\d+"

    @field_validator("patient_pattern")
    @classmethod
    def _regex_with_patient_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression ({err})") from None
        if "patient" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<patient>...), or null: one image a patient")
        return value


class SplitParams(Section):
    mode: Literal["group", "image"] = "group"
    ratios: Annotated[list[NonNegFloat], Field(min_length=3, max_length=3)] = [0.9, 0.05, 0.05]
    seed: int = 101
    restarts: PositiveInt = 32
    max_file_mb: PositiveFloat | None = 64
    max_pixels: PositiveInt | None = 50_000_000
    min_side: PositiveInt = 32
    max_aspect: Annotated[float, Field(ge=1)] = 8.0
    out_dir: str = "data/split"

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, value: list[float]) -> list[float]:
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train, val, test ratios must sum to 1 (they sum to {sum(value):g})")
        return value


class _Source(Section):
    sha256: Sha256 | None = None
    label: str | None = None


class FileSource(_Source):
    type: Literal["file"]
    path: str | None


class UrlSource(_Source):
    type: Literal["url"]
    url: Annotated[str, Field(pattern=r"^https?://")] | None


class KaggleSource(_Source):
    type: Literal["kaggle"]
    dataset: str | None
    file: str | None


class HuggingFaceSource(_Source):
    type: Literal["huggingface"]
    repo_id: str | None
    filename: str | None
    revision: str | None = None
    repo_type: str | None = None


WeightsSource = Annotated[
    Union[FileSource, UrlSource, KaggleSource, HuggingFaceSource],  # noqa: UP007
    Field(discriminator="type"),
]


class WeightsParams(Section):
    dir: str = "models/backbone"
    sha256: Sha256 | None = None
    sources: list[WeightsSource] = Field(
        default_factory=lambda: [
            FileSource(type="file", path="RadImageNet-IRV2_notop.h5"),
            UrlSource(
                type="url",
                url="https://drive.google.com/uc?export=download&id=1UgYviHhVyQFLjqUuk5WfDB9bI6fBEr7Q",
            ),
            KaggleSource(
                type="kaggle",
                dataset="ipythonx/notop-wg-radimagenet",
                file="RadImageNet-IRV2_notop.h5",
            ),
            HuggingFaceSource(
                type="huggingface", repo_id=None, filename="RadImageNet-IRV2_notop.h5"
            ),
        ]
    )
    fallback: Literal["none", "random", "imagenet"] = "random"
    timeout_s: PositiveFloat = 30
    deadline_s: PositiveFloat = 3600  # keys of issue 10 (the downloader), as on main
    max_download_mb: PositiveFloat = 1024
    ca_bundle: str | None = None
    retries: NonNegInt = 3
    retry_wait_s: NonNegFloat = 2
    seed: int = 101

    @field_serializer("sources")
    def _sources_as_written(self, sources: list[_Source]) -> list[dict[str, Any]]:
        # as in the file: optional fields that were not given stay out (weights.json
        # records the sources, and an unchanged file must keep its record)
        return [source.model_dump(exclude_unset=True) for source in sources]


class ModelParams(Section):
    backbone: Literal["inception_resnet_v2", "resnet50", "densenet121", "inception_v3", "tiny"] = (
        "inception_resnet_v2"
    )
    input_size: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=2, max_length=2)] = [
        224,
        224,
    ]
    preprocessing: Literal["radimagenet", "rescale", "keras"] = "radimagenet"
    resize: Literal["stretch", "pad"] = "stretch"
    head_units: PositiveInt = 1024
    l2: NonNegFloat = 0.001
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.7
    standardize: bool = True


class AugmentationParams(Section):
    rotation: NonNegFloat = 0.2
    zoom: NonNegFloat | Annotated[list[float], Field(min_length=2, max_length=2)] = 0.2
    contrast: NonNegFloat = 0.2
    translation: NonNegFloat | Annotated[list[NonNegFloat], Field(min_length=2, max_length=2)] = 0.1
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "reflect"


class FeaturizeParams(Section):
    out_dir: str = "data/features"
    batch_size: PositiveInt = 32
    augment_views: NonNegInt = 3
    augmentation: AugmentationParams = Field(default_factory=AugmentationParams)
    seed: int = 101
    precision: Literal["float32", "bfloat16", "auto"] = "auto"


class OptimizerParams(BaseModel):
    """`name` and any keyword of that Keras optimizer (checked when it is built)."""

    model_config = ConfigDict(extra="allow")
    name: str = "adam"


class LrSchedule(Section):
    boundaries: list[NonNegInt] = [5, 15, 25]
    values: Annotated[list[PositiveFloat], Field(min_length=1)] = [5.0e-4, 1.0e-3, 5.0e-4, 1.0e-4]

    @model_validator(mode="after")
    def _one_more_value(self) -> LrSchedule:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"values needs one more entry than boundaries ({len(self.boundaries)} boundaries,"
                f" {len(self.values)} values)"
            )
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:], strict=False)):
            raise ValueError(f"boundaries must increase, got {self.boundaries}")
        return self


class EarlyStopping(Section):
    enabled: bool = True
    monitor: Monitor = "val_roc_auc_macro"
    patience: NonNegInt = 10
    restore_best_weights: bool = True
    min_delta: NonNegFloat = 0.0


class ReduceLrOnPlateau(Section):
    enabled: bool = False
    monitor: Monitor = "val_roc_auc_macro"
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    patience: NonNegInt = 3
    min_lr: NonNegFloat = 1.0e-6


class LossParams(Section):
    name: Literal["focal", "crossentropy"] = "focal"
    variant: Literal["categorical", "one_vs_rest"] = "categorical"
    alpha: list[Fraction] | Fraction | None = [0.5, 0.3, 0.2]
    gamma: NonNegFloat = 2.0


class CollapseParams(Section):
    max_class_share: Annotated[float, Field(gt=0, le=1)] = 0.95
    prior_margin: NonNegFloat = 0.02


class TrainParams(Section):
    mode: Literal["cached", "end_to_end"] = "cached"
    batch_size: PositiveInt = 16
    epochs: PositiveInt = 50
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    lr_schedule: LrSchedule = Field(default_factory=LrSchedule)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    reduce_lr_on_plateau: ReduceLrOnPlateau = Field(default_factory=ReduceLrOnPlateau)
    class_weight: Literal["balanced", "none"] | list[PositiveFloat] | None = "balanced"
    loss: LossParams = Field(default_factory=LossParams)
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    unfreeze_top_layers: NonNegInt = 0
    seed: int = 101
    out_dir: str = "models"


class MlflowParams(Section):
    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "pet-classification"
    registered_model: str | None = "pet-classifier"
    alias: str | None = "candidate"


Port = Annotated[int, Field(ge=1, le=65535)]


class ServeParams(Section):
    model: str | None = None
    host: str = "127.0.0.1"
    port: Port = 5001
    workers: PositiveInt = 1


class AppParams(Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    max_upload_mb: PositiveFloat = 20
    max_batch: PositiveInt = 8
    batch_wait_ms: NonNegInt = 20
    overlay_max_side: PositiveInt = 768
    max_pixels_in_flight: PositiveInt = 50_000_000
    busy_wait_s: NonNegFloat = 30


class EvaluateParams(Section):
    batch_size: PositiveInt = 32
    bootstrap_resamples: NonNegInt = 1000
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    ece_bins: PositiveInt = 10
    seed: int = 101
    out_dir: str = "reports"


class ExplainParams(Section):
    method: Literal["gradcam", "gradcam++"] = "gradcam"
    splits: Annotated[list[Literal["train", "val", "test"]], Field(min_length=1)] = ["val", "test"]
    tolerance_mm: NonNegFloat = 15.0
    batch_size: PositiveInt = 8
    seed: int = 101
    out_dir: str = "reports/explain"


class PlotParams(Section):
    dpi: PositiveInt = 130
    out_dir: str = "reports/figures"


class PrunerParams(BaseModel):
    """`name`, and keyword arguments of that Optuna pruner (checked when it is built)."""

    model_config = ConfigDict(extra="allow")
    name: Literal["median", "hyperband", "none"] = "median"


class TuneParams(Section):
    study_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "petscan-head"
    n_trials: NonNegInt = 50
    timeout_s: PositiveFloat | None = None
    seed: int = 101
    objective: str = "roc_auc_macro"
    cv_folds: NonNegInt = 0
    n_startup_trials: NonNegInt = 10
    pruner: PrunerParams = Field(
        default_factory=lambda: PrunerParams(name="median", n_startup_trials=5, n_warmup_steps=10)
    )
    storage: str | None = None
    max_failures: PositiveInt = 5
    out_dir: str = "tune"
    space: dict[str, Any] = Field(default_factory=dict)  # checked after the sections

    @field_validator("cv_folds")
    @classmethod
    def _not_one_fold(cls, value: int) -> int:
        if value == 1:
            raise ValueError("0 (hold-out val) or k >= 2 folds")
        return value


class Params(Section):
    """The whole `params.yaml`; a missing section or key takes the default below."""

    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    data: DataParams = Field(default_factory=DataParams)
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


# --------------------------------------------------------------------------- validating


def defaults() -> dict[str, Any]:
    """Every section with its default values (what an empty params.yaml means)."""
    return Params().model_dump()


def section(name: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Section `name` of params.yaml made from `values`: checked against the schema, every
    missing key filled with its default. For code that builds a section by hand (tests,
    benchmarks); the stages get theirs from `config.load_sections`.
    """
    return validate({name: dict(values or {})}, f"params section {name!r}")[name]


def validate(raw: Any, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file, checked and with defaults filled, as plain dicts.

    Raises `ParamsError` listing every problem, one line each.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(
            f"{path}: must hold a mapping of sections (data:, split:, ...), "
            f"got {type(raw).__name__}"
        )
    try:
        params = Params.model_validate(dict(raw)).model_dump()
    except ValidationError as err:
        problems = [_problem_line(error, path) for error in err.errors()]
        raise ParamsError("\n".join(dict.fromkeys(problems))) from None
    space_problem = _check_space(params, path)
    if space_problem:
        raise ParamsError(space_problem)
    return params


def _check_space(params: dict[str, Any], path: str | Path) -> str | None:
    """tune.space: each entry's shape, and that it names a real train.*/model.* key."""
    classes = list(dict.fromkeys(params["data"]["classes"].values()))
    sections = {"train": params["train"], "model": params["model"]}
    try:
        parse_space(params["tune"]["space"], len(classes), sections)
    except ValueError as err:
        return f"{path}: {str(err).removeprefix('params.yaml ')}"
    return None


def _problem_line(error: Mapping[str, Any], path: str | Path) -> str:
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    key = _dotted(loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
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
    return f"{path}: {key} = {_show(value)}: {message}"


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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at `loc` (for a "did you mean")."""
    node: Any = Params
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
