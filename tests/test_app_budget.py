"""The web page's pixel budget: uploads that decode to many pixels (a 47 KB PNG can be
7000 x 7000) are held to `app.max_pixels_in_flight` decoded pixels at once, across requests;
more waits, then gets 503, and an image that could never fit gets 413 before decoding."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from test_app import MODEL_NAME, SETTINGS, free_port, post, repo  # noqa: F401 (repo: a fixture)

from petscan.params.schema import section
from petscan.serving.app.budget import BudgetRefused, PixelBudget, header_size
from petscan.tracking import store

SIDE = 400  # the uploads: SIDE x SIDE pixels
BUDGET = int(2.5 * SIDE * SIDE)  # room for two at once
MAX_PIXELS = 2_000_000  # split.max_pixels for this server: above the budget


def png(width: int, height: int, value: int = 90) -> bytes:
    """A grey PNG around `value` with one darker row (a blank image is refused by split's
    rules, which the web page applies too); it compresses as well as a plain one."""
    image = Image.new("L", (width, height), value)
    image.paste(max(0, value - 30), (0, height // 2, width, height // 2 + 1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the budget


def test_the_header_gives_the_size_without_decoding():
    data = png(7000, 7000)
    assert len(data) < 100_000  # small on the wire, 49 million pixels decoded
    assert header_size(data) == (7000, 7000)
    assert header_size(b"not an image") is None and header_size(b"") is None


def test_the_budget_waits_refuses_when_busy_and_refuses_what_never_fits():
    async def scenario() -> list:
        budget = PixelBudget(100, wait_s=0.05)
        events = []
        with pytest.raises(BudgetRefused) as never:
            async with budget.reserve(101, "101 pixels"):
                pass
        events.append((never.value.status, never.value.message))
        async with budget.reserve(60, "60"):
            with pytest.raises(BudgetRefused) as busy:
                async with budget.reserve(50, "50"):
                    pass
            events.append(busy.value.status)
            async with budget.reserve(40, "40"):  # fits beside the 60
                events.append(budget.in_use)
        budget.wait_s = 5.0

        async def hold(pixels: int, seconds: float):
            async with budget.reserve(pixels, ""):
                await asyncio.sleep(seconds)

        holder = asyncio.create_task(hold(90, 0.1))
        await asyncio.sleep(0.01)
        async with budget.reserve(50, "50"):  # waits for the holder, then gets in
            events.append((holder.done(), budget.in_use))
        events.append((budget.in_use, budget.peak))
        return events

    assert asyncio.run(scenario()) == [
        (
            413,
            "too large for this server: 101 pixels, more than it decodes at once "
            "(app.max_pixels_in_flight = 100)",
        ),
        503,
        100,
        (True, 50),
        (0, 100),
    ]


# --------------------------------------------------------------------------- in the app


class DecodeMeter:
    """Wraps the app's decoder: the pixels of the images being decoded or still alive (the
    decoded arrays are tracked until they are garbage), and the most at once."""

    def __init__(self, decode):
        self.decode = decode
        self.lock = threading.Lock()
        self.alive = self.most = self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def _add(self, pixels: int) -> None:
        with self.lock:
            self.alive += pixels
            self.most = max(self.most, self.alive)

    def __call__(self, data, name, max_pixels):
        # arrays of finished requests that only wait for the cyclic garbage collector are
        # not held by anyone: collect them first, so `alive` does not depend on GC timing
        gc.collect()
        size = header_size(data)
        pixels = size[0] * size[1] if size else 0
        self._add(pixels)
        self.calls += 1
        try:
            rgb = self.decode(data, name, max_pixels)
        except Exception:
            self._add(-pixels)
            raise
        self.gate.wait(30)
        weakref.finalize(rgb, self._add, -pixels)
        return rgb


@pytest.fixture(scope="module")
def budget_app(repo):  # noqa: F811 (the fixture imported from test_app)
    """The app on a real uvicorn server with a budget of 2.5 uploads and a metered decoder."""
    import uvicorn

    import petscan.serving.app.server as app_module
    from petscan.serving.app.explainer import load_served_model
    from petscan.serving.app.server import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETSCAN_ROOT", str(repo["root"]))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.use_store(section("mlflow"))
        served = load_served_model(f"models:/{MODEL_NAME}/1", max_pixels=MAX_PIXELS)
        meter = DecodeMeter(app_module.decode_upload)
        mp.setattr(app_module, "decode_upload", meter)
        settings = {**SETTINGS, "max_upload_mb": 1, "max_pixels_in_flight": BUDGET}
        app = create_app(served, section("app", {**settings, "busy_wait_s": 60}))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
            time.sleep(0.1)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "meter": meter,
            "budget": app.state.budget,
            "served": served,
        }
        server.should_exit = True
        thread.join(timeout=30)


def upload(url: str, body: bytes, name: str) -> tuple[int, dict]:
    return post(f"{url}/api/predict?name={urllib.parse.quote(name)}", body)


def test_parallel_large_uploads_never_hold_more_decoded_pixels_than_the_budget(budget_app):
    url, meter, budget = budget_app["url"], budget_app["meter"], budget_app["budget"]
    bodies = [png(SIDE, SIDE, 40 + 20 * i) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda i: upload(url, bodies[i], f"scan{i}.png"), range(8)))
    assert [status for status, _ in replies] == [200] * 8, replies
    assert [r["width"] for _, r in replies] == [SIDE] * 8
    assert SIDE * SIDE <= meter.most <= BUDGET  # measured on the decoder, not by timing
    assert budget.peak <= BUDGET and budget.in_use == 0


def test_an_image_that_could_never_fit_is_refused_before_it_is_decoded(budget_app):
    url, meter = budget_app["url"], budget_app["meter"]
    with urllib.request.urlopen(f"{url}/api/info") as reply:  # the limit the page shows
        assert json.loads(reply.read())["max_pixels"] == BUDGET < MAX_PIXELS
    calls = meter.calls
    status, result = upload(url, png(1000, 1000), "big.png")  # under split.max_pixels
    assert (status, result) == (
        413,
        {
            "file": "big.png",
            "error": "too large for this server: 1000 x 1000 pixels, more than it decodes at "
            f"once (app.max_pixels_in_flight = {BUDGET})",
        },
    )
    assert meter.calls == calls  # never decoded


def test_an_upload_that_finds_no_room_in_time_gets_503_busy(budget_app):
    url, meter, budget = budget_app["url"], budget_app["meter"], budget_app["budget"]
    meter.gate.clear()  # the next decodes hold their pixels until the gate opens
    budget.wait_s = 0.2
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            holders = [pool.submit(upload, url, png(SIDE, SIDE), f"held{i}.png") for i in (1, 2)]
            deadline = time.monotonic() + 30
            while budget.in_use < 2 * SIDE * SIDE and time.monotonic() < deadline:
                time.sleep(0.02)
            status, result = upload(url, png(SIDE, SIDE), "third.png")
            meter.gate.set()
            held = [h.result(timeout=60) for h in holders]
    finally:
        meter.gate.set()
        budget.wait_s = 60
    assert status == 503 and result["file"] == "third.png"
    assert result["error"] == (
        "busy: other large images are being analysed; try again in a minute "
        f"(app.max_pixels_in_flight = {BUDGET})"
    )
    assert [s for s, _ in held] == [200, 200]
    assert meter.most <= BUDGET and budget.in_use == 0


def test_a_model_answering_nan_gets_a_clear_422_never_nan_in_the_json(budget_app):
    import keras

    from petscan.serving.pyfunc import NOT_FINITE

    served = budget_app["served"]
    model = served.keras_model
    broken = keras.models.clone_model(model)
    broken.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    served.keras_model = broken  # the batcher reads it for every batch
    try:
        url = f"{budget_app['url']}/api/predict?name=scan.png"
        request = urllib.request.Request(url, data=png(64, 64))
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=120)
        text = answer.value.read().decode()
    finally:
        served.keras_model = model

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    assert answer.value.code == 422
    assert json.loads(text, parse_constant=refuse) == {"file": "scan.png", "error": NOT_FINITE}
