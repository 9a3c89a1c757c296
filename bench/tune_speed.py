"""How long a tuning study takes on the feature cache, and what it would cost without it.

1. Runs a short study (`--trials`, default 5) with the search space, pruner and recipe of
   params.yaml on the cached features under `--data-dir` (features/ and split/), in a
   temporary Optuna storage and MLflow store (the repository's are not touched), and
   prints the time per trial and the extrapolated time of the full study (`tune.n_trials`).
2. Times end-to-end image training (`training.fit.fit_end_to_end`, backbone frozen, on-line
   augmentation) on the same images for `--e2e-epochs` epoch(s) (the last one is used),
   optionally on the first `--e2e-images` training images and scaled to the full split,
   and prints what the same study (same trials, same epochs run per trial) would cost
   without the cache, and the ratio.

3. Where a cached epoch goes (`--overhead-epochs`, default 8; 0 skips it): one training
   of the default recipe on the same features with early stopping off, its median epoch
   (training, validation and callbacks) beside the bare head's forward and backward
   passes over the same batches in a plain `tf.function` (and with the optimizer's update,
   Keras' Adam and `training.fused_adam.FusedAdam`), all in the same process, so the ratio
   holds even when other jobs load the machine.

`--random-features` times step 1 on random features of the demo's shapes (train 1,072 x
(1 + featurize.augment_views) x D, val 58 x 1 x D; a test manifest, which the study's run
tags hash, without features) when the cache has not been built.
Results are also written to bench/results/tune_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from petscan.params.loading import PARAMS_FILE, load_validated, workspace_root

sys.path.insert(0, str(Path(__file__).parent))  # the sibling below, also when loaded by path
from random_cache import scratch_stores, write_random_cache  # noqa: E402

if TYPE_CHECKING:
    from petscan.params.learning import TrainParams
    from petscan.params.schema import Params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument("--trials", type=int, default=5, help="trials to time (default 5)")
    parser.add_argument(
        "--data-dir", default="data", help="folder holding split/ and features/ (data)"
    )
    parser.add_argument("--e2e-epochs", type=int, default=1, help="end-to-end epochs to time")
    parser.add_argument(
        "--e2e-images", type=int, help="time end-to-end on the first N train images only"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="time the cached study only")
    parser.add_argument(
        "--random-features", action="store_true", help="random features of the demo's shapes"
    )
    parser.add_argument(
        "--overhead-epochs", type=int, default=8, help="epochs of step 3 (0: skip it)"
    )
    parser.add_argument("--out", default="bench/results/tune_speed.json", help="result file")
    return parser.parse_args(argv)


def time_study(params: Params, data_dir: Path, trials: int, root: Path) -> dict:
    """Run `trials` trials in a scratch storage; per-trial durations and epochs."""
    import optuna

    from petscan.tuning.report import trials_frame
    from petscan.tuning.run import run_tune
    from petscan.tuning.storage import make_storage

    data = data_dir.resolve()
    study_params = params.model_copy(
        update={
            "split": params.split.model_copy(update={"out_dir": str(data / "split")}),
            "featurize": params.featurize.model_copy(update={"out_dir": str(data / "features")}),
            "tune": params.tune.model_copy(update={"storage": None, "timeout_s": None}),
            "mlflow": params.mlflow.model_copy(update={"experiment": "tune-speed-bench"}),
        }
    )
    os.environ["PETSCAN_ROOT"] = str(root)
    start = time.perf_counter()
    summary = run_tune(
        study_params, root, trials=trials, study_name="bench", progress=True, plots=False
    )
    wall = time.perf_counter() - start
    storage = make_storage(summary["storage"])
    frame = trials_frame(optuna.load_study(study_name="bench", storage=storage))
    epochs = frame["epochs_run"].fillna(0)
    return {
        "trials": int(len(frame)),
        "states": frame["state"].value_counts().to_dict(),
        "per_trial": frame[["number", "state", "value", "epochs_run", "duration_s"]].to_dict(
            orient="records"
        ),  # the same seeds must give the same states and values
        "study_s_per_epoch": float(frame["duration_s"].sum() / max(epochs.sum(), 1)),
        "wall_s": wall,
        "trial_s_mean": float(frame["duration_s"].mean()),
        "trial_s_max": float(frame["duration_s"].max()),
        "epochs_run_mean": float(frame["epochs_run"].mean()),
        "setup_s": wall - float(frame["duration_s"].sum()),
    }


def epoch_timer():
    """A Keras callback whose `seconds` list gets each epoch's wall time."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def load_cache(data_dir: Path) -> dict:
    """Train and val features and labels of the cache under `data_dir`."""
    from petscan.data.features import load_features

    split, features = data_dir / "split", data_dir / "features"
    train = load_features(features, "train", split / "train.csv")
    val = load_features(features, "val", split / "val.csv")
    return {"x": train.features, "y": train.labels, "val_x": val.features, "val_y": val.labels}


def bare_epoch_s(
    head, train_params: TrainParams, batches, optimizer=None, repeats: int = 5
) -> float:
    """Median seconds of the head's forward and backward passes over `batches` (x, y,
    sample weight, stacked: steps x batch x ...) in a plain `tf.function`: the focal loss
    with the L2 penalty, its gradients, and `optimizer`'s update when given (else the
    gradients are summed, so that TensorFlow cannot drop them)."""
    import numpy as np
    import tensorflow as tf

    from petscan.model import losses

    loss_fn = losses.make_loss(train_params.loss, head.output.shape[-1])
    weights = head.trainable_variables
    if optimizer is not None:
        optimizer.build(weights)
    xs, ys, ws = (tf.constant(b) for b in batches)

    @tf.function
    def epoch():
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(xs)[0]):
            with tf.GradientTape() as tape:
                y_pred = head(xs[i], training=True)
                loss = loss_fn(ys[i], y_pred, sample_weight=ws[i]) + tf.add_n(head.losses)
            grads = tape.gradient(loss, weights)
            if optimizer is None:
                total += tf.add_n([tf.reduce_sum(g) for g in grads])
            else:
                optimizer.apply(grads, weights)
                total += loss
        return total

    epoch()  # tracing
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch().numpy()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def without_early_stopping(train: TrainParams, epochs: int) -> TrainParams:
    """`train` running all `epochs` epochs."""
    stopping = train.early_stopping.model_copy(update={"enabled": False})
    return train.model_copy(update={"epochs": epochs, "early_stopping": stopping})


def time_epoch_overhead(params: Params, data_dir: Path, epochs: int) -> dict:
    """A cached epoch inside `fit_cached` against the bare head's passes (same process)."""
    import keras
    import numpy as np

    from petscan.model import losses
    from petscan.params.learning import OptimizerParams
    from petscan.training.fit import fit_cached
    from petscan.training.fused_adam import make_optimizer
    from petscan.training.sampler import CachedViewSampler

    cache = load_cache(data_dir)
    train_params = without_early_stopping(params.train, epochs)
    timer = epoch_timer()
    num_classes = len(params.data.class_names)
    result = fit_cached(
        cache["x"],
        cache["y"],
        cache["val_x"],
        cache["val_y"],
        params.model,
        train_params,
        num_classes,
        callbacks=[timer],
        verbose=0,
    )
    weights = losses.class_weights(cache["y"], train_params.class_weight, num_classes)
    batch = train_params.batch_size
    sampler = CachedViewSampler(cache["x"], cache["y"], batch, 1, seed=0)
    full = len(cache["x"]) // batch  # whole batches, stacked; a short last one is scaled
    xs, ys = zip(*(sampler[i] for i in range(full)), strict=True)
    ws = [np.array([weights[c] for c in y], np.float32) for y in ys]
    batches = (np.stack(xs), np.stack(ys), np.stack(ws))
    scale = sampler.steps_per_epoch / full
    lr = train_params.lr_schedule.values[-1]
    optimizers = {
        "forward_backward": None,
        "with_keras_adam": keras.optimizers.Adam(lr),
        "with_fused_adam": make_optimizer(OptimizerParams(name="adam"), lr, fused=True),
    }
    bare = {
        name: scale * bare_epoch_s(result.head, train_params, batches, optimizer)
        for name, optimizer in optimizers.items()
    }
    fit_epoch = float(np.median(timer.seconds[1:]))
    return {
        "epochs_timed": epochs,
        "steps_per_epoch": sampler.steps_per_epoch,
        "fit_epoch_s": fit_epoch,
        "fit_first_epoch_s": timer.seconds[0],
        "bare_epoch_s": bare,
        "fused_adam": type(result.head.optimizer).__name__ == "FusedAdam",
        "ratio_fit_over_forward_backward": fit_epoch / bare["forward_backward"],
    }


def time_end_to_end(params: Params, data_dir: Path, epochs: int, images: int | None) -> dict:
    """Seconds of one end-to-end epoch over the full train split (scaled from a subset)."""
    import pandas as pd

    from petscan.handoff.records import weights_file
    from petscan.training.fit import fit_end_to_end

    root = workspace_root()
    frames = {
        s: pd.read_csv(data_dir / "split" / f"{s}.csv", dtype={"patient": str})
        for s in ("train", "val")
    }
    full = len(frames["train"])
    if images:
        fraction = min(1.0, images / full)
        frames["train"] = frames["train"].sample(n=min(images, full), random_state=0)
        frames["val"] = frames["val"].head(max(3, round(len(frames["val"]) * fraction)))
    missing = [p for p in frames["train"]["path"].head(3) if not (root / p).is_file()]
    weights = root / params.weights.dir
    if missing or not weights_file(weights).is_file():
        raise FileNotFoundError(
            f"end-to-end timing needs the images ({missing[:1] or 'ok'}) and "
            f"{weights_file(weights)}: run `make data` and `dvc repro fetch_weights`"
        )
    timer = epoch_timer()
    fit_end_to_end(
        frames["train"],
        frames["val"],
        params.model,
        without_early_stopping(params.train, epochs),
        params.featurize.augmentation,
        weights_file(weights),
        len(params.data.class_names),
        root=root,
        callbacks=[timer],
        verbose=0,
    )
    measured = timer.seconds[-1]
    scale = full / len(frames["train"])
    return {
        "images_timed": len(frames["train"]),
        "epochs_timed": epochs,
        "epoch_s_measured": measured,
        "epoch_s_full_split": measured * scale,
        "includes_first_epoch_warmup": epochs == 1,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_validated(args.params)
    n_full = params.tune.n_trials
    result: dict = {"n_trials_full_study": n_full, "cpu_count": os.cpu_count()}
    with scratch_stores() as scratch:
        data_dir = Path(args.data_dir)
        if args.random_features:
            data_dir = scratch / "data"
            write_random_cache(data_dir, params)
        elif not (data_dir / "features" / "train.npy").is_file():
            print(
                f"{data_dir / 'features'} not built: run `dvc repro featurize` first "
                "(or pass --random-features)",
                file=sys.stderr,
            )
            return 1
        cached = time_study(params, data_dir, args.trials, scratch / "root")
        if args.overhead_epochs > 0:
            result["epoch_overhead"] = time_epoch_overhead(params, data_dir, args.overhead_epochs)
    result["cached"] = cached
    per_trial = cached["trial_s_mean"]
    cached_full = cached["setup_s"] + per_trial * n_full
    result["cached"]["full_study_s_estimate"] = cached_full
    print(
        f"cached: {cached['trials']} trials in {cached['wall_s']:.1f} s "
        f"({per_trial:.2f} s/trial mean, max {cached['trial_s_max']:.2f} s, "
        f"{cached['epochs_run_mean']:.1f} epochs/trial, states {cached['states']}, "
        f"setup {cached['setup_s']:.1f} s); a {n_full}-trial study: ~{cached_full / 60:.1f} min"
    )
    if "epoch_overhead" in result:
        over = result["epoch_overhead"]
        bare = over["bare_epoch_s"]
        print(
            f"cached epoch ({over['steps_per_epoch']} steps): {over['fit_epoch_s']:.3f} s in "
            f"fit_cached (training, validation, callbacks; the study: "
            f"{cached['study_s_per_epoch']:.3f} s per epoch run, trial set-up included) | "
            f"bare head, same batches: forward+backward {bare['forward_backward']:.3f} s, "
            f"+ Keras Adam {bare['with_keras_adam']:.3f} s, "
            f"+ FusedAdam {bare['with_fused_adam']:.3f} s | "
            f"ratio fit / forward+backward {over['ratio_fit_over_forward_backward']:.2f}"
        )
    if not (args.skip_e2e or args.random_features):
        try:
            e2e = time_end_to_end(params, Path(args.data_dir), args.e2e_epochs, args.e2e_images)
        except FileNotFoundError as err:
            print(f"end-to-end: skipped, {err}", file=sys.stderr)
        else:
            uncached = n_full * cached["epochs_run_mean"] * e2e["epoch_s_full_split"]
            e2e["full_study_s_estimate"] = uncached
            result["end_to_end"] = e2e
            result["ratio_uncached_over_cached"] = uncached / cached_full
            print(
                f"end-to-end: {e2e['epoch_s_full_split']:.1f} s per epoch over the full train "
                f"split (measured {e2e['epoch_s_measured']:.1f} s on {e2e['images_timed']} "
                f"images); the same {n_full}-trial study without the cache: "
                f"~{uncached / 3600:.1f} h, "
                f"{result['ratio_uncached_over_cached']:.0f}x the cached one"
            )
    from petscan.utils import io

    io.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
