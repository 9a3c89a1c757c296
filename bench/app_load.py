"""Load test of the web page's API (`petscan app`) on 127.0.0.1: latency, throughput, memory.

By default it builds the real network of params.yaml `model` (InceptionResNetV2 at
224 x 224) with a RANDOM-INIT backbone (the numbers are about speed, not about what the
model says), registers it in a temporary MLflow store, starts `petscan app` on a free
127.0.0.1 port and sends it a 512 x 512 PNG:

1. warm-up: `--clients` concurrent clients for `--warmup` seconds (the server meets the
   load's batch sizes once before its memory is measured);
2. one client: `--single` requests one after another (the round trip of one image:
   upload, decode, prediction, Grad-CAM heatmap, overlay, answer);
3. load: `--clients` concurrent clients for `--seconds` seconds, then it stops.

It prints requests/s, p50/p95 latency, the count of 5xx answers, the server's RSS after
the warm-up and after the load, and (`server_ms`) p50/p95 of each stage the server timed:
waiting for a slot, the upload, the pixel budget, decoding, the queue before a batch, the
batch size, the model (backbone forward pass and Grad-CAM gradients, one graph per batch),
the heatmaps on the image grid, the overlay, the JPEG encoding and the server's total.
`--model-uri` uses a registered model of the project's store instead. Everything temporary
is removed at the end. Example:

    python bench/app_load.py --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from PIL import Image

from petscan.params.loading import load_params, load_sections, stage_parser

if TYPE_CHECKING:
    from petscan.params.loading import StageParams

SECTIONS = ("model", "data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="warm-up seconds")
    parser.add_argument("--single", type=int, default=20, help="one-client requests to time")
    parser.add_argument("--size", type=int, default=512, help="the test image's side, pixels")
    parser.add_argument("--model-uri", help="a registered model of the project's store")
    parser.add_argument("--max-requests", type=int, default=100_000, help="hard cap on load")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image(size: int, seed: int = 0) -> bytes:
    """An inverted-grey PNG with a few bright blobs, roughly like a PET projection."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    picture = np.zeros((size, size))
    for _ in range(12):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.95), rng.uniform(0.01, 0.08)
        picture += rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
    picture = 255 - np.clip(picture / picture.max() * 255, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(picture.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def register_random_init_model(root: Path, params: StageParams) -> str:
    """Build the configured network with a random-init backbone and register it under root."""
    from petscan.model.network import build_full_model
    from petscan.params.schema import section
    from petscan.tracking.model_logging import log_keras_model
    from petscan.tracking.runs import start_training_run

    os.environ["PETSCAN_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    class_names = params.data.class_names
    model = build_full_model(params.model, len(class_names), None)
    model.save(root / "model.keras")
    mlflow_params = section("mlflow", {"experiment": "bench", "registered_model": "pet-bench"})
    tags = {"random_init": "true", "weights_label": "RANDOM-INIT backbone (not RadImageNet)"}
    with start_training_run(mlflow_params, {}, tags):
        log_keras_model(root / "model.keras", mlflow_params, class_names, params.model)
    (root / "model.keras").unlink()
    return "models:/pet-bench/1"


def write_params(root: Path, source: str) -> Path:
    """The project's params.yaml with the store at `root` (for the app subprocess)."""
    params = load_params(source)
    params.setdefault("mlflow", {})["tracking_uri"] = None
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def start_app(root: Path, params_path: Path, uri: str, env: dict) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = (root / "app.log").open("w")
    cmd = [sys.executable, "-m", "petscan.cli", "app", "--params", str(params_path),
           "--model", uri, "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=5) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"petscan app did not start:\n{(root / 'app.log').read_text()}")
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def one_request(url: str, body: bytes) -> tuple[int, float, dict | None]:
    """(HTTP status, seconds, the server's `timings_ms` of a 200 answer or None)."""
    request = urllib.request.Request(
        f"{url}/api/predict?name=bench.png",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    start = time.perf_counter()
    timings = None
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = reply.read()
            status = reply.status
        timings = json.loads(answer).get("timings_ms")
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, ValueError):
        status = 0  # no (readable) answer at all
    return status, time.perf_counter() - start, timings


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def load(url: str, body: bytes, clients: int, seconds: float, cap: int) -> dict:
    """`clients` threads posting back to back until `seconds` have passed (or `cap` sent)."""
    results: list[tuple[int, float, dict | None]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        while time.monotonic() < deadline:
            with lock:
                if len(results) >= cap:
                    return
            outcome = one_request(url, body)
            with lock:
                results.append(outcome)

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    return summarise(results, elapsed)


def summarise(results: list[tuple[int, float, dict | None]], elapsed: float) -> dict:
    latencies = np.array([r[1] for r in results])
    statuses = [r[0] for r in results]
    return {
        "requests": len(results),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(results) / elapsed, 3) if elapsed else None,
        "p50_s": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
        "p95_s": round(float(np.percentile(latencies, 95)), 3) if len(latencies) else None,
        "ok": statuses.count(200),
        "5xx": sum(1 for s in statuses if s >= 500),
        "no_answer": statuses.count(0),
        "server_ms": stage_percentiles([r[2] for r in results if r[2]]),
    }


def stage_percentiles(timings: list[dict]) -> dict:
    """Per stage of the server's `timings_ms` (queue wait, backbone, Grad-CAM, JPEG, ...):
    p50 and p95 over the answers, in ms. `model` is the backbone's forward pass and the
    Grad-CAM gradients of the whole batch (one graph); `heatmap`, `resize` also per batch."""
    stages = sorted({name for t in timings for name in t})
    out = {}
    for name in stages:
        values = np.array([t[name] for t in timings if name in t], dtype=float)
        out[name.removesuffix("_ms")] = {
            "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    body = test_image(args.size)
    with tempfile.TemporaryDirectory(prefix="petscan-bench-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        # the app runs the same petscan code as this script (a checkout's src/ included)
        import petscan

        package_parent = str(Path(petscan.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        if args.model_uri:
            uri, params_path = args.model_uri, Path(args.params).resolve()
            label = args.model_uri
        else:
            print(f"building {params.model.backbone} (RANDOM-INIT backbone) ...", flush=True)
            uri = register_random_init_model(root, params)
            params_path = write_params(root, args.params)
            env["PETSCAN_ROOT"] = str(root)
            env.pop("MLFLOW_TRACKING_URI", None)
            label = f"{params.model.backbone}, RANDOM-INIT backbone (not RadImageNet)"
        proc, url = start_app(root, params_path, uri, env)
        try:
            warm = load(url, body, args.clients, args.warmup, args.max_requests)
            rss_warm = rss_mib(proc.pid)
            start = time.monotonic()
            single = summarise(
                [one_request(url, body) for _ in range(args.single)], time.monotonic() - start
            )
            loaded = load(url, body, args.clients, args.seconds, args.max_requests)
            rss_after = rss_mib(proc.pid)
        finally:
            stop(proc)
    report = {
        "model": label,
        "image": f"{args.size} x {args.size} PNG, {len(body)} bytes",
        "cpus": os.cpu_count(),
        "warmup_5xx": warm["5xx"],
        "one_client": single,
        f"{args.clients}_clients_{args.seconds:g}_s": loaded,
        "rss_mib_after_warmup": round(rss_warm, 1),
        "rss_mib_after_load": round(rss_after, 1),
        "rss_change_pct": round(100 * (rss_after - rss_warm) / rss_warm, 2),
    }
    print(json.dumps(report, indent=2))
    ok = loaded["5xx"] == 0 and loaded["no_answer"] == 0 and abs(report["rss_change_pct"]) <= 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
