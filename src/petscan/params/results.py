"""Params of the results: tracking, evaluation, explanation, figures and serving.

Sections `mlflow`, `evaluate`, `explain`, `plot`, `serve` and `app`.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Literal

from pydantic import Field, field_validator

from petscan.params.fields import (
    BatchSize,
    Float,
    Int,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Section,
)


class MlflowParams(Section):
    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "pet-classification"
    registered_model: str | None = "pet-classifier"
    alias: str | None = "candidate"

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        """params.yaml is committed and logged: a login in it would be shared with it."""
        if value and "@" in urllib.parse.urlsplit(value).netloc:
            raise ValueError(
                "holds a user name or password, which never go in params.yaml: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
            )
        return value


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
