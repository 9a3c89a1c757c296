"""What explaining an image costs next to predicting it (target: at most 3x on 2 CPU cores).

In one process, on the same images and the same model, measured side by side (the
methods alternate round by round, so a busy machine slows them alike):

1. in memory: `model.predict` on the decoded images (resized as `model.resize` says) vs
   `gradcam.explain_images` (resize, Grad-CAM or Grad-CAM++, heatmap on each file's own
   pixel grid);
2. from files: `predict.predict_paths` (decode, resize, predict) vs `explain.explain_files`
   (decode, explain, write an overlay PNG per image and return the index rows).

The model is `build_full_model` of `model` in --params (the real InceptionResNetV2 at
224 x 224 by default) with a RANDOM-INIT backbone and head: speed does not depend on the
weight values. The median of the rounds counts. Example:

    python bench/explain_speed.py --data-dir data/raw --images 32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from petscan.data.folders import list_images  # noqa: E402
from petscan.params.loading import PARAMS_FILE, load_sections  # noqa: E402

SECTIONS = ("model", "data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument("--images", type=int, default=32, help="images to use (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median counts")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    return parser.parse_args(argv)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from petscan.cli import explain
    from petscan.data.images import load_rgb, resize
    from petscan.evaluation import gradcam
    from petscan.model.network import build_full_model
    from petscan.serving import predict

    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    model_params = params.model
    class_names = params.data.class_names
    files = list_images(args.data_dir)[: args.images]
    if not files:
        print(f"no images under {args.data_dir}: run `petscan generate` first", file=sys.stderr)
        return 1
    model = build_full_model(model_params, len(class_names), None)  # random init
    size, mode, batch = tuple(model_params.input_size), model_params.resize, args.batch_size
    images = [load_rgb(f) for f in files]
    loaded = predict.LoadedModel(model, class_names, size, mode, "random-init")
    pairs = [(f, Path(f.name)) for f in files]
    out = tempfile.mkdtemp(prefix="explain-bench-")

    def predict_memory():
        x = np.stack([resize(img, size, mode) for img in images]).astype(np.float32)
        model.predict(x, batch_size=batch, verbose=0)

    tasks = {
        "memory: predict": predict_memory,
        "memory: gradcam": lambda: gradcam.explain_images(
            model, images, mode, "gradcam", batch_size=batch
        ),
        "memory: gradcam++": lambda: gradcam.explain_images(
            model, images, mode, "gradcam++", batch_size=batch
        ),
        "files: predict": lambda: predict.predict_paths(
            model, files, class_names, size, mode, batch_size=batch
        ),
        "files: explain (PNG)": lambda: explain.explain_files(
            loaded, pairs, out, "gradcam", batch_size=batch
        ),
    }
    for fn in tasks.values():  # warm-up: graph tracing is not what a folder of images costs
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(args.rounds):
        for name, fn in tasks.items():
            seconds[name].append(timed(fn))
    per_image = {name: statistics.median(s) / len(files) * 1000 for name, s in seconds.items()}
    print(
        f"{model_params.backbone} at {size[0]} x {size[1]}, resize {mode}, RANDOM-INIT "
        f"weights; {len(files)} images of {args.data_dir}, batch {batch}, "
        f"{os.cpu_count()} CPU cores, median of {args.rounds} rounds"
    )
    print(f"{'what':<24}{'ms / image':>12}{'x predict':>12}")
    for name, ms in per_image.items():
        base = per_image["files: predict" if name.startswith("files") else "memory: predict"]
        print(f"{name:<24}{ms:>12.1f}{ms / base:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
