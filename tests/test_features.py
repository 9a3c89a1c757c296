"""`featurize` (data/features.py, pipeline/featurize.py): cached backbone features, their
views, and the checks on loading them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_NAMES as CLASSES
from conftest import (
    load_script,
    manifest_row,
    random_weights,
    random_weights_meta,
    tiny_model_params,
    write_manifest,
    write_png,
)

from petscan.data import features as F
from petscan.data.images import ImageError, load_resized
from petscan.data.tf_data import build_augmenter, image_dataset, images_per_batch
from petscan.model.backbones import build_backbone
from petscan.model.network import build_feature_extractor, build_full_model, build_head
from petscan.params.schema import section
from petscan.pipeline.featurize import featurize_manifests
from petscan.utils.io import sha256_file

MODEL = tiny_model_params()
FEATURIZE = section(
    "featurize",
    {
        "batch_size": 6,  # backbone inputs per batch: 2 train images x 3 views, 6 val images
        "augment_views": 2,
        "augmentation": {"rotation": 0.2, "zoom": 0.2, "contrast": 0.2, "translation": 0.1},
        "seed": 101,
        "precision": "float32",
    },
)
COUNTS = {"train": 5, "val": 2, "test": 3}
WEIGHTS_META = random_weights_meta()


def _write_image(path: Path, rng: np.random.Generator, mode: str) -> None:
    height, width = int(rng.integers(20, 48)), int(rng.integers(20, 48))
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    write_png(path, pixels[:, :, 0] if mode == "L" else pixels[:, :, : len(mode)], mode)


def _make_repo(root: Path) -> dict[str, Path]:
    """Tiny PNGs (RGB, grey, RGBA) under data/raw and the three split manifests."""
    rng = np.random.default_rng(0)
    manifests = {}
    n = 0
    for split, count in COUNTS.items():
        rows = []
        for _ in range(count):
            label = n % 3
            rel = f"data/raw/class {label}/pet-{n:05d}_v1.png"
            _write_image(root / rel, rng, ("RGB", "L", "RGBA")[n % 3])
            rows.append(manifest_row(rel, label, f"pet-{n:05d}", sha256_file(root / rel)))
            n += 1
        manifests[split] = root / "data/split" / f"{split}.csv"
        write_manifest(manifests[split], rows)
    build_backbone("tiny", (32, 32, 3)).save(root / "models/backbone/weights.h5")
    return manifests


def _featurize(root: Path, out: str, **overrides) -> dict:
    return featurize_manifests(
        {s: root / "data/split" / f"{s}.csv" for s in COUNTS},
        root / out,
        MODEL,
        section("featurize", {**FEATURIZE.model_dump(), **overrides}),
        weights_path=root / "models/backbone/weights.h5",
        weights=random_weights(),
        class_names=CLASSES,
        root=root,
        progress=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "models/backbone").mkdir(parents=True)
    _make_repo(root)
    _featurize(root, "data/features")
    return root


@pytest.fixture(scope="module")
def extractor(repo):
    return build_feature_extractor(MODEL, repo / "models/backbone/weights.h5")


def _plain_features(repo: Path, extractor, split: str) -> np.ndarray:
    frame = pd.read_csv(repo / "data/split" / f"{split}.csv")
    images = np.stack([load_resized(repo / p, (32, 32)) for p in frame["path"]])
    return extractor.predict(images, verbose=0)


# ----------------------------------------------------------------------------- outputs


def test_output_shapes_views_and_metadata(repo):
    for split, views in (("train", 3), ("val", 1), ("test", 1)):
        array = np.load(repo / "data/features" / f"{split}.npy")
        assert array.dtype == np.float32
        assert array.shape == (COUNTS[split], views, 32)
        meta = json.loads((repo / "data/features" / f"{split}.json").read_text())
        assert meta["rows"] == COUNTS[split] and meta["views"] == views and meta["dim"] == 32
        assert meta["augmented"] is (split == "train")
        manifest = repo / "data/split" / f"{split}.csv"
        assert meta["manifest_sha256"] == sha256_file(manifest)
        assert meta["backbone"] == "tiny" and meta["preprocessing"] == "radimagenet"
        assert meta["input_size"] == [32, 32] and meta["resize"] == "stretch"
        assert meta["random_init"] is True and meta["weights_sha256"] == "0" * 64
        assert meta["class_names"] == CLASSES
    assert not list((repo / "data/features").glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_view_zero_is_the_plain_image(repo, extractor, split):
    cached = np.load(repo / "data/features" / f"{split}.npy")[:, 0]
    expected = _plain_features(repo, extractor, split)
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)


def test_augmented_views_differ_from_view_zero_and_from_each_other(repo):
    train = np.load(repo / "data/features/train.npy")
    for i in range(len(train)):
        assert not np.allclose(train[i, 1], train[i, 0], atol=1e-4)
        assert not np.allclose(train[i, 2], train[i, 1], atol=1e-4)


def test_featurize_is_deterministic_by_seed(repo):
    _featurize(repo, "again")
    _featurize(repo, "other_seed", seed=7)
    first = np.load(repo / "data/features/train.npy")
    np.testing.assert_array_equal(np.load(repo / "again/train.npy"), first)
    other = np.load(repo / "other_seed/train.npy")
    np.testing.assert_allclose(other[:, 0], first[:, 0], rtol=1e-6)  # plain view unchanged
    assert not np.allclose(other[:, 1:], first[:, 1:], atol=1e-4)
    np.testing.assert_array_equal(
        np.load(repo / "other_seed/val.npy"), np.load(repo / "again/val.npy")
    )


def test_augmented_views_do_not_depend_on_the_batch_size(repo):
    _featurize(repo, "small_batches", batch_size=1)  # 1 image (3 views) per backbone call
    np.testing.assert_allclose(
        np.load(repo / "small_batches/train.npy"),
        np.load(repo / "data/features/train.npy"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_full_model_matches_head_on_cached_features(repo):
    """The image-to-probability model and the head on cached features agree."""
    head = build_head(32, 3, MODEL, seed=0)
    full = build_full_model(MODEL, 3, repo / "models/backbone/weights.h5", head=head)
    test = F.load_features(repo / "data/features", "test", repo / "data/split/test.csv")
    from_cache = head.predict(test.features[:, 0], verbose=0)
    ds = image_dataset(test.frame, (32, 32), "stretch", batch_size=2, root=repo)
    from_files = full.predict(ds.map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose(from_files, from_cache, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- loading


def test_load_features_returns_rows_in_manifest_order(repo):
    fs = F.load_features(repo / "data/features", "train", repo / "data/split/train.csv")
    assert isinstance(fs, F.FeatureSet)
    assert fs.features.shape == (5, 3, 32) and fs.views == 3 and fs.dim == 32 and len(fs) == 5
    np.testing.assert_array_equal(fs.labels, [0, 1, 2, 0, 1])
    assert fs.frame["path"].tolist() == pd.read_csv(repo / "data/split/train.csv")["path"].tolist()
    mapped = F.load_features(repo / "data/features", "val", repo / "data/split/val.csv", mmap=True)
    assert isinstance(mapped.features, np.memmap)


def test_load_features_rejects_a_changed_manifest(repo, tmp_path):
    frame = pd.read_csv(repo / "data/split/train.csv")
    changed = tmp_path / "train.csv"
    frame.iloc[:-1].to_csv(changed, index=False)
    with pytest.raises(ValueError, match=r"another version of .*train\.csv.*dvc repro featurize"):
        F.load_features(repo / "data/features", "train", changed)


def test_load_features_rejects_a_wrong_shape(repo, tmp_path):
    for name in ("val.json", "val.npy"):
        (tmp_path / name).write_bytes((repo / "data/features" / name).read_bytes())
    np.save(tmp_path / "val.npy", np.zeros((3, 1, 32), np.float32))
    with pytest.raises(ValueError, match=r"call for float32 \(2, 1, 32\).*dvc repro featurize"):
        F.load_features(tmp_path, "val", repo / "data/split/val.csv")


def test_load_features_missing_cache_names_the_fix(repo, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val\.npy not found: run `dvc repro featurize`"):
        F.load_features(tmp_path, "val", repo / "data/split/val.csv")


# ----------------------------------------------------------------------------- streaming


def test_writer_streams_batches_into_a_memory_map(repo, monkeypatch, tmp_path):
    opened = []
    real_open = np.lib.format.open_memmap

    def spy(path, *args, **kwargs):
        array = real_open(path, *args, **kwargs)
        opened.append((Path(path), kwargs.get("mode"), array.shape))
        return array

    monkeypatch.setattr(np.lib.format, "open_memmap", spy)
    extractor = build_feature_extractor(MODEL, repo / "models/backbone/weights.h5")
    frame = pd.read_csv(repo / "data/split/train.csv")
    sizes = [
        len(batch)
        for batch in F.iter_feature_batches(
            extractor, frame["path"].tolist(), (32, 32), "stretch", 2, 0, None, repo
        )
    ]
    assert sizes == [2, 2, 1]  # at most batch_size images in flight
    F.featurize_split(extractor, frame, tmp_path / "train.npy", MODEL, 2, progress=False, root=repo)
    assert len(opened) == 1
    tmp, mode, shape = opened[0]
    assert mode == "w+" and shape == (5, 1, 32)
    assert tmp.parent == tmp_path and tmp.name.startswith(".train.npy.")  # renamed afterwards
    assert not tmp.exists() and (tmp_path / "train.npy").is_file()


def test_batch_size_counts_backbone_inputs():
    assert images_per_batch(32, 4) == 8
    assert images_per_batch(32, 1) == 32
    assert images_per_batch(2, 4) == 1


def test_writer_refuses_too_few_rows_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="got 2 rows of features, expected 3"):
        F.write_features(tmp_path / "x.npy", iter([np.zeros((2, 1, 4), np.float32)]), (3, 1, 4))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- errors and datasets


def test_bad_file_is_a_clear_error_naming_it(repo, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    extractor = build_feature_extractor(MODEL, repo / "models/backbone/weights.h5")
    frame = pd.DataFrame({"path": [str(bad)], "label": [0]})
    with pytest.raises(ImageError, match=r"broken\.png: .*fix or remove the file"):
        F.featurize_split(extractor, frame, tmp_path / "x.npy", MODEL, 4, progress=False)
    assert not (tmp_path / "x.npy").exists()


def test_manifest_label_mismatch_is_refused(repo, tmp_path):
    frame = pd.read_csv(repo / "data/split/val.csv")
    frame.loc[0, "label"] = (frame.loc[0, "label"] + 1) % 3
    frame.to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(ValueError, match="data.classes in params.yaml"):
        featurize_manifests(
            {"val": tmp_path / "val.csv"}, tmp_path / "f", MODEL, FEATURIZE, None,
            class_names=CLASSES, root=repo, progress=False,
        )  # fmt: skip


def test_weights_for_another_backbone_are_refused(repo, tmp_path):
    with pytest.raises(ValueError, match="dvc repro fetch_weights featurize"):
        other = dataclasses.replace(random_weights(), backbone="resnet50")
        featurize_manifests({}, tmp_path, MODEL, FEATURIZE, None, other)


def test_image_dataset_yields_decoded_batches_and_labels(repo):
    frame = pd.read_csv(repo / "data/split/train.csv")
    batches = list(image_dataset(frame, (32, 32), "stretch", batch_size=2, root=repo))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 32, 32, 3)] * 2 + [(1, 32, 32, 3)]
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    np.testing.assert_array_equal(labels, frame["label"])
    expected = np.stack([load_resized(repo / p, (32, 32)) for p in frame["path"]])
    np.testing.assert_array_equal(images, expected)


def test_image_dataset_shuffle_and_augmentation_are_seeded(repo):
    frame = pd.read_csv(repo / "data/split/train.csv")

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        augmenter = build_augmenter(FEATURIZE.augmentation, seed)
        ds = image_dataset(
            frame, (32, 32), "stretch", 5, augmenter, shuffle=True, seed=seed, root=repo
        )
        x, y = next(iter(ds))
        return x.numpy(), y.numpy()

    (xa, ya), (xb, yb) = run(3), run(3)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert sorted(ya.tolist()) == sorted(frame["label"].tolist())
    assert xa.min() >= 0 and xa.max() <= 255


def augmentation(**values):
    """`featurize.augmentation` of `FEATURIZE` with `values` changed, checked by the schema."""
    values = {**FEATURIZE.augmentation.model_dump(), **values}
    return section("featurize", {"augmentation": values}).augmentation


def test_augmenter_follows_params():
    aug = build_augmenter(augmentation(translation=[0.1, 0.05]), 5)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomRotation", "RandomZoom", "RandomContrast", "RandomTranslation"]
    configs = [layer.get_config() for layer in aug.layers]
    factors = [
        configs[0]["factor"],
        configs[1]["height_factor"],
        configs[2]["factor"],
        configs[3]["height_factor"],
        configs[3]["width_factor"],
    ]
    # Keras keeps a scalar factor f as f or as the range (-f, f).
    assert [float(np.max(f)) for f in factors] == [0.2, 0.2, 0.2, 0.1, 0.05]
    assert configs[1]["width_factor"] is None  # zoom keeps the aspect ratio, as in the seed
    assert tuple(configs[2]["value_range"]) == (0, 255)
    assert [layer.seed for layer in aug.layers] == [5, 6, 7, 8]
    only = augmentation(rotation=0, zoom=0.1, contrast=0, translation=0)
    only_zoom = build_augmenter(only, 0)
    assert [type(layer).__name__ for layer in only_zoom.layers] == ["RandomZoom"]


# ----------------------------------------------------------------------------- stage and bench


def test_stage_help_names_its_params(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("stages/featurize.py").main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out and "`featurize`" in out and "weights.dir" in out


def test_stage_writes_features_from_params(repo, monkeypatch, capsys):
    params = {
        "data": {"classes": {f"class {i}": c for i, c in enumerate(CLASSES)}},
        "weights": {"dir": "models/backbone"},
        "model": MODEL.model_dump(),
        # float32: the cache it is compared with was made in float32 (auto may pick bfloat16)
        "featurize": {
            **FEATURIZE.model_dump(),
            "out_dir": "stage_features",
            "precision": "float32",
        },
        "split": {"out_dir": "data/split"},
    }
    (repo / "models/backbone/weights.json").write_text(json.dumps(WEIGHTS_META))
    (repo / "params.yaml").write_text(json.dumps(params))  # JSON is valid YAML
    monkeypatch.chdir(repo)
    assert load_script("stages/featurize.py").main(["--no-progress"]) == 0
    np.testing.assert_array_equal(
        np.load(repo / "stage_features/train.npy"), np.load(repo / "data/features/train.npy")
    )
    meta = json.loads((repo / "stage_features/test.json").read_text())
    assert meta["manifest"] == "data/split/test.csv"
    assert meta["weights_label"] == WEIGHTS_META["weights_label"]
    assert "WARNING: features computed with a RANDOM-INIT backbone" in capsys.readouterr().out


def test_stage_reports_missing_weights_clearly(repo, tmp_path, monkeypatch, capsys):
    params = {
        "data": {"classes": {f"class {i}": c for i, c in enumerate(CLASSES)}},
        "weights": {"dir": "nowhere"},
        "model": MODEL.model_dump(),
        "featurize": {**FEATURIZE.model_dump(), "out_dir": "f"},
        "split": {"out_dir": "data/split"},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    monkeypatch.chdir(tmp_path)
    assert load_script("stages/featurize.py").main([]) == 1
    assert "nowhere/weights.json not found" in capsys.readouterr().err


def test_bench_runs_on_a_small_folder(repo, tmp_path, capsys):
    params = {"model": MODEL.model_dump(), "featurize": FEATURIZE.model_dump()}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    argv = ["--data-dir", str(repo / "data/raw"), "--params", str(tmp_path / "params.yaml")]
    argv += ["--images", "6", "--repeats", "1"]
    assert load_script("bench/featurize_throughput.py").main(argv) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "raw backbone" in out
    assert "ratio" in out and "peak RSS" in out


def test_save_features_writes_what_load_features_accepts(tmp_path):
    rows = [manifest_row(f"img-{i}.png", i % 3, f"p{i}", "0" * 64) for i in range(4)]
    manifest = tmp_path / "split" / "train.csv"
    write_manifest(manifest, rows)
    x = np.arange(4 * 2 * 5, dtype=np.float64).reshape(4, 2, 5)
    info = F.save_features(tmp_path / "features", "train", x, manifest, random_weights())
    assert (info.rows, info.views, info.dim, info.weights.backbone) == (4, 2, 5, "tiny")
    loaded = F.load_features(tmp_path / "features", "train", manifest)
    np.testing.assert_array_equal(loaded.features, x.astype(np.float32))
    assert loaded.labels.tolist() == [0, 1, 2, 0] and loaded.views == 2
    write_manifest(manifest, rows[:3])  # the manifest changed: the cache no longer matches
    with pytest.raises(ValueError, match="another version"):
        F.load_features(tmp_path / "features", "train", manifest)
