"""The schema of `params.yaml`: every section, key, type, allowed value and default.

`validate(raw, path)` checks a whole params file (as loaded from YAML) and returns it as
plain dicts with every default filled in, or raises `ParamsError` with one line per problem
naming the file, the dotted key, the value and what is allowed (`petscan.params_errors`);
an unknown key gets a "did you mean" suggestion. `config.load_sections` validates the whole
file before it picks a stage's sections, so every stage (and `dvc exp run -S`, which writes
params.yaml) goes through the same check before it does any work.

To add a key: add a field to the section's model below, with its type, constraints and
default (the default is the value `params.yaml` ships with), then add it to `params.yaml`
with a short comment and to the `params:` of the stages that read it in `dvc.yaml`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from petscan.errors import ParamsError
from petscan.params_errors import problem_lines, show
from petscan.tuning.space import ALPHA_KEY, Dimension, parse_space


def _not_bool(value: Any) -> Any:
    """`epochs: true` is not 1: YAML's true/false are refused where a number is wanted."""
    if isinstance(value, bool):
        raise ValueError(f"input should be a number, not {str(value).lower()}")
    return value


# numbers: never a bool; floats are finite (`allow_inf_nan=False` in every section's config)
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(ge=0, le=1)]
# at most 2048 pixels a side: one 2048 x 2048 image is 48 MB as float32 and a backbone's
# activations are many times that per image, so a batch of larger ones runs out of memory;
# at least 32, split.min_side's default (the Inception backbones need 75)
ImageSide = Annotated[Int, Field(ge=32, le=2048)]
BatchSize = Annotated[Int, Field(gt=0, le=1024)]  # images a batch; more is out of memory
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Monitor = Literal["val_data_loss", "val_loss", "val_accuracy", "val_roc_auc_macro"]

DEMO_PATIENT_PREFIX = "pet"  # the demo generator's patient ids: pet-00001, ...
SEED_CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}


class Section(BaseModel):
    """A mapping of params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- sections


class SyntheticParams(Section):
    out_dir: str = "data/raw"
    seed: Int = 2024
    counts: dict[str, NonNegInt] = Field(
        default_factory=lambda: {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}
    )
    images_per_patient: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [1, 3]
    base_height: Annotated[Int, Field(gt=0, le=4096)] = 512  # larger: memory and disk only
    visible_contrast: Fraction = 0.1

    @field_validator("images_per_patient")
    @classmethod
    def _min_then_max(cls, value: list[int]) -> list[int]:
        if value[0] > value[1]:
            raise ValueError("needs [min, max] with min <= max")
        return value


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
    seed: Int = 101
    restarts: PositiveInt = 32
    max_file_mb: PositiveFloat | None = 64
    max_pixels: PositiveInt | None = 50_000_000
    min_side: PositiveInt = 32
    max_aspect: Annotated[Float, Field(ge=1)] = 8.0
    out_dir: str = "data/split"

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, value: list[float]) -> list[float]:
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train, val, test ratios must sum to 1 (they sum to {sum(value):g})")
        if min(value) <= 0:
            raise ValueError(
                "train, val and test each need a ratio above 0 (train fits the model, val picks"
                " its epoch for early stopping, test gives the final scores)"
            )
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


class DemoWeights(Section):
    """The shipped `pet_demo` backbone (`make pretrain-demo` rebuilds it)."""

    path: str = "src/petscan/demo_weights/pet_demo_backbone.h5"
    sha256: Sha256 | None = "9e727a7a6cffa8345f122f9db81a40fbfe64d6284e321618fd7c7ba15d7a312a"


class WeightsParams(Section):
    dir: str = "models/backbone"
    demo: DemoWeights = Field(default_factory=DemoWeights)
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
    seed: Int = 101

    @field_serializer("sources")
    def _sources_as_written(self, sources: list[_Source]) -> list[dict[str, Any]]:
        # as in the file: optional fields that were not given stay out (weights.json
        # records the sources, and an unchanged file must keep its record)
        return [source.model_dump(exclude_unset=True) for source in sources]


# Each backbone's own input size (height, width) and pre-processing: what `null` means for
# `model.input_size` / `model.preprocessing`. `auto` is resolved by `resolve_model`.
BACKBONE_DEFAULTS: dict[str, tuple[tuple[int, int], str]] = {
    "inception_resnet_v2": ((224, 224), "radimagenet"),
    "resnet50": ((224, 224), "radimagenet"),
    "densenet121": ((224, 224), "radimagenet"),
    "inception_v3": ((224, 224), "radimagenet"),
    "pet_demo": ((256, 160), "rescale"),
    "tiny": ((32, 32), "rescale"),
}
Backbone = Literal[
    "inception_resnet_v2", "resnet50", "densenet121", "inception_v3", "pet_demo", "tiny"
]


class ModelParams(Section):
    backbone: Backbone | Literal["auto"] = "auto"
    input_size: Annotated[list[ImageSide], Field(min_length=2, max_length=2)] | None = None
    preprocessing: Literal["radimagenet", "rescale", "keras"] | None = None
    resize: Literal["stretch", "pad"] = "stretch"
    head_units: PositiveInt = 1024
    l2: NonNegFloat = 0.001
    dropout: Annotated[Float, Field(ge=0, lt=1)] = 0.7
    standardize: StrictBool = True


ZoomBound = Annotated[Float, Field(gt=-1, le=1)]  # Keras' RandomZoom range


class AugmentationParams(Section):
    """Factors of Keras' random layers, in the ranges those layers accept."""

    rotation: NonNegFloat = 0.2
    zoom: Fraction | Annotated[list[ZoomBound], Field(min_length=2, max_length=2)] = 0.2
    contrast: Fraction = 0.2
    translation: Fraction | Annotated[list[Fraction], Field(min_length=2, max_length=2)] = 0.1
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "reflect"


class FeaturizeParams(Section):
    out_dir: str = "data/features"
    batch_size: BatchSize = 32
    augment_views: Annotated[Int, Field(ge=0, le=64)] = 3  # the features grow with each view
    augmentation: AugmentationParams = Field(default_factory=AugmentationParams)
    seed: Int = 101
    precision: Literal["float32", "bfloat16", "auto"] = "auto"


class _Open(BaseModel):
    """`name` and keyword arguments checked by the library that takes them; numbers finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _finite_extras(self) -> _Open:
        for key, value in (self.model_extra or {}).items():
            if not _finite(value):
                raise ValueError(f"{key} must be a finite number, got {show(value)}")
        return self


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(item) for item in value)
    if isinstance(value, Mapping):
        return all(_finite(item) for item in value.values())
    return True


class OptimizerParams(_Open):
    """`name` and any keyword of that Keras optimizer (checked when it is built)."""

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
    enabled: StrictBool = True
    monitor: Monitor = "val_roc_auc_macro"
    patience: NonNegInt = 10
    restore_best_weights: StrictBool = True
    min_delta: NonNegFloat = 0.0


class ReduceLrOnPlateau(Section):
    enabled: StrictBool = False
    monitor: Monitor = "val_roc_auc_macro"
    factor: Annotated[Float, Field(gt=0, lt=1)] = 0.5
    patience: NonNegInt = 3
    min_lr: NonNegFloat = 1.0e-6


class LossParams(Section):
    name: Literal["focal", "crossentropy"] = "focal"
    variant: Literal["categorical", "one_vs_rest"] = "categorical"
    alpha: list[Fraction] | Fraction | None = [0.5, 0.3, 0.2]
    gamma: NonNegFloat = 2.0


class CollapseParams(Section):
    max_class_share: Annotated[Float, Field(gt=0, le=1)] = 0.95
    prior_margin: NonNegFloat = 0.02


class TrainParams(Section):
    mode: Literal["cached", "end_to_end"] = "cached"
    batch_size: BatchSize = 16
    epochs: PositiveInt = 50
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    lr_schedule: LrSchedule = Field(default_factory=LrSchedule)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    reduce_lr_on_plateau: ReduceLrOnPlateau = Field(default_factory=ReduceLrOnPlateau)
    class_weight: Literal["balanced", "none"] | list[PositiveFloat] | None = "balanced"
    loss: LossParams = Field(default_factory=LossParams)
    collapse: CollapseParams = Field(default_factory=CollapseParams)
    unfreeze_top_layers: NonNegInt = 0
    seed: Int = 101
    out_dir: str = "models"


class MlflowParams(Section):
    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "pet-classification"
    registered_model: str | None = "pet-classifier"
    alias: str | None = "candidate"


Port = Annotated[Int, Field(ge=1, le=65535)]


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
    batch_size: BatchSize = 32
    bootstrap_resamples: NonNegInt = 1000
    confidence: Annotated[Float, Field(gt=0, lt=1)] = 0.95
    ece_bins: PositiveInt = 10
    seed: Int = 101
    out_dir: str = "reports"


class ExplainParams(Section):
    method: Literal["gradcam", "gradcam++"] = "gradcam"
    splits: Annotated[list[Literal["train", "val", "test"]], Field(min_length=1)] = ["val", "test"]
    tolerance_mm: NonNegFloat = 15.0
    batch_size: BatchSize = 8
    seed: Int = 101
    out_dir: str = "reports/explain"


class PlotParams(Section):
    dpi: PositiveInt = 130
    out_dir: str = "reports/figures"


class PrunerParams(_Open):
    """`name`, and keyword arguments of that Optuna pruner (checked when it is built)."""

    name: Literal["median", "hyperband", "none"] = "median"


class TuneParams(Section):
    study_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "petscan-head"
    n_trials: NonNegInt = 50
    timeout_s: PositiveFloat | None = None
    seed: Int = 101
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


class CorpusParams(Section):
    """A generated corpus for pretraining: the demo's generator, another seed and prefix."""

    seed: Int
    prefix: Annotated[str, Field(pattern=r"^[a-z]+$")]
    counts: dict[str, NonNegInt]


class PretrainParams(Section):
    out: str = "src/petscan/demo_weights/pet_demo_backbone.h5"
    work_dir: str = "data/pretrain"
    corpus: CorpusParams = Field(
        default_factory=lambda: CorpusParams(
            seed=7001,
            prefix="syn",
            counts={"No cancer": 2000, "breast cancer": 2000, "prostate cancer": 2000},
        )
    )
    selection: CorpusParams = Field(
        default_factory=lambda: CorpusParams(
            seed=7002,
            prefix="sel",
            counts={"No cancer": 200, "breast cancer": 200, "prostate cancer": 200},
        )
    )
    tasks: Annotated[
        list[Literal["lesions", "sex", "label"]], Field(min_length=1, max_length=3)
    ] = ["lesions", "sex", "label"]
    val_share: Annotated[Float, Field(gt=0, lt=1)] = 0.1
    epochs: PositiveInt = 10
    batch_size: BatchSize = 32
    learning_rate: PositiveFloat = 0.002
    lesion_weight: PositiveFloat = 20.0
    lesion_sigma_cells: PositiveFloat = 0.7
    contrast: Annotated[Float, Field(ge=0, lt=1)] = 0.2
    seed: Int = 101

    @model_validator(mode="after")
    def _apart_from_each_other(self) -> PretrainParams:
        if self.corpus.seed == self.selection.seed or self.corpus.prefix == self.selection.prefix:
            raise ValueError(
                "pretrain.corpus and pretrain.selection need their own seed and prefix"
            )
        return self


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


def resolve_model(params: dict[str, Any], file_exists: Callable[[str], bool]) -> dict[str, Any]:
    """`params` with `model.backbone: auto` and null `input_size` / `preprocessing` resolved.

    `auto` is the seed's `inception_resnet_v2` when a `file` source of `weights.sources`
    exists (the RadImageNet file is in place), else the shipped `pet_demo` backbone;
    `file_exists(path)` answers for a source's path as written.
    """
    model = dict(params["model"])
    if model["backbone"] == "auto":
        files = [
            s["path"] for s in params["weights"]["sources"] if s["type"] == "file" and s["path"]
        ]
        found = any(file_exists(path) for path in files)
        model["backbone"] = "inception_resnet_v2" if found else "pet_demo"
    size, preprocessing = BACKBONE_DEFAULTS[model["backbone"]]
    if model["input_size"] is None:
        model["input_size"] = list(size)
    if model["preprocessing"] is None:
        model["preprocessing"] = preprocessing
    return {**params, "model": model}


def defaults() -> dict[str, Any]:
    """Every section with its default values (what an empty params.yaml means)."""
    return Params().model_dump()


def section(name: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Section `name` of params.yaml made from `values`: checked against the schema, every
    missing key filled with its default. For code that builds a section by hand (tests,
    benchmarks); the stages get theirs from `config.load_sections`.
    """
    raw = {name: dict(values or {})}
    return validate(raw, f"params section {name!r}", across_sections=False)[name]


def validate(
    raw: Any, path: str | Path = "params.yaml", across_sections: bool = True
) -> dict[str, Any]:
    """The whole params file, checked and with defaults filled, as plain dicts.

    Raises `ParamsError` listing every problem, one line each. `across_sections=False` leaves
    out the checks between sections (class count against `train.loss.alpha`, ...).
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
        params = Params.model_validate(dict(raw), context=context).model_dump()
    except ValidationError as err:
        raise ParamsError("\n".join(problem_lines(err, path, Params))) from None
    space_problem = _check_space(params, path)
    if space_problem:
        raise ParamsError(space_problem)
    return params


def _check_space(params: dict[str, Any], path: str | Path) -> str | None:
    """tune.space: each entry's shape, that it names a real train.*/model.* key, and that
    every value it can give a trial (a fixed value, each choice, both ends of a range) is
    one the schema accepts for that key."""
    classes = list(dict.fromkeys(params["data"]["classes"].values()))
    sections = {"train": params["train"], "model": params["model"]}
    try:
        dims = parse_space(params["tune"]["space"], len(classes), sections)
    except ValueError as err:
        return f"{path}: {str(err).removeprefix('params.yaml ')}"
    for dim in dims:
        problem = _refused_trial_value(dim, sections, len(classes))
        if problem:
            return f"{path}: tune.space.{dim.name}: {problem}"
    return None


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
