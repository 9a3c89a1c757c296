"""The building blocks of the params schema: checked number types and the section base.

Numbers are never a bool (`epochs: true` is not 1) and floats are finite; a section refuses
unknown keys and, once validated, is frozen: the stages read it, nothing edits it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from petscan.params.messages import show


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


class Section(BaseModel):
    """A mapping of params: unknown keys are errors; frozen once validated."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True, allow_inf_nan=False, frozen=True
    )


class OpenSection(BaseModel):
    """`name` and keyword arguments checked by the library that takes them; numbers finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True)

    @model_validator(mode="after")
    def _finite_extras(self) -> OpenSection:
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
