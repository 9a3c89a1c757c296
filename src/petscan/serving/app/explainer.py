"""What the web page serves: a registered model with its provenance, and batched Grad-CAM.

`load_served_model` reads a model from the project's MLflow store and records which
version and run it is and whether its backbone was random-init (the run's `random_init`
tag). `Batcher` runs every upload through one model thread: uploads arriving together
are explained as one Grad-CAM batch (`evaluation.gradcam.explain_images`), which is what
keeps the latency down when several researchers (or several files) come at once.
`overlay_jpeg` draws the answer's picture.
"""

from __future__ import annotations

import base64
import io
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import mlflow
import numpy as np
from PIL import Image

from petscan.data.images import ImageRules, resize
from petscan.evaluation.gradcam import explain_images
from petscan.evaluation.overlay import overlay
from petscan.serving.loading import load_petscan_model

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")
NOTICE = "Research use only: not a medical device."


@dataclass
class ServedModel:
    """A Keras image classifier and where it came from."""

    keras_model: Any
    class_names: list[str]
    model_config: dict[str, Any]  # the logged model config: input_size, resize, backbone, ...
    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    random_init: bool | None = None  # None: the run does not say
    weights_label: str | None = None
    max_pixels: int | None = None
    rules: ImageRules = field(default_factory=ImageRules)  # which uploads are accepted

    def info(self) -> dict[str, Any]:
        """What the page shows about the model (and writes into every CSV row)."""
        return {
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "random_init": self.random_init,
            "weights_label": self.weights_label,
            "classes": self.class_names,
        }


def load_served_model(
    uri: str, max_pixels: int | None = None, rules: ImageRules | None = None
) -> ServedModel:
    """The pyfunc model at `uri` (MLflow store already selected) with its version and run.

    Uploads are judged by `rules` (split's image rules from params), else by the rules
    logged with the model; `max_pixels`, when given, replaces the pixel limit.
    """
    pyfunc, inner = load_petscan_model(uri)
    rules = inner.rules if rules is None else rules
    if max_pixels is not None:
        rules = replace(rules, max_pixels=max_pixels)
    served = ServedModel(
        keras_model=inner.keras_model,
        class_names=list(inner.class_names),
        model_config=dict(inner.config),
        uri=uri,
        run_id=pyfunc.metadata.run_id,
        max_pixels=rules.max_pixels,
        rules=rules,
    )
    client = mlflow.MlflowClient()
    match = MODEL_URI.match(uri)
    if match:
        served.name = match["name"]
        version = (
            client.get_model_version(match["name"], match["version"])
            if match["version"]
            else client.get_model_version_by_alias(match["name"], match["alias"])
        )
        served.version, served.run_id = str(version.version), version.run_id or served.run_id
    if served.run_id:
        tags = client.get_run(served.run_id).data.tags
        if "random_init" in tags:
            served.random_init = tags["random_init"] == "true"
        served.weights_label = tags.get("weights_label")
    return served


# --------------------------------------------------------------------------- batching


@dataclass
class _Job:
    image: np.ndarray
    future: Future = field(default_factory=Future)
    timings: dict[str, float] | None = None  # filled in milliseconds, if given
    submitted: float = field(default_factory=time.perf_counter)


class Batcher:
    """One thread that owns the model: jobs that arrive within `wait_s` of each other (up to
    `max_batch`) are explained together. `submit` returns a Future of an `Explanation`."""

    def __init__(self, served: ServedModel, max_batch: int = 8, wait_s: float = 0.02):
        self.served = served
        self.max_batch = max(1, int(max_batch))
        self.wait_s = float(wait_s)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="petscan-model", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, timings: dict[str, float] | None = None) -> Future:
        """A Future of the image's `Explanation`. `timings`, if given, gets (milliseconds)
        `queue_wait_ms` (from here to its batch's start), then its batch's `batch_size`,
        `resize_ms`, `model_ms` (backbone and Grad-CAM gradients) and `heatmap_ms`."""
        job = _Job(image, timings=timings)
        self._jobs.put(job)
        return job.future

    def warm_up(self) -> None:
        """Explain blank images in one batch of each size 1 .. max_batch (in this thread)."""
        blank = np.full((64, 64, 3), 255, np.uint8)
        for size in range(1, self.max_batch + 1):
            jobs = [_Job(blank) for _ in range(size)]
            self._explain(jobs)
            for job in jobs:
                job.future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            jobs, stop = self._next_batch()
            if jobs:
                self._explain(jobs)
            # nothing of this batch (its images, its heatmaps) is held while the next is awaited
            del jobs
            if stop:
                return

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """The jobs that arrive within `wait_s` of each other, and whether to stop after."""
        first = self._jobs.get()
        if first is None:
            return [], True
        jobs = [first]
        while len(jobs) < self.max_batch:
            try:
                job = self._jobs.get(timeout=self.wait_s)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _explain(self, jobs: list[_Job]) -> None:
        started, spent = time.perf_counter(), {}
        try:
            explanations = explain_images(
                self.served.keras_model,
                [job.image for job in jobs],
                self.served.model_config["resize"],
                batch_size=self.max_batch,
                timings=spent,
            )
        except Exception as err:  # handed to each waiting request, which reports it
            for job in jobs:
                job.future.set_exception(err)
            return
        batch = {f"{name.removesuffix('_s')}_ms": 1000 * value for name, value in spent.items()}
        for job, explanation in zip(jobs, explanations, strict=True):
            if job.timings is not None:
                job.timings["queue_wait_ms"] = 1000 * (started - job.submitted)
                job.timings.update(batch_size=len(jobs), **batch)
            job.future.set_result(explanation)


# --------------------------------------------------------------------------- the picture


def overlay_jpeg(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    max_side: int,
    quality: int = 88,
    timings: dict[str, float] | None = None,
) -> str:
    """The Grad-CAM overlay as a `data:image/jpeg;base64,...` URL, at most `max_side` a side.

    `timings`, if given, gets `overlay_ms` (resizing and blending) and `jpeg_ms` (encoding)."""
    started = time.perf_counter()
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        rgb = resize(rgb, size)
        heat = Image.fromarray(heatmap.astype(np.float32))  # mode F
        heatmap = np.asarray(heat.resize(size[::-1], Image.Resampling.BILINEAR))
    picture = Image.fromarray(overlay(rgb, heatmap))
    drawn = time.perf_counter()
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    if timings is not None:
        timings["overlay_ms"] = 1000 * (drawn - started)
        timings["jpeg_ms"] = 1000 * (time.perf_counter() - drawn)
    return url
