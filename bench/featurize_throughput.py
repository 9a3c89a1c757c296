"""How close `featurize` from image files gets to the backbone's own speed, and its memory.

In one run on one machine, each measurement in a fresh child process:

1. raw backbone throughput: `model.predict` on N in-memory images (the ceiling);
2. `featurize` throughput: the same N images decoded from files on disk through the
   tf.data pipeline, features streamed to a memory-mapped `.npy`;
3. their ratio (target >= 0.9 on 2 CPU cores), and the peak resident memory (RSS
   high-water, `getrusage`) of the featurize child, for each `--scales` multiple of the
   file list (scale 2 lists every file twice: a set twice as large, so flat memory
   shows as equal peaks);
4. the time from the last batch to the end of each featurize run (wall time minus the
   time the batches took): well under a second, unless the iterator stalls at its end.

The backbone is the one of `model` in --params, randomly initialised (speed does not
depend on the weight values). Example:

    python bench/featurize_throughput.py --data-dir data/raw --images 256 --scales 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from petscan.data.folders import list_images  # noqa: E402
from petscan.params.loading import PARAMS_FILE, load_sections  # noqa: E402

if TYPE_CHECKING:
    from petscan.params.learning import FeaturizeParams, ModelParams

SECTIONS = ("model", "featurize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument(
        "--images", type=int, default=0, help="images to use (0: all in the folder)"
    )
    parser.add_argument(
        "--scales", type=int, nargs="+", default=[1], help="featurize the list repeated k times"
    )
    parser.add_argument(
        "--augment-views", type=int, default=0, help="augmented views per image in featurize (0)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats; the best counts")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: featurize.batch_size"
    )
    parser.add_argument("--child", choices=["raw", "featurize"], help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _files(args: argparse.Namespace) -> list[str]:
    files = [str(p.resolve()) for p in list_images(args.data_dir)]
    if not files:
        raise SystemExit(f"no images under {args.data_dir}: pass --data-dir with image files")
    return files[: args.images] if args.images else files


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(args: argparse.Namespace) -> tuple[ModelParams, FeaturizeParams, int, Any]:
    from petscan.model.network import build_feature_extractor

    params = load_sections(SECTIONS, args.params)
    batch = args.batch_size or params.featurize.batch_size
    extractor = build_feature_extractor(params.model, weights_path=None)
    return params.model, params.featurize, batch, extractor


def child_raw(args: argparse.Namespace) -> dict[str, Any]:
    """`model.predict` on in-memory tensors: the backbone alone."""
    import numpy as np

    model, _, batch, extractor = _setup(args)
    n = len(_files(args))
    height, width = model.input_size
    x = np.random.default_rng(0).uniform(0, 255, (n, height, width, 3)).astype("float32")
    for size in {batch, n % batch} - {0}:  # warm-up: trace and compile both batch shapes
        extractor.predict(x[:size], batch_size=batch, verbose=0)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        extractor.predict(x, batch_size=batch, verbose=0)
        times.append(time.perf_counter() - start)
    return {"images": n, "seconds": min(times), "per_s": n / min(times), "all_s": times}


def child_featurize(args: argparse.Namespace) -> dict[str, Any]:
    """`featurize_split` from files on disk into a memory-mapped `.npy`."""
    import numpy as np
    import pandas as pd

    from petscan.data.features import featurize_split
    from petscan.data.tf_data import build_augmenter, images_per_batch

    model, featurize, batch, extractor = _setup(args)
    files = _files(args) * args.scale
    views = 1 + args.augment_views
    per_batch = images_per_batch(batch, views)
    height, width = model.input_size
    for size in {per_batch * views, (len(files) % per_batch) * views} - {0}:
        extractor.predict_on_batch(np.zeros((size, height, width, 3), "float32"))  # warm-up
    rss_ready = _peak_rss_mb()
    frame = pd.DataFrame({"path": files, "label": 0})
    times, tails = [], []
    with tempfile.TemporaryDirectory(prefix="featurize-bench-") as tmp:
        for _ in range(args.repeats):
            augmenter = (
                build_augmenter(featurize.augmentation, featurize.seed)
                if args.augment_views
                else None
            )
            result = featurize_split(
                extractor, frame, Path(tmp) / "bench.npy", model, batch, args.augment_views,
                augmenter, root="/", desc=f"featurize x{args.scale}",
            )  # fmt: skip
            times.append(result["seconds"])
            tails.append(result["tail_seconds"])
    n = len(files)
    return {
        "images": n,
        "views": views,
        "seconds": min(times),
        "per_s": n * views / min(times),
        "all_s": times,
        "tail_s": tails,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_warmup_mb": rss_ready,
    }


def _run_child(args: argparse.Namespace, mode: str, scale: int = 1) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", mode, "--scale", str(scale)]
    argv += ["--data-dir", args.data_dir, "--params", args.params, "--images", str(args.images)]
    argv += ["--augment-views", str(args.augment_views), "--repeats", str(args.repeats)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} child failed (exit {out.returncode}); see its output above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _seconds(times: list[float]) -> str:
    return ", ".join(f"{t:.2f} s" for t in times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        fn = child_raw if args.child == "raw" else child_featurize
        print(json.dumps(fn(args)))
        return 0
    model = load_sections(SECTIONS, args.params).model
    n = len(_files(args))
    print(
        f"backbone {model.backbone} {model.input_size} (random init), {n} images, "
        f"{os.cpu_count()} CPUs, best of {args.repeats}"
    )
    raw = _run_child(args, "raw")
    print(
        f"raw backbone (model.predict, in memory): {raw['per_s']:8.2f} images/s "
        f"(runs: {_seconds(raw['all_s'])})"
    )
    for scale in args.scales:
        feat = _run_child(args, "featurize", scale)
        views = f" ({feat['views']} views each)" if feat["views"] > 1 else ""
        print(
            f"featurize from files x{scale} ({feat['images']} files{views}): "
            f"{feat['per_s']:8.2f} backbone inputs/s, "
            f"ratio {feat['per_s'] / raw['per_s']:.3f} (target >= 0.9), "
            f"peak RSS {feat['peak_rss_mb']:.0f} MiB "
            f"(after model build and warm-up {feat['rss_after_warmup_mb']:.0f} MiB); "
            f"runs: {_seconds(feat['all_s'])}; from the last batch to the end of each run "
            f'(the "55-second wait" showed here): {_seconds(feat["tail_s"])}'
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
