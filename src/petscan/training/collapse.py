"""The collapse alarm: a head that predicts one class for (nearly) every validation image,
or never beats the class prior, has learned nothing; `check_collapse` says so in plain
words after training, and `record_collapse` puts it on the MLflow run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

if TYPE_CHECKING:
    from petscan.params.learning import CollapseParams

log = logging.getLogger(__name__)


def check_collapse(
    val_proba: np.ndarray,
    train_labels: np.ndarray,
    train_accuracy: Sequence[float],
    class_names: Sequence[str],
    settings: CollapseParams,
) -> dict[str, Any]:
    """Whether the head collapsed, and the numbers that say so.

    Two signs, from `train.collapse`: one class takes at least `max_class_share` of the
    validation predictions, or the best training accuracy of any epoch stays within
    `prior_margin` of the share of the largest training class (what predicting that
    class for every image scores). `message` says it in plain words ("" when fine).
    """
    max_share = settings.max_class_share
    margin = settings.prior_margin
    predicted = np.asarray(val_proba).argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(class_names))
    top = int(counts.argmax())
    share = float(counts[top] / max(len(predicted), 1))
    prior = float(np.bincount(np.asarray(train_labels), minlength=len(class_names)).max())
    prior /= max(len(train_labels), 1)
    best_accuracy = float(np.nanmax(train_accuracy)) if len(train_accuracy) else math.nan
    single_class = share >= max_share
    at_prior = not best_accuracy > prior + margin
    reasons = []
    if single_class:
        reasons.append(
            f"the head predicts '{class_names[top]}' for {counts[top]} of {len(predicted)} "
            f"validation images ({share:.0%})"
        )
    if at_prior:
        reasons.append(
            f"its best training accuracy {best_accuracy:.3f} never left the class prior "
            f"{prior:.3f} (predicting the largest class for every image)"
        )
    message = ""
    if reasons:
        message = (
            "COLLAPSE: "
            + "; ".join(reasons)
            + ". The model has not learned to tell the classes apart: check the features' "
            "health in data/features/*.json, model.standardize and the learning rate."
        )
    return {
        "collapsed": bool(reasons),
        "val_majority_class": class_names[top],
        "val_majority_share": share,
        "train_accuracy_max": best_accuracy,
        "train_class_prior": prior,
        "message": message,
    }


def record_collapse(collapse: dict[str, Any]) -> None:
    """Into the active MLflow run: tag `collapse` and the numbers; warn in plain words when
    the head collapsed."""
    mlflow.set_tag("collapse", str(collapse["collapsed"]).lower())
    mlflow.log_metrics(
        {
            "collapse/val_majority_share": collapse["val_majority_share"],
            "collapse/train_accuracy_max": collapse["train_accuracy_max"],
            "collapse/train_class_prior": collapse["train_class_prior"],
        }
    )
    if collapse["collapsed"]:
        log.warning(collapse["message"])
