"""The demo backbone `pet_demo`: the shipped file, its corpus, what it learned, and `auto`.

- the committed weights file matches the sha256 pinned in params.yaml and loads, layer by
  layer, into the `pet_demo` architecture (and `fetch_weights` installs it, labelled);
- the pretraining corpus and selection set share no patient id and no image with the demo;
- frozen, its pooled features let a linear probe tell the three classes apart on a small
  freshly generated set clearly better than a random-init backbone of the same shape;
- `model.backbone: auto` is the seed's InceptionResNetV2 exactly when the RadImageNet file
  is in place, else `pet_demo`, with each backbone's own input size and pre-processing.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import REPO

from petscan.demo import generate
from petscan.handoff import ground_truth, records
from petscan.handoff.records import DEMO_LABEL
from petscan.params import loading, schema
from petscan.params.inputs import WeightsParams
from petscan.utils.errors import ParamsError

# the shipped params as a machine without the RadImageNet file resolves them
PARAMS = schema.resolve_model(
    schema.validate(loading.load_params(REPO / "params.yaml")), lambda path: False
)
DEMO = PARAMS.weights.demo
DEMO_FILE = REPO / DEMO.path


def test_the_shipped_file_matches_its_pin_and_its_record():
    digest = hashlib.sha256(DEMO_FILE.read_bytes()).hexdigest()
    assert DEMO.sha256 == digest
    assert DEMO_FILE.stat().st_size <= 10 * 2**20
    record = json.loads(DEMO_FILE.with_suffix(".json").read_text())
    assert record["sha256"] == digest and record["backbone"] == "pet_demo"
    assert record["corpus"]["seed"] == PARAMS.pretrain.corpus.seed


def test_the_shipped_file_loads_into_the_backbone_and_changes_its_weights():
    import keras

    from petscan.model.backbones import build_backbone

    keras.utils.set_random_seed(0)
    fresh = build_backbone("pet_demo", (256, 160, 3))
    loaded = build_backbone("pet_demo", (256, 160, 3), DEMO_FILE)
    assert len(loaded.weights) == len(fresh.weights) > 20
    for a, b in zip(loaded.weights, fresh.weights, strict=True):
        assert a.shape == b.shape
    changed = [
        not np.allclose(a.numpy(), b.numpy())
        for a, b in zip(loaded.weights, fresh.weights, strict=True)
    ]
    assert all(changed[i] for i, w in enumerate(loaded.weights) if "kernel" in w.path)


def fetch_params(weights: WeightsParams) -> loading.StageParams:
    """The fetch_weights stage's view of PARAMS with `weights` in place."""
    from petscan.pipeline.fetch_weights import SECTIONS

    return loading.StageParams(PARAMS.model_copy(update={"weights": weights}), SECTIONS)


def test_fetch_weights_installs_the_demo_file_with_its_label(tmp_path):
    from petscan.pipeline.fetch_weights import fetch_weights

    weights = PARAMS.weights.model_copy(update={"dir": "backbone", "sources": []})
    meta = fetch_weights(fetch_params(weights), tmp_path, repo=REPO, progress=False)
    assert meta["backbone"] == "pet_demo" and meta["random_init"] is False
    assert meta["weights_label"] == DEMO_LABEL == records.banner(meta)
    assert (tmp_path / "backbone" / "weights.h5").read_bytes() == DEMO_FILE.read_bytes()


def test_a_changed_demo_file_is_refused_in_one_line(tmp_path):
    from petscan.pipeline.fetch_weights import fetch_weights
    from petscan.weights.errors import WeightsError

    copy = tmp_path / "demo.h5"
    copy.write_bytes(DEMO_FILE.read_bytes()[:-10] + b"0123456789")
    weights = PARAMS.weights.model_copy(
        update={"dir": "backbone", "demo": DEMO.model_copy(update={"path": str(copy)})}
    )
    with pytest.raises(WeightsError, match="weights.demo.sha256 pins") as err:
        fetch_weights(fetch_params(weights), tmp_path, repo=REPO, progress=False)
    assert "\n" not in str(err.value) and "make pretrain-demo" in str(err.value)
    assert not (tmp_path / "backbone" / "weights.h5").exists()


# --------------------------------------------------------------------------- the corpus


def demo_and_pretraining_plans():
    demo = generate.plan_patients(
        PARAMS.synthetic.counts, PARAMS.synthetic.seed, PARAMS.synthetic.images_per_patient
    )
    others = {}
    for name in ("corpus", "selection"):
        spec = getattr(PARAMS.pretrain, name)
        others[name] = generate.plan_patients(spec.counts, spec.seed, prefix=spec.prefix)
    return demo, others


def test_no_patient_id_of_the_demo_is_in_the_pretraining_corpora():
    demo, others = demo_and_pretraining_plans()
    demo_ids = {plan.patient for plan in demo}
    assert all(pid.startswith("pet-") for pid in demo_ids)
    for plans in others.values():
        assert demo_ids.isdisjoint(plan.patient for plan in plans)
    assert {p.patient for p in others["corpus"]}.isdisjoint(p.patient for p in others["selection"])


def test_no_image_of_the_demo_is_in_the_pretraining_corpus(tmp_path):
    """The first patients of each set, rendered: no file of one is byte-identical to one of
    the other (the demo and the corpus differ in their generator seed, not only their ids)."""
    counts = {"No cancer": 6, "breast cancer": 6, "prostate cancer": 6}
    hashes = {}
    for name, seed, prefix in (
        ("demo", PARAMS.synthetic.seed, "pet"),
        ("corpus", PARAMS.pretrain.corpus.seed, PARAMS.pretrain.corpus.prefix),
    ):
        frame = generate.generate(
            tmp_path / name, counts, seed, base_height=96, workers=1, progress=False, prefix=prefix
        )
        hashes[name] = {
            hashlib.sha256(
                (tmp_path / name / folder / path.rsplit("/", 1)[-1]).read_bytes()
            ).hexdigest()
            for folder, path in zip(frame["folder"], frame["path"], strict=True)
        }
    assert len(hashes["demo"]) == len(hashes["corpus"]) == 18
    assert hashes["demo"].isdisjoint(hashes["corpus"])


def test_the_schema_refuses_a_pretraining_corpus_that_could_be_the_demo():
    raw = {"pretrain": {"corpus": {**PARAMS.pretrain.corpus.model_dump(), "seed": 2024}}}
    with pytest.raises(ParamsError, match="pretrain.corpus must not share"):
        schema.validate(raw)
    raw = {"pretrain": {"selection": {**PARAMS.pretrain.selection.model_dump(), "prefix": "pet"}}}
    with pytest.raises(ParamsError, match="pretrain.selection must not share"):
        schema.validate(raw)


# --------------------------------------------------------------------------- it learned


def probe_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    proba = cross_val_predict(
        probe, features, labels, groups=groups, cv=folds, method="predict_proba"
    )
    return float(roc_auc_score(labels, proba, multi_class="ovr"))


def test_frozen_pretrained_features_separate_the_classes_far_above_random_init(tmp_path):
    """90 images of a set neither the demo nor the pretraining saw (its own seed). Measured:
    0.741 against 0.641 for the same network with random weights (seeded, so repeatable)."""
    import keras

    from petscan.demo.pretrain import load_corpus
    from petscan.model.network import build_feature_extractor

    counts = {"No cancer": 30, "breast cancer": 30, "prostate cancer": 30}
    generate.generate(tmp_path / "set", counts, 9090, workers=2, progress=False, prefix="tst")
    corpus = load_corpus(tmp_path / "set", (256, 160), 0.7)
    model_params = PARAMS.model
    assert model_params.backbone == "pet_demo"  # resolved without the RadImageNet file
    aucs = {}
    for name, weights in (("pretrained", DEMO_FILE), ("random", None)):
        keras.utils.set_random_seed(0)
        extractor = build_feature_extractor(model_params, weights)
        features = extractor.predict(corpus.images.astype("float32"), verbose=0)
        aucs[name] = probe_auc(features, corpus.label, corpus.patients)
    assert aucs["pretrained"] >= 0.70, aucs
    assert aucs["pretrained"] >= aucs["random"] + 0.07, aucs


# --------------------------------------------------------------------------- auto


@pytest.mark.parametrize("present", [True, False])
def test_auto_is_the_seed_backbone_exactly_when_the_radimagenet_file_is_there(present):
    raw = schema.validate({})
    resolved = schema.resolve_model(raw, lambda path: present and path.endswith("IRV2_notop.h5"))
    model = resolved.model
    if present:
        assert model.backbone == "inception_resnet_v2"
        assert model.input_size == [224, 224] and model.preprocessing == "radimagenet"
    else:
        assert model.backbone == "pet_demo"
        assert model.input_size == [256, 160] and model.preprocessing == "rescale"


def test_a_named_backbone_and_explicit_sizes_are_kept():
    raw = schema.validate({"model": {"backbone": "inception_resnet_v2", "input_size": [299, 299]}})
    model = schema.resolve_model(raw, lambda path: False).model
    assert model.backbone == "inception_resnet_v2"  # no file: a labelled random init later
    assert model.input_size == [299, 299] and model.preprocessing == "radimagenet"


def test_each_backbone_has_its_defaults_and_pet_demo_its_own_numbers():
    """The schema's `BACKBONE_DEFAULTS` (params cannot import the model) agree with the
    backbones the model knows and with the `pet_demo` module's own input and pre-processing."""
    from petscan.model import pet_demo
    from petscan.model.backbones import BACKBONES
    from petscan.params.inputs import BACKBONE_DEFAULTS

    assert set(BACKBONE_DEFAULTS) == set(BACKBONES)
    assert BACKBONE_DEFAULTS[pet_demo.NAME] == (pet_demo.INPUT_SIZE, pet_demo.PREPROCESSING)


def test_every_backbone_but_radimagenet_is_labelled():
    assert records.banner({"random_init": False, "weights_label": DEMO_LABEL}) == DEMO_LABEL
    assert records.banner({"random_init": "false", "weights_label": DEMO_LABEL}) == DEMO_LABEL
    assert records.banner({"random_init": False, "weights_label": "RadImageNet"}) is None


# --------------------------------------------------------------------------- reproducible


def test_pretraining_twice_gives_the_same_weights_and_metrics(tmp_path):
    """`make pretrain-demo` in small: the same params give the same record, bit for bit."""
    from petscan.demo.pretrain import run_pretrain

    counts = {"No cancer": 10, "breast cancer": 10, "prostate cancer": 10}
    pretrain = PARAMS.pretrain
    small = pretrain.model_copy(
        update={
            "corpus": pretrain.corpus.model_copy(update={"counts": counts}),
            "selection": pretrain.selection.model_copy(update={"counts": counts}),
            "epochs": 2,
            "batch_size": 8,
            "val_share": 0.2,
        }
    )
    records = [
        run_pretrain(small, 96, tmp_path / f"run{i}" / "b.h5", tmp_path / "corpora") for i in (1, 2)
    ]
    for key in ("history", "val_scores", "selection_probe_auc_macro", "corpus", "train_images"):
        assert records[0][key] == records[1][key], key
    assert records[0]["corpus"]["images"] == 30 and records[0]["history"]["loss"][0] > 0

    import h5py

    def tensors(path):
        found = {}

        def keep(name, obj):
            if isinstance(obj, h5py.Dataset):
                found[name] = obj[()]

        with h5py.File(path) as fh:
            fh["model_weights"].visititems(keep)
        return found

    first, second = (tensors(tmp_path / f"run{i}" / "b.h5") for i in (1, 2))
    assert first.keys() == second.keys() and len(first) > 20
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_a_corpus_is_reused_only_for_the_same_spec(tmp_path):
    from petscan.demo.pretrain import make_corpus

    counts = {"No cancer": 2, "breast cancer": 2}
    spec = schema.section("pretrain", {"corpus": {"seed": 7001, "prefix": "syn", "counts": counts}})
    spec = spec.corpus
    folder = make_corpus(tmp_path / "corpus", spec, 96)
    truth = (folder / ground_truth.TRUTH_FILE).read_bytes()
    stamp = (folder / ground_truth.TRUTH_FILE).stat().st_mtime_ns
    make_corpus(folder, spec, 96)
    assert (folder / ground_truth.TRUTH_FILE).stat().st_mtime_ns == stamp  # reused
    make_corpus(folder, spec.model_copy(update={"seed": 7003}), 96)
    assert (folder / ground_truth.TRUTH_FILE).read_bytes() != truth  # another seed: regenerated
