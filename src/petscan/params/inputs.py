"""Params of the inputs: the demo generator, the data folder, the split, the backbone's weights.

Sections `synthetic`, `data`, `split` and `weights`, and each backbone's own input size and
pre-processing (what `null` means for `model.input_size` / `model.preprocessing`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_serializer, field_validator

from petscan.params.fields import (
    Float,
    Fraction,
    Int,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Section,
    Sha256,
)

DEMO_PATIENT_PREFIX = "pet"  # the demo generator's patient ids: pet-00001, ...
SEED_CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}


class SyntheticVolumes(Section):
    """`petscan generate --volumes`: synthetic PET studies (DICOM, NIfTI) for `ingest`."""

    counts: dict[str, NonNegInt] = Field(
        default_factory=lambda: {"No cancer": 12, "breast cancer": 12, "prostate cancer": 12}
    )
    voxel_mm: Annotated[Float, Field(ge=2, le=30)] = 10.0  # small matrices: ~60 x 50 x 110


class SyntheticParams(Section):
    out_dir: str = "data/raw"
    seed: Int = 2024
    counts: dict[str, NonNegInt] = Field(
        default_factory=lambda: {"No cancer": 424, "breast cancer": 371, "prostate cancer": 398}
    )
    images_per_patient: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [1, 3]
    base_height: Annotated[Int, Field(gt=0, le=4096)] = 512  # larger: memory and disk only
    visible_contrast: Fraction = 0.1
    volumes: SyntheticVolumes = Field(default_factory=SyntheticVolumes)

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

    @property
    def class_names(self) -> list[str]:
        """Class names in label order: the distinct values of `classes`, first seen first."""
        return list(dict.fromkeys(self.classes.values()))


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


class IngestParams(Section):
    """The `ingest` stage: DICOM / NIfTI PET studies -> SUV MIP views in class folders.

    The pipeline starts from them when `data.raw_dir` is `out_dir` (the switch: one `-S`).
    """

    source_dir: str = "data/volumes"  # one study a sub-folder (DICOM) or a .nii / .nii.gz
    labels: str = "data/volumes/labels.csv"  # study or patient, class (+ supplied values)
    out_dir: str = "data/ingested"  # class folders of <pseudonym>_v<k>.png
    report: str = "reports/ingest/report.csv"  # one row per study: factors, times, reasons
    nifti_units: Literal["suv", "bqml"] = "suv"
    # which NIfTI file is the PET (regexes on the name without .nii.gz, tried in order):
    # autoPET's SUV.nii.gz, DEEP-PSMA's PET.nii.gz, nnU-Net's <case>_0001.nii.gz
    nifti_names: Annotated[list[str], Field(min_length=1)] = ["SUV", "PET", r".+_0001"]
    voxel_mm: Annotated[Float, Field(gt=0.5, le=20)] = 4.0
    angles: Annotated[list[Annotated[Float, Field(ge=0, lt=360)]], Field(min_length=1)] = [
        0.0,
        45.0,
        90.0,
        135.0,
    ]
    suv_window: Annotated[list[Float], Field(min_length=2, max_length=2)] = [0.0, 10.0]
    display: Literal["inverted", "plain"] = "inverted"
    max_uptake_h: PositiveFloat = 24.0  # a longer injection-to-scan time is refused
    key_env: str = "PETSCAN_PSEUDONYM_KEY"  # the pseudonym key: this environment variable,
    key_file: str | None = "~/.config/petscan/pseudonym.key"  # ... else this file (not in the repo)
    pseudonym_map: str | None = None  # pseudonym -> PatientID CSV, only when set; not in data/

    @field_validator("angles")
    @classmethod
    def _distinct_angles(cls, value: list[float]) -> list[float]:
        if len({round(a % 360.0, 6) for a in value}) != len(value):
            raise ValueError("needs distinct angles in [0, 360): 0 and 360 are the same view")
        return value

    @field_validator("nifti_names")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression ({err})") from None
        return value

    @field_validator("suv_window")
    @classmethod
    def _low_then_high(cls, value: list[float]) -> list[float]:
        if value[0] >= value[1]:
            raise ValueError("needs [low, high] SUV with low < high")
        return value
