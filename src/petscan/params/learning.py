"""Params of learning: the model, the feature cache, training, tuning and pretraining.

Sections `model`, `featurize`, `train`, `tune` and `pretrain`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from petscan.params.fields import (
    BatchSize,
    Float,
    Fraction,
    ImageSide,
    Int,
    Monitor,
    NonNegFloat,
    NonNegInt,
    OpenSection,
    PositiveFloat,
    PositiveInt,
    Section,
)
from petscan.params.inputs import Backbone


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


class OptimizerParams(OpenSection):
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
    # holdout: one head, early stopping on val | cv: one head per patient fold of train + val
    # (`data.folds`), out-of-fold metrics, the fold ensemble saved as the model
    protocol: Literal["holdout", "cv"] = "holdout"
    folds: Annotated[Int, Field(ge=2)] = 5


class PrunerParams(OpenSection):
    """`name`, and keyword arguments of that Optuna pruner (checked when it is built)."""

    name: Literal["median", "hyperband", "none"] = "median"


# The study-wide scalars of `evaluation.metrics.point_metrics` a study can optimize (a test
# keeps this in step with the metrics); the losses are not comparable across trials.
OBJECTIVES = frozenset(
    {
        "accuracy",
        "average_precision_macro",
        "balanced_accuracy",
        "brier",
        "ece",
        "f1_macro",
        "f1_weighted",
        "log_loss",
        "precision_macro",
        "recall_macro",
        "roc_auc_macro",
    }
)
MINIMIZED = frozenset({"log_loss", "brier", "ece"})


class TuneParams(Section):
    study_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "petscan-head"
    n_trials: NonNegInt = 50
    timeout_s: PositiveFloat | None = None
    seed: Int = 101
    objective: str = "roc_auc_macro"  # one of OBJECTIVES
    cv_folds: NonNegInt = 0
    n_startup_trials: NonNegInt = 10
    pruner: PrunerParams = Field(
        default_factory=lambda: PrunerParams(name="median", n_startup_trials=5, n_warmup_steps=10)
    )
    storage: str | None = None
    max_failures: PositiveInt = 5
    # a database server's storage: a worker silent for grace_period_s (a lost machine) has
    # its trial failed by a live worker and retried up to max_retry times
    heartbeat_interval_s: PositiveInt = 60
    grace_period_s: PositiveInt = 180
    max_retry: NonNegInt = 3
    out_dir: str = "tune"
    space: dict[str, Any] = Field(default_factory=dict)  # checked after the sections

    @field_validator("cv_folds")
    @classmethod
    def _not_one_fold(cls, value: int) -> int:
        if value == 1:
            raise ValueError("0 (hold-out val) or k >= 2 folds")
        return value

    @field_validator("objective")
    @classmethod
    def _a_comparable_metric(cls, value: str) -> str:
        if value in ("loss", "val_loss"):
            raise ValueError(
                f"{value!r} is the training loss, which is not comparable across focal losses"
                " with different gamma/alpha; use roc_auc_macro, f1_macro, balanced_accuracy"
                " or log_loss"
            )
        if value not in OBJECTIVES:
            raise ValueError(f"unknown metric {value!r}; choose one of {sorted(OBJECTIVES)}")
        return value

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """`minimize` for log_loss, brier and ece; `maximize` for the others."""
        return "minimize" if self.objective in MINIMIZED else "maximize"


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
