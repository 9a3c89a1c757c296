"""`petscan app`: a web page where a researcher drops PET images and sees why.

For each image: the class probabilities, the predicted class, the Grad-CAM overlay of
that class, and the model version and MLflow run that answered; the results download as
CSV. The page is plain HTML, CSS and JavaScript shipped in this package (`static/`), so it
works with no internet. Served with FastAPI and uvicorn on `app.host` (127.0.0.1).

API (what the page uses):
- `GET /api/info`: the model (URI, name, version, run, random-init), classes, limits.
- `POST /api/predict?name=<file name>`: the body is the bytes of one image file.
  200: probabilities, predicted class, overlay (a JPEG data URL), model, notices, and
  `timings_ms`: where the server spent the request's time (slot_wait, upload, budget_wait,
  decode, queue_wait, then its batch's batch_size, resize, model, heatmap; overlay, jpeg,
  total).
  A bad upload gets a JSON `{"error": ...}`: 400 empty, corrupt or refused by split's image
  rules (`images.read_image`: too small, too elongated, blank, all NaN), 413 over
  `app.max_upload_mb`, `split.max_pixels` or `app.max_pixels_in_flight`, 415 not an image,
  422 the model gave a probability that is not a finite number (never NaN in the JSON),
  503 busy (the decoded pixels of all requests at once are capped: `app/budget.py`). Uploads
  are decoded in memory; nothing is written to disk.

The model is `--model`, else `serve.model`, else the latest version of
`mlflow.registered_model`, read from the project's MLflow store.
Research use only: not a medical device.
"""

import asyncio
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petscan.data.images import ImageError, ImageRules, read_image
from petscan.handoff.records import banner
from petscan.params.loading import load_sections, stage_parser
from petscan.serving import listen
from petscan.utils.errors import UserError, reports_user_errors

if TYPE_CHECKING:
    from petscan.params.results import AppParams
    from petscan.serving.app.explainer import ServedModel

# FastAPI, TensorFlow (through app.explainer) and MLflow are imported in the functions that
# use them, not here: `petscan app --help` then answers in about 1 s instead of 16 s (2 cores).
# No `from __future__ import annotations`: FastAPI reads the routes' annotations (`Request`).

SECTIONS = (
    "app",
    "serve.model",
    "split.max_pixels",
    "split.min_side",
    "split.max_aspect",
    "mlflow",
)
STATIC = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


class UploadError(Exception):
    """A bad upload: the HTTP status and the one-line message the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(reason: str) -> int:
    """413 for too large, 415 for not an image, 400 for the rest (empty, corrupt, ...)."""
    if reason.startswith("too large"):
        return 413
    if reason.startswith("not an image"):
        return 415
    return 400


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    too_large = UploadError(413, f"larger than the upload limit of {limit / 2**20:g} MB")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def decode_upload(data: bytes, name: str, rules: ImageRules):
    """RGB uint8 of an upload that split's image rules accept, or `UploadError` with the
    reason (no path, no traceback)."""
    try:
        return read_image(data, rules, name)[0]
    except ImageError as err:
        raise UploadError(status_for(err.reason), err.reason) from err


def create_app(served: "ServedModel", settings: "AppParams", warm_up: bool = True):
    """The FastAPI app for a loaded `ServedModel`; `settings` is the params `app` section.

    `warm_up` first explains blank images in batches of every size up to `app.max_batch`, so
    no upload waits for TensorFlow to build its graph or its kernels for a new batch size
    (and the server's memory after start-up is what it will use under load).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    from petscan.serving.app.budget import (
        LARGE_PIXELS,
        BudgetRefused,
        PixelBudget,
        header_size,
        release_memory,
    )
    from petscan.serving.app.explainer import NOTICE, Batcher, overlay_jpeg
    from petscan.serving.pyfunc import NOT_FINITE

    limit = int(settings.max_upload_mb * 2**20)
    max_side = settings.overlay_max_side
    batcher = Batcher(served, settings.max_batch, settings.batch_wait_ms / 1000)
    if warm_up:
        batcher.warm_up()
    model_info = served.info()
    in_flight = asyncio.Semaphore(2 * batcher.max_batch)
    budget = PixelBudget(settings.max_pixels_in_flight, settings.busy_wait_s)

    app = FastAPI(title="petscan", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.budget = budget
    app.router.add_event_handler("shutdown", batcher.close)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info():
        return {
            "model": model_info,
            "notice": NOTICE,
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": min(served.max_pixels or budget.total, budget.total),  # per image
        }

    @app.post("/api/predict")
    async def predict(request: Request, name: str = "upload"):
        name = Path(name).name[:200] or "upload"  # a label only; never used as a path
        started = time.perf_counter()
        async with in_flight:  # bounds the upload bodies held in memory at once
            admitted = time.perf_counter()
            try:
                data = await read_body(request, limit)
                size = header_size(data)
                pixels = size[0] * size[1] if size else 0
                if served.max_pixels is not None and pixels > served.max_pixels:
                    pixels = 0  # refused by the decoder's own check, before any decoding
                quoted = f"{size[0]} x {size[1]} pixels" if size else ""
                read = time.perf_counter()
                timings = {
                    "slot_wait_ms": 1000 * (admitted - started),
                    "upload_ms": 1000 * (read - admitted),
                }
                async with budget.reserve(pixels, quoted):
                    timings["budget_wait_ms"] = 1000 * (time.perf_counter() - read)
                    result = await analyse(data, name, timings)
            except (UploadError, BudgetRefused) as err:
                headers = {"Retry-After": "60"} if err.status == 503 else None
                content = {"file": name, "error": err.message}
                return JSONResponse(content, status_code=err.status, headers=headers)
        if pixels >= LARGE_PIXELS:  # its arrays are gone: give the pages back to the system
            await run_in_threadpool(release_memory)
        timings["total_ms"] = 1000 * (time.perf_counter() - started)
        result["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
        return result

    async def analyse(data: bytes, name: str, timings: dict[str, float]) -> dict[str, Any]:
        """Decode, explain and draw one upload (inside its share of the pixel budget);
        `timings` gets the milliseconds of each step (see `Batcher.submit`)."""
        decode_start = time.perf_counter()
        rgb = await run_in_threadpool(decode_upload, data, name, served.rules)
        timings["decode_ms"] = 1000 * (time.perf_counter() - decode_start)
        explanation = await asyncio.wrap_future(batcher.submit(rgb, timings))
        proba = [float(p) for p in explanation.probabilities]
        if not all(math.isfinite(p) for p in proba):  # JSON has no NaN: a clear 422 instead
            raise UploadError(422, NOT_FINITE)
        picture = await run_in_threadpool(
            overlay_jpeg, rgb, explanation.heatmap, max_side, timings=timings
        )
        predicted = served.class_names[proba.index(max(proba))]
        return {
            "file": name,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "probabilities": dict(zip(served.class_names, proba, strict=True)),
            "predicted_class": predicted,
            "explained_class": served.class_names[explanation.class_index],
            "peak": [int(v) for v in explanation.peak],
            "overlay": picture,
            "model": model_info,
            "notice": NOTICE,
        }

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("petscan app: unexpected error on %s", request.url.path)
        message = f"internal error ({type(err).__name__}); see the server's log"
        return JSONResponse({"error": message}, status_code=500)

    return app


def build_parser():
    parser = stage_parser(__doc__, prog="petscan app")
    parser.add_argument("--model", help="MLflow model URI, e.g. models:/pet-classifier@champion")
    parser.add_argument("--host", help="address to listen on (default app.host)")
    parser.add_argument("--port", type=int, help="port (default app.port)")
    return parser


@reports_user_errors("petscan app")
def main(argv: list[str] | None = None) -> int:
    """Exit codes: see `petscan.utils.errors` (a missing store or model: one line, exit 1)."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from petscan.serving.app.explainer import load_served_model
    from petscan.serving.loading import find_model, open_store

    params = load_sections(SECTIONS, args.params)
    settings = params.app
    host, port = args.host or settings.host, args.port or settings.port
    setting = "--host" if args.host else "app.host"
    listen.warn_if_exposed("petscan app", host, setting, "the web page (and the model)")
    open_store(params.mlflow)
    uri = find_model(args.model or params.serve.model, params.mlflow)
    try:
        served = load_served_model(uri, rules=ImageRules.from_params(params.split))
    except TypeError as err:  # load_served_model: a model that petscan did not log
        raise UserError(f"cannot serve {uri}: {err}") from None
    text = banner({"random_init": served.random_init, "weights_label": served.weights_label})
    warning = f" {text}." if text else ""

    def announce(bound: int) -> None:  # once the port answers, not before (see `listen`)
        print(
            f"petscan app: {uri} (version {served.version}, run {served.run_id}) on "
            f"http://{host}:{bound}/ (research use only: not a medical device).{warning}",
            file=sys.stderr,
            flush=True,
        )

    app = create_app(served, settings)  # the warm-up: most of the start-up time
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    listen.announce_when_listening(server, host, port, announce)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
