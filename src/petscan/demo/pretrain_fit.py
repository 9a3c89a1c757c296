"""The pretraining network, its epochs of data, its fit and its scores (`petscan.demo.pretrain`).

The network is the `pet_demo` backbone, fed exactly as the pipeline feeds it (pixels in
[0, 255] / 255), with one small head per task: a 1 x 1 convolution on the feature map for
the lesion maps, and a dense layer on the globally averaged features (what the pipeline's
head sees) for `sex` and `label`. Each epoch is a seeded order with seeded
augmentation (left-right flips of image and maps, a contrast change about the white
background), and TensorFlow runs with op determinism, so a rerun on the same machine
repeats the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from petscan.demo.pretrain import CLASS_KINDS, MAP_CHANNELS, Corpus
from petscan.model.pet_demo import build_pet_demo

if TYPE_CHECKING:
    from petscan.params.learning import PretrainParams


def targets(
    corpus: Corpus, tasks: tuple[str, ...], order: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The network's targets for the images of `corpus` (in `order`, default all), by task."""
    index = np.arange(len(corpus.label)) if order is None else order
    every = {
        "lesions": lambda: corpus.maps[index],
        "sex": lambda: corpus.sex[index, None],
        "label": lambda: corpus.label[index],
    }
    return {task: every[task]() for task in tasks}


def augmented_epoch(
    corpus: Corpus, tasks: tuple[str, ...], seed: int, epoch: int, contrast: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One epoch of training data: a seeded order, left-right flips of images and maps, and a
    contrast change about the white background (the display is inverted), all seeded by
    (seed, epoch), so a rerun repeats every batch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(corpus.label))
    flip = rng.random(len(order)) < 0.5
    gain = rng.uniform(1 - contrast, 1 + contrast, len(order)).astype(np.float32)
    images = corpus.images[order]
    y = targets(corpus, tasks, order)
    images[flip] = images[flip, :, ::-1]
    if "lesions" in y:
        y["lesions"][flip] = y["lesions"][flip, :, ::-1]
    for start in range(0, len(order), 256):  # in chunks: float32 copies stay small
        part = images[start : start + 256].astype(np.float32)
        part = 255.0 - (255.0 - part) * gain[start : start + 256, None, None, None]
        images[start : start + 256] = np.clip(np.rint(part), 0, 255).astype(np.uint8)
    return images, y


def fit(
    network: keras.Model,
    train: Corpus,
    val: Corpus,
    tasks: tuple[str, ...],
    pretrain: PretrainParams,
) -> dict[str, list[float]]:
    """Train for `pretrain.epochs` epochs, one freshly augmented copy of `train` each;
    returns Keras' history (loss per task, on train and on the held-out `val`)."""
    history: dict[str, list[float]] = {}
    val_data = (val.images, targets(val, tasks))
    for epoch in range(pretrain.epochs):
        images, y = augmented_epoch(train, tasks, pretrain.seed, epoch, pretrain.contrast)
        result = network.fit(
            images,
            y,
            batch_size=pretrain.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            validation_data=val_data,
            verbose=2,
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    return history


def build_network(
    tasks: tuple[str, ...], input_size: tuple[int, int]
) -> tuple[keras.Model, keras.Model]:
    """(network with one output per task, the backbone inside it)."""
    backbone = build_pet_demo(input_shape=(*input_size, 3))
    image = keras.Input(shape=(*input_size, 3), name="image")
    feature_map = backbone(layers.Rescaling(1 / 255.0, name="rescale")(image))
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(feature_map)
    heads = {
        "lesions": lambda: layers.Conv2D(len(MAP_CHANNELS), 1, name="lesions")(feature_map),
        "sex": lambda: layers.Dense(1, name="sex")(pooled),
        "label": lambda: layers.Dense(len(CLASS_KINDS), name="label")(pooled),
    }
    outputs = {task: heads[task]() for task in tasks}
    return keras.Model(image, outputs, name="pretraining"), backbone


def compile_network(
    network: keras.Model, tasks: tuple[str, ...], pretrain: PretrainParams, steps: int
) -> None:
    """Adam on a cosine schedule with one warm-up epoch; lesion maps weighted per params."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, steps * (pretrain.epochs - 1)),
        warmup_target=pretrain.learning_rate,
        warmup_steps=steps,
    )
    losses = {
        # focal, class-balanced: a lesion covers about 0.1% of the cells of its channel
        "lesions": keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=0.75, gamma=2.0, from_logits=True
        ),
        "sex": keras.losses.BinaryCrossentropy(from_logits=True),
        "label": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    weights = {"lesions": pretrain.lesion_weight, "sex": 1.0, "label": 1.0}
    network.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={task: losses[task] for task in tasks},
        loss_weights={task: weights[task] for task in tasks},
    )


def scores(network: keras.Model, corpus: Corpus, tasks: tuple[str, ...]) -> dict[str, float]:
    """Held-out scores of the tasks: lesion-cell AUC (any kind), sex accuracy, label AUC."""
    outputs = network.predict(corpus.images, batch_size=64, verbose=0)
    result: dict[str, float] = {}
    if "lesions" in outputs:
        truth = corpus.maps.max(axis=-1).ravel() > 0.5
        result["lesion_cell_auc"] = float(roc_auc_score(truth, outputs["lesions"].max(-1).ravel()))
    if "sex" in outputs:
        result["sex_accuracy"] = float(np.mean((outputs["sex"][:, 0] > 0) == (corpus.sex > 0.5)))
    if "label" in outputs:
        logits = outputs["label"]
        proba = np.exp(logits - logits.max(1, keepdims=True))
        proba /= proba.sum(1, keepdims=True)
        result["label_auc_macro"] = float(roc_auc_score(corpus.label, proba, multi_class="ovr"))
    return {key: round(value, 4) for key, value in result.items()}


def pooled_features(backbone: keras.Model, images: np.ndarray) -> np.ndarray:
    """Globally averaged backbone features, as `featurize` computes them (view 0)."""
    inputs = keras.Input(shape=images.shape[1:])
    pooled = layers.GlobalAveragePooling2D()(backbone(layers.Rescaling(1 / 255.0)(inputs)))
    extractor = keras.Model(inputs, pooled)
    return extractor.predict(images.astype(np.float32), batch_size=64, verbose=0)


def probe_auc(features: np.ndarray, corpus: Corpus, folds: int = 5, seed: int = 0) -> float:
    """Patient-grouped k-fold macro AUC of a standardized logistic regression on features:
    how linearly the demo's three classes can be read off the frozen features."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = np.zeros((len(corpus.label), len(CLASS_KINDS)))
    for train, test in splitter.split(features, corpus.label, corpus.patients):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(features[train], corpus.label[train])
        proba[test] = probe.predict_proba(features[test])
    return round(float(roc_auc_score(corpus.label, proba, multi_class="ovr")), 4)
