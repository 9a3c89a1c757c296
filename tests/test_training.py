"""Training: the cached-view sampler, the seed's recipe, repeatability, early stopping,
end-to-end mode on tiny images, the collapse alarm, and the train stage's saved outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import manifest_row, random_weights, tiny_model_params, write_manifest, write_png
from sklearn.utils.class_weight import compute_class_weight

from petscan.handoff import records
from petscan.model.network import build_full_model, build_head
from petscan.model.saving import load_model
from petscan.model.schedules import piecewise_lr
from petscan.params.loading import StageParams
from petscan.params.schema import section, validate
from petscan.pipeline import train as train_stage
from petscan.training import callbacks, collapse, fit, fused_adam
from petscan.training.sampler import CachedViewSampler
from petscan.training.seeding import set_determinism
from petscan.utils.errors import MissingInputError, ParamsError

MODEL = tiny_model_params(preprocessing="rescale", dropout=0.2)
WEIGHTS = random_weights()


def train_params(**overrides):
    """A `train` section (`TrainParams`) for the tests, `overrides` checked by the schema."""
    params = {
        "mode": "cached",
        "batch_size": 8,
        "epochs": 4,
        "optimizer": {"name": "adam"},
        "lr_schedule": {"boundaries": [1, 3], "values": [5.0e-2, 3.0e-2, 1.0e-2]},
        "early_stopping": {
            "enabled": True,
            "monitor": "val_loss",
            "patience": 5,
            "restore_best_weights": True,
        },
        "reduce_lr_on_plateau": {"enabled": False},
        "class_weight": "balanced",
        "loss": {"name": "focal", "variant": "categorical", "alpha": [0.5, 0.3, 0.2], "gamma": 2.0},
        "unfreeze_top_layers": 0,
        "seed": 7,
        "out_dir": "models",
    }
    return section("train", {**params, **overrides})


def blobs(n: int, views: int, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes: class c is centred on +3 in feature c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.zeros((n, 1, dim), dtype=np.float32)
    centres[np.arange(n), 0, labels] = 3.0
    noise = rng.normal(0, 1, size=(n, views, dim)).astype(np.float32)
    return centres + noise, labels.astype(np.int64)


# --------------------------------------------------------------------------- sampler


def test_sampler_visits_every_image_once_per_epoch_with_seeded_views():
    n, views = 11, 3
    feats = np.zeros((n, views, 2), dtype=np.float32)
    feats[:, :, 0] = np.arange(n)[:, None]  # feature 0 = image index
    feats[:, :, 1] = np.arange(views)[None, :]  # feature 1 = view index
    labels = np.arange(n) % 3
    sampler = CachedViewSampler(feats, labels, batch_size=4, epochs=3, seed=5)
    assert sampler.steps_per_epoch == 3 and len(sampler) == 9
    chosen = []
    for epoch in range(3):
        batches = [sampler[epoch * 3 + step] for step in range(3)]
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        assert [len(b[0]) for b in batches] == [4, 4, 3]
        idx = x[:, 0].astype(int)
        assert sorted(idx) == list(range(n)), f"epoch {epoch} must visit each image once"
        np.testing.assert_array_equal(y, labels[idx])
        order, view_of = sampler.plan(epoch)
        np.testing.assert_array_equal(idx, order)
        np.testing.assert_array_equal(x[:, 1].astype(int), view_of[idx])
        chosen.append(view_of.copy())
    # The view choice is seeded: the same seed gives the same plan, another seed another.
    again = CachedViewSampler(feats, labels, batch_size=4, epochs=3, seed=5)
    other = CachedViewSampler(feats, labels, batch_size=4, epochs=3, seed=6)
    for epoch in range(3):
        np.testing.assert_array_equal(again.plan(epoch)[1], chosen[epoch])
    assert any(not np.array_equal(other.plan(e)[0], again.plan(e)[0]) for e in range(3)), (
        "another seed must give another order"
    )
    assert not np.array_equal(chosen[0], chosen[1]), "views are re-drawn every epoch"
    assert set(np.concatenate(chosen)) == {0, 1, 2}
    with pytest.raises(IndexError):
        sampler[9]


def test_sampler_dataset_gives_exactly_the_sampler_batches():
    # 13 images in batches of 4: every epoch ends with a short batch of 1
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(13, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=13)
    sampler = CachedViewSampler(feats, labels, batch_size=4, epochs=3, seed=5)
    batches = list(sampler.dataset().as_numpy_iterator())
    assert len(batches) == len(sampler) == 12
    assert [len(y) for _, y in batches] == [4, 4, 4, 1] * 3
    for index, (x, y) in enumerate(batches):
        want_x, want_y = sampler[index]
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
        assert (x.dtype, y.dtype) == (want_x.dtype, want_y.dtype) == (np.float32, np.int32)


def test_sampler_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, V, D\)"):
        CachedViewSampler(np.zeros((4, 2)), np.zeros(4), 2, 1)
    with pytest.raises(ValueError, match="labels"):
        CachedViewSampler(np.zeros((4, 1, 2)), np.zeros(3), 2, 1)


# --------------------------------------------------------------------------- recipe


def optimizer_params(**values):
    """A `train.optimizer` section: `name` and the optimizer's own keywords."""
    return section("train", {"optimizer": values}).optimizer


def test_make_optimizer_adam_and_unknown():
    opt = fused_adam.make_optimizer(optimizer_params(name="adam", beta_1=0.8), 1e-3)
    assert isinstance(opt, keras.optimizers.Adam)
    assert float(opt.learning_rate) == pytest.approx(1e-3) and opt.beta_1 == 0.8
    with pytest.raises(ParamsError, match="train.optimizer: cannot build 'no_such_optimizer'"):
        fused_adam.make_optimizer(optimizer_params(name="no_such_optimizer"), 1e-3)
    with pytest.raises(ParamsError, match="train.optimizer: cannot build 'adam'"):
        fused_adam.make_optimizer(optimizer_params(name="adam", no_such_keyword=1), 1e-3)


def test_fused_adam_is_keras_adam_bit_for_bit():
    assert fused_adam.exact_xla_available(), "XLA without FMA must be usable on a CPU"
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(37, 11)).astype(np.float32), np.zeros(11, np.float32)]
    grads = [
        [rng.normal(size=w.shape).astype(np.float32) * 10.0**-k for w in start] for k in range(6)
    ]
    results = []
    for fused in (False, True):
        optimizer = fused_adam.make_optimizer(optimizer_params(name="adam"), 3e-2, fused=fused)
        assert type(optimizer) is (fused_adam.FusedAdam if fused else keras.optimizers.Adam)
        weights = [keras.Variable(w) for w in start]
        optimizer.build(weights)
        for step, grad in enumerate(grads):
            optimizer.learning_rate = 3e-2 / (1 + step)  # as the schedule callbacks do
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in grad], weights)
        moments = [optimizer._momentums[0], optimizer._velocities[0]]
        results.append([keras.ops.convert_to_numpy(w) for w in weights + moments])
    plain, fused = results
    assert not np.array_equal(plain[0], start[0]), "the weights moved"
    for a, b in zip(plain, fused, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fused_adam_is_refused_where_xla_would_use_fma():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or " fma " not in cpuinfo.read_text():
        pytest.skip("this CPU has no FMA instruction")
    code = (
        "from petscan.params.schema import defaults; "
        "from petscan.training.fused_adam import exact_xla_available, make_optimizer; "
        "print(exact_xla_available(), "
        "type(make_optimizer(defaults().train.optimizer, 1e-3, fused=True)).__name__)"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "Adam"]


def test_fit_cached_gives_what_the_plain_keras_path_gave():
    """fit_cached (tf.data, FusedAdam) against the same fit on the PyDataset, validation
    arrays and Keras' Adam: the same history and weights, bit for bit."""
    x, y = blobs(43, views=3, seed=1)  # 43 = 5 batches of 8 + 3
    vx, vy = blobs(35, views=1, seed=2)  # two validation batches: 32 + 3
    params = train_params(epochs=5)
    fast = fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0)

    set_determinism(params.seed)
    sampler = CachedViewSampler(x, y, 8, params.epochs, seed=params.seed)
    head = build_head(x.shape[-1], 3, MODEL, seed=params.seed, train_features=x)
    fit.compile_model(head, params, 3, steps_per_execution=sampler.steps_per_epoch)
    assert type(head.optimizer) is keras.optimizers.Adam
    validation = callbacks.ValidationAUC(vx[:, 0], vy, 3)
    recipe, _ = callbacks.build_callbacks(params, validation)
    history = head.fit(
        sampler,
        validation_data=(vx[:, 0], vy.astype(np.int32)),
        epochs=params.epochs,
        steps_per_epoch=sampler.steps_per_epoch,
        shuffle=False,
        class_weight=fast.info["class_weight"],
        callbacks=recipe,
        verbose=0,
    )
    assert type(fast.head.optimizer) is fused_adam.FusedAdam
    pd.testing.assert_frame_equal(
        fast.history, fit.history_frame(history, params.lr_schedule), check_exact=True
    )
    for a, b in zip(fast.head.get_weights(), head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plateau_scaled_schedule_halves_after_patience():
    model = build_head(4, 3, MODEL, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="sparse_categorical_crossentropy")
    params = train_params(
        lr_schedule={"boundaries": [3], "values": [1.0, 0.1]},
        reduce_lr_on_plateau={"monitor": "val_loss", "factor": 0.5, "patience": 2, "min_lr": 0.03},
    )
    cb = callbacks.PlateauScaledSchedule(params.lr_schedule, params.reduce_lr_on_plateau)
    cb.set_model(model)
    val_losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]
    seen = []
    for epoch, loss in enumerate(val_losses):
        cb.on_epoch_begin(epoch)
        logs = {"val_loss": loss}
        cb.on_epoch_end(epoch, logs)
        seen.append(logs["learning_rate"])
    # epochs 0-2: 1.0 (scale halves after epoch 3's second miss); 3+: 0.1 * scale, >= 0.03
    np.testing.assert_allclose(seen, [1.0, 1.0, 1.0, 0.1, 0.05, 0.05, 0.03], rtol=1e-6)


def test_plateau_on_accuracy_waits_for_it_to_stop_rising():
    model = build_head(4, 3, MODEL, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="sparse_categorical_crossentropy")
    params = train_params(
        lr_schedule={"boundaries": [], "values": [1.0]},
        reduce_lr_on_plateau={"monitor": "val_accuracy", "factor": 0.5, "patience": 2, "min_lr": 0},
    )
    cb = callbacks.PlateauScaledSchedule(params.lr_schedule, params.reduce_lr_on_plateau)
    cb.set_model(model)
    seen = []
    for epoch, accuracy in enumerate([0.5, 0.6, 0.7, 0.8, 0.7, 0.6, 0.6]):
        cb.on_epoch_begin(epoch)
        logs = {"val_accuracy": accuracy}
        cb.on_epoch_end(epoch, logs)
        seen.append(logs["learning_rate"])
    # rising accuracy never cuts the rate; two epochs below the best 0.8 halve it once
    np.testing.assert_allclose(seen, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5], rtol=1e-6)


# --------------------------------------------------------------------------- cached fit


def test_cached_training_is_repeatable_and_follows_the_recipe():
    x, y = blobs(40, views=3, seed=1)
    vx, vy = blobs(12, views=1, seed=2)
    params = train_params(epochs=4)
    runs = [fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0) for _ in range(2)]
    first, second = runs
    pd.testing.assert_frame_equal(first.history, second.history, check_exact=True)
    for a, b in zip(first.head.get_weights(), second.head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    hist = first.history
    assert list(hist.columns) == list(records.HISTORY_COLUMNS)
    assert list(hist["epoch"]) == [0, 1, 2, 3]
    expected_lr = [piecewise_lr(e, [1, 3], [5e-2, 3e-2, 1e-2]) for e in range(4)]
    np.testing.assert_allclose(hist["learning_rate"], expected_lr, rtol=1e-6)
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert first.info["class_weight"] == pytest.approx(dict(enumerate(balanced)))
    assert first.epochs_run == 4
    assert first.best_epoch == int(hist["val_loss"].to_numpy().argmin())
    assert hist["val_accuracy"].iloc[-1] > 0.9, "separable blobs must be learnt"


def test_early_stopping_restores_the_best_epoch():
    x, y = blobs(30, views=2, seed=3)
    vx, _ = blobs(9, views=1, seed=4)
    vy = (np.arange(9) % 3 + 1) % 3  # validation labels that contradict training
    params = train_params(
        epochs=20,
        early_stopping={
            "enabled": True,
            "monitor": "val_loss",
            "patience": 2,
            "restore_best_weights": True,
        },
    )
    result = fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0)
    hist = result.history
    best = int(hist["val_loss"].to_numpy().argmin())
    assert result.stopped_early
    assert result.best_epoch == best
    assert result.epochs_run == best + 2 + 1 < 20
    # The kept weights are the best epoch's: evaluating them gives its val_loss.
    loss = result.head.evaluate(vx[:, 0], vy, verbose=0)[0]
    assert loss == pytest.approx(hist["val_loss"].iloc[best], rel=1e-5)
    assert result.best_values()["val_loss"] == pytest.approx(hist["val_loss"].iloc[best])


# --------------------------------------------------------------------------- end to end


def tiny_images(folder, n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 3
        arr = rng.integers(0, 255, size=(40 + i, 36, 3), dtype=np.uint8)
        arr[..., label] = 250  # a class-coloured image
        path = write_png(folder / f"img{i}.png", arr)
        rows.append({"path": path.name, "class": str(label), "label": label, "patient": f"p{i}"})
    return pd.DataFrame(rows)


def test_end_to_end_runs_one_tiny_epoch_with_unfrozen_top(tmp_path):
    frame = tiny_images(tmp_path)
    params = train_params(epochs=1, batch_size=4, unfreeze_top_layers=3, mode="end_to_end")
    aug = section("featurize").augmentation
    result = fit.fit_end_to_end(frame, frame, MODEL, params, aug, None, 3, root=tmp_path, verbose=0)
    assert result.epochs_run == 1 and result.best_epoch == 0
    assert result.info["mode"] == "end_to_end" and result.info["replicas"] >= 1
    assert np.isfinite(result.history[["loss", "val_loss"]].to_numpy()).all()
    model = result.model
    assert model.output_shape == (None, 3)
    trainable = {v.path.split("/")[0] for v in model.trainable_variables}
    # the top three backbone layers are conv2 / bn2 / relu2: the conv trains, BN stays frozen
    names = {v.path for v in model.trainable_variables}
    assert any("tiny_conv2" in p for p in names), names
    assert not any("tiny_bn" in p for p in names), names
    assert not any("tiny_conv1" in p for p in names), names
    assert trainable  # the head too
    proba = model.predict(np.zeros((2, 32, 32, 3), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- outputs


def test_save_outputs_writes_a_loadable_full_model(tmp_path):
    x, y = blobs(12, views=1, dim=32, seed=5)
    result = fit.fit_cached(x, y, x, y, MODEL, train_params(epochs=2), 3, verbose=0)
    full = build_full_model(MODEL, 3, None, head=result.head)
    paths, _ = train_stage.save_outputs(result, full, tmp_path / "models", WEIGHTS, CLASSES, 0)
    loaded = load_model(paths["model"])  # safe_mode=True
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), full.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )
    history = pd.read_csv(paths["history"])
    assert list(history.columns) == list(records.HISTORY_COLUMNS) and len(history) == 2
    info = json.loads(paths["summary"].read_text())
    assert info["backbone"] == "tiny" and info["class_names"] == CLASSES
    assert records.read_train_info(tmp_path / "models").best == result.best_values()
    assert info["epochs_run"] == 2 and info["best_epoch"] in (0, 1)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "history.csv",
        "model.keras",
        "train.json",
    ], "no temporary files left behind"


def test_same_training_twice_gives_byte_identical_outputs(tmp_path):
    """Same params and data, two trainings: model.keras, history.csv and train.json are the
    same bytes (Keras stamps the save time and memory addresses; save_model removes them)."""
    import zipfile

    x, y = blobs(12, views=2, dim=32, seed=5)
    for run in ("a", "b"):
        result = fit.fit_cached(x, y, x, y, MODEL, train_params(epochs=2), 3, verbose=0)
        full = build_full_model(MODEL, 3, None, head=result.head)
        train_stage.save_outputs(result, full, tmp_path / run, WEIGHTS, CLASSES, 0)
    for name in ("model.keras", "history.csv", "train.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with zipfile.ZipFile(tmp_path / "a" / "model.keras") as archive:
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["date_saved"] == "unrecorded"


# --------------------------------------------------------------------------- learning (issue 8)


def test_head_learns_features_at_any_scale_with_standardization():
    x, y = blobs(60, views=2, seed=11)
    vx, vy = blobs(15, views=1, seed=12)
    params = train_params(epochs=4)
    for scale in (1e-3, 1.0, 1e3):
        result = fit.fit_cached(x * scale, y, vx * scale, vy, MODEL, params, 3, verbose=0)
        prior = np.bincount(y).max() / len(y)
        assert result.history["accuracy"].max() > prior + 0.3, f"scale {scale} not learnt"
        assert result.history["val_roc_auc_macro"].iloc[-1] > 0.9
        assert not result.info["collapse"]["collapsed"]


def test_the_seed_head_collapses_on_tiny_features_and_raises_the_alarm():
    """What the demo did before standardization: constant predictions, the alarm goes off."""
    x, y = blobs(60, views=2, seed=11)
    vx, vy = blobs(15, views=1, seed=12)
    seed_head = tiny_model_params(preprocessing="rescale", dropout=0.2, standardize=False)
    result = fit.fit_cached(
        x * 1e-3,
        y,
        vx * 1e-3,
        vy,
        seed_head,
        train_params(epochs=4),
        3,
        verbose=0,
        class_names=["No cancer", "Breast cancer", "Prostate cancer"],
    )
    alarm = result.info["collapse"]
    assert alarm["collapsed"]
    assert alarm["val_majority_share"] == 1.0
    assert alarm["train_accuracy_max"] <= alarm["train_class_prior"] + 0.02
    assert "for 15 of 15 validation images" in alarm["message"]
    assert "never left the class prior" in alarm["message"]


def test_check_collapse_on_constructed_predictions():
    names = ["a", "b", "c"]
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)  # prior 0.5
    constant = np.tile([0.2, 0.7, 0.1], (20, 1))
    fine = np.eye(3)[np.arange(20) % 3] * 0.8 + 0.05
    settings = section("train").collapse
    c = collapse.check_collapse(constant, labels, [0.5, 0.9], names, settings)
    assert c["collapsed"] and c["val_majority_class"] == "b" and c["val_majority_share"] == 1.0
    assert "'b' for 20 of 20" in c["message"] and "prior" not in c["message"]
    c = collapse.check_collapse(fine, labels, [0.45, 0.51], names, settings)
    assert c["collapsed"] and "never left the class prior 0.500" in c["message"]
    c = collapse.check_collapse(fine, labels, [0.45, 0.53], names, settings)
    assert not c["collapsed"] and c["message"] == ""
    assert c["val_majority_share"] == pytest.approx(7 / 20)
    # thresholds come from params train.collapse
    strict = section("train", {"collapse": {"max_class_share": 0.3}}).collapse
    c = collapse.check_collapse(fine, labels, [0.6], names, strict)
    assert c["collapsed"]


def test_standardization_uses_every_training_view_and_never_val():
    x, y = blobs(30, views=3, seed=5)
    vx, vy = blobs(9, views=1, seed=6)
    result = fit.fit_cached(x, y, vx * 100 + 50, vy, MODEL, train_params(epochs=1), 3, verbose=0)
    layer = result.head.get_layer("standardize")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(layer.mean.numpy(), flat.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.scale.numpy(), flat.std(axis=0), rtol=1e-4)


def test_val_data_loss_is_the_loss_without_the_l2_penalty():
    from petscan.model import losses

    x, y = blobs(30, views=1, seed=8)
    vx, vy = blobs(9, views=1, seed=9)
    params = train_params(epochs=2, early_stopping={"enabled": False})
    result = fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0)
    last = result.history.iloc[-1]
    proba = keras.ops.convert_to_numpy(result.head(vx[:, 0], training=False))
    # the categorical focal loss by hand: -alpha_t (1 - p_t)^gamma log p_t, unweighted mean
    p_t = proba[np.arange(9), vy]
    alpha_t = np.array([0.5, 0.3, 0.2])[vy]
    by_hand = np.mean(-alpha_t * (1 - p_t) ** 2 * np.log(p_t))
    assert last["val_data_loss"] == pytest.approx(by_hand, rel=1e-4)
    kernel = result.head.get_layer("head_dense").kernel.numpy()
    penalty = 0.001 * float((kernel.astype(np.float64) ** 2).sum())
    assert last["val_loss"] - last["val_data_loss"] == pytest.approx(penalty, rel=1e-3)
    assert isinstance(losses.DataLoss(losses.make_loss(params.loss, 3)), keras.metrics.Mean)


def test_early_stopping_watches_the_chosen_unregularized_quantity():
    x, y = blobs(30, views=2, seed=3)
    vx, _ = blobs(9, views=1, seed=4)
    vy = (np.arange(9) % 3 + 1) % 3
    params = train_params(epochs=12, early_stopping={"patience": 2})  # default monitor
    result = fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0)
    auc = result.history["val_roc_auc_macro"].to_numpy()
    assert result.best_epoch == int(auc.argmax()), "the default monitor is val macro AUC"
    params = train_params(epochs=12, early_stopping={"patience": 2, "monitor": "val_data_loss"})
    result = fit.fit_cached(x, y, vx, vy, MODEL, params, 3, verbose=0)
    assert result.best_epoch == int(result.history["val_data_loss"].to_numpy().argmin())
    with pytest.raises(ParamsError, match="train.early_stopping.monitor = 'val_los': input"):
        train_params(early_stopping={"monitor": "val_los"})
    assert callbacks.monitor_mode("val_roc_auc_macro") == "max"
    assert callbacks.monitor_mode("val_accuracy") == "max"
    assert callbacks.monitor_mode("val_data_loss") == callbacks.monitor_mode("val_loss") == "min"


def test_train_stage_without_the_feature_cache_opens_no_mlflow_run(mlflow_store):
    root = mlflow_store
    rows = [manifest_row(f"img{i}.png", i % 3, f"p{i}", "0" * 64) for i in range(3)]
    for split in ("train", "val", "test"):
        write_manifest(root / "data/split" / f"{split}.csv", rows)
    records.write_weights_meta(root / "models/backbone", WEIGHTS, {})
    params = validate({"model": MODEL.model_dump(), "mlflow": {"experiment": "no-cache"}})
    params = StageParams(params, train_stage.SECTIONS)
    with pytest.raises(MissingInputError, match="train.npy not found: run `dvc repro featurize`"):
        train_stage.train(params, root)
    assert not (root / "mlruns").exists(), "no run (and no store) was created"
