"""fetch_weights: sources, file checks, fallbacks, the stage. No internet: sources are local
files and fake Kaggle / Hugging Face clients; weights files are written with the `tiny`
backbone (the https downloads are tested in test_weights_http)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
import sys
import types
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import load_script

from petscan.handoff import records as handoff
from petscan.model import backbones
from petscan.params import schema
from petscan.params.loading import StageParams
from petscan.pipeline import fetch_weights as stage
from petscan.utils.errors import ParamsError
from petscan.weights import checks, sources, transfer
from petscan.weights.errors import WeightsError

SHAPE = (32, 32, 3)
REV = "0123456789abcdef0123456789abcdef01234567"  # a pinned hub revision
MODEL = {"backbone": "tiny", "input_size": [32, 32]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_h5_files(folder: Path) -> dict[str, Path]:
    """tiny backbone weights, another small model, and the tiny backbone with a top."""
    keras.utils.set_random_seed(7)
    tiny = backbones.build_backbone("tiny", SHAPE)
    tiny.save(folder / "tiny.h5")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(4, name="dense_a")(x)
    keras.Model(inputs, keras.layers.Dense(2, name="dense_b")(x)).save(folder / "other.h5")
    x = keras.layers.GlobalAveragePooling2D()(tiny.output)
    top = keras.layers.Dense(1000, name="predictions")(x)
    keras.Model(tiny.input, top).save(folder / "top.h5")
    return {name: folder / f"{name}.h5" for name in ("tiny", "other", "top")}


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory) -> dict[str, Path]:
    return write_h5_files(tmp_path_factory.mktemp("h5"))


def params(*entries, fallback="none", **extra) -> dict:
    """A `weights` section as written in params.yaml, with `entries` as its sources."""
    base = {
        "dir": "out",
        "sha256": None,
        "sources": list(entries),
        "fallback": fallback,
        "timeout_s": 5,
        "retries": 2,
        "retry_wait_s": 0,
        "max_download_mb": 64,
        "deadline_s": 60,
        "ca_bundle": None,
        "seed": 101,
    }
    return {**base, **extra}


def stage_params(wp: dict, model: dict = MODEL) -> StageParams:
    """The params the stage reads, validated by the schema as `params.yaml` would be."""
    return StageParams(schema.validate({"weights": wp, "model": model}), stage.SECTIONS)


def fetch(tmp_path: Path, wp: dict, model: dict = MODEL, **kwargs) -> dict:
    """The stage's work with `tmp_path` as both the workspace and the repository root."""
    return stage.fetch_weights(
        stage_params(wp, model), tmp_path, repo=tmp_path, progress=False, **kwargs
    )


def install_fake_kaggle(monkeypatch: pytest.MonkeyPatch, api_class: type) -> None:
    """Make `import kaggle.api.kaggle_api_extended` give a module whose KaggleApi is
    `api_class` (the kaggle package is not installed in tests)."""
    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = api_class
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)


def assert_nothing_installed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not (out / "weights.h5").exists()
    assert not (out / "weights.json").exists()
    assert not (out / ".weights.candidate.h5").exists()


# --------------------------------------------------------------------------- sources


def test_file_source_relative_to_root_installs_checked_file(tmp_path, h5_files):
    data = h5_files["tiny"].read_bytes()
    (tmp_path / "RadImageNet-IRV2_notop.h5").write_bytes(data)
    wp = params({"type": "file", "path": "RadImageNet-IRV2_notop.h5"}, sha256=sha(data))
    meta = fetch(tmp_path, wp)
    installed = tmp_path / "out" / "weights.h5"
    assert installed.read_bytes() == data
    assert meta["weights_source"] == f"file:{tmp_path / 'RadImageNet-IRV2_notop.h5'}"
    assert meta["weights_sha256"] == sha(data)
    assert (meta["random_init"], meta["weights_label"], meta["backbone"]) == (
        False,
        "RadImageNet",
        "tiny",
    )
    # tiny: 3 conv (kernel, bias) + 3 batch norms (4 tensors) = 6 layers, 18 tensors
    assert (meta["layers"], meta["tensors"]) == (6, 18)
    assert meta["checked_tensors"] == [
        "tiny_conv0/kernel",
        "tiny_bn1/beta",  # tensor 18 // 2 = 9: conv0 2 + bn0 4 + conv1 2, gamma, beta
        "tiny_bn2/moving_variance",
    ]
    assert handoff.read_weights_meta(tmp_path / "out") == meta
    assert not meta["random_init"] and handoff.banner(meta) is None
    model = backbones.build_backbone("tiny", SHAPE, weights=installed)
    with h5py.File(h5_files["tiny"]) as fh:
        kernel = fh["model_weights/tiny_conv2/tiny_conv2/kernel"][()]
    np.testing.assert_array_equal(model.get_layer("tiny_conv2").kernel.numpy(), kernel)


def test_file_source_expands_home(tmp_path, h5_files, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    meta = fetch(tmp_path, params({"type": "file", "path": "~/w.h5"}))
    assert meta["weights_source"] == f"file:{tmp_path / 'home' / 'w.h5'}"


def test_current_install_is_skipped_and_redone_when_settings_or_file_change(
    tmp_path, h5_files, caplog
):
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    wp = params({"type": "file", "path": "w.h5"})
    first = fetch(tmp_path, wp)
    stamp = (tmp_path / "out" / "weights.h5").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="petscan.pipeline.fetch_weights")
    assert fetch(tmp_path, wp) == first
    assert (tmp_path / "out" / "weights.h5").stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text
    (tmp_path / "out" / "weights.h5").write_bytes(b"tampered")
    again = fetch(tmp_path, wp)
    assert (tmp_path / "out" / "weights.h5").read_bytes() == h5_files["tiny"].read_bytes()
    assert again["weights_sha256"] == first["weights_sha256"]
    # a changed expectation is a changed setting: the wrong checksum now fails
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch(tmp_path, {**wp, "sha256": "0" * 64})


def test_wrong_architecture_and_classification_top_are_described(tmp_path, h5_files):
    for name in ("other", "top"):
        (tmp_path / f"{name}.h5").write_bytes(h5_files[name].read_bytes())
    wp = params({"type": "file", "path": "other.h5"}, {"type": "file", "path": "top.h5"})
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path, wp)
    lines = str(err.value).splitlines()
    assert (
        "a Keras model with 2 layers holding 4 weight tensors (layers named like dense_a, dense_b)"
        in lines[1]
    )
    assert "backbone 'tiny' needs 6 layers holding 18 weight tensors" in lines[1]
    assert "7 layers holding 20 weight tensors" in lines[2]
    assert (
        "a file with a classification top (last layer 'predictions': Dense 32 -> 1000)" in lines[2]
    )


def test_same_layer_count_with_other_shapes_does_not_load(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, filters in enumerate((4, 4, 4)):  # tiny has 8, 16, 32 filters
        x = keras.layers.Conv2D(filters, 3, name=f"c{i}")(x)
        x = keras.layers.BatchNormalization(name=f"b{i}")(x)
    keras.Model(inputs, x).save(tmp_path / "narrow.h5")
    with pytest.raises(WeightsError, match="does not load into backbone 'tiny'"):
        checks.check_weights(tmp_path / "narrow.h5", "tiny", SHAPE)


def test_check_weights_describes_non_keras_hdf5(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh["data"] = np.zeros(3)
    with pytest.raises(WeightsError, match=r"not a legacy Keras model .*\['data'\]"):
        checks.check_weights(tmp_path / "x.h5", "tiny", SHAPE)


def test_missing_optional_clients_say_how_to_install(tmp_path, monkeypatch):
    for module in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended", "huggingface_hub"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails with ImportError
    wp = params(
        {"type": "kaggle", "dataset": "owner/set", "file": "w.h5"},
        {
            "type": "huggingface",
            "repo_id": "someone/radimagenet",
            "filename": "w.h5",
            "revision": REV,
        },
        sha256="ab" * 32,
    )
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path, wp)
    lines = str(err.value).splitlines()
    assert lines[1] == (
        "  1. kaggle owner/set/w.h5: the optional 'kaggle' client is not installed: "
        "pip install 'petscan[kaggle]'"
    )
    assert lines[2].endswith(
        "the optional 'huggingface_hub' client is not installed: pip install 'petscan[hub]'"
    )


def test_kaggle_and_hub_clients_are_used_when_present(tmp_path, h5_files, monkeypatch):
    data = h5_files["tiny"].read_bytes()
    calls = []

    class KaggleApi:
        def authenticate(self):
            calls.append("auth")

        def dataset_download_file(self, dataset, file_name, path, force, quiet):
            calls.append((dataset, file_name))
            with zipfile.ZipFile(Path(path) / f"{file_name}.zip", "w") as zf:  # old clients zip
                zf.writestr(file_name, data)

    install_fake_kaggle(monkeypatch, KaggleApi)
    meta = fetch(
        tmp_path, params({"type": "kaggle", "dataset": "o/s", "file": "w.h5"}, sha256=sha(data))
    )
    assert calls == ["auth", ("o/s", "w.h5")]
    assert meta["weights_source"] == "kaggle:o/s/w.h5" and meta["weights_sha256"] == sha(data)

    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_download = lambda repo_id, filename, revision, repo_type: str(h5_files["tiny"])
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    source = {"type": "huggingface", "repo_id": "a/b", "filename": "w.h5", "label": "Hub copy"}
    with pytest.raises(WeightsError, match="revision must pin a commit"):
        fetch(tmp_path / "hub", params({**source, "revision": "main"}, sha256=sha(data)))
    meta = fetch(tmp_path / "hub", params({**source, "revision": REV}, sha256=sha(data)))
    assert (meta["weights_source"], meta["weights_label"]) == (
        f"huggingface:a/b/w.h5@{REV}",
        "Hub copy",
    )


def test_kaggle_without_credentials(tmp_path, monkeypatch):
    class KaggleApi:
        def authenticate(self):
            raise OSError("Could not find kaggle.json")

    install_fake_kaggle(monkeypatch, KaggleApi)
    with pytest.raises(WeightsError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        fetch(
            tmp_path, params({"type": "kaggle", "dataset": "o/s", "file": "w.h5"}, sha256="a" * 64)
        )


# --------------------------------------------------------------------------- fallbacks


ALL_FAIL = (
    {"type": "file", "path": "RadImageNet-IRV2_notop.h5"},
    {"type": "url", "url": None},
    {"type": "huggingface", "repo_id": None, "filename": "x.h5"},
    {"type": "kaggle", "dataset": "o/s", "file": None},
)


def test_all_sources_failing_with_fallback_none_lists_each(tmp_path):
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path, params(*ALL_FAIL, fallback="none"))
    lines = str(err.value).splitlines()
    target = tmp_path / "RadImageNet-IRV2_notop.h5"
    assert lines[:5] == [
        "no backbone weights for 'tiny': every weights.sources entry failed",
        f"  1. file RadImageNet-IRV2_notop.h5: not found at {target}",
        "  2. url: skipped: url is null",
        "  3. huggingface x.h5: skipped: repo_id is null",
        "  4. kaggle o/s: skipped: file is null",
    ]
    assert f"cp RadImageNet-IRV2_notop.h5 {target}" in lines[5]
    assert "weights.fallback: random" in lines[6]
    assert_nothing_installed(tmp_path)
    # a source of an unknown type is refused by the schema, before any source is tried
    ftp = {"type": "ftp", "url": "ftp://x"}
    with pytest.raises(ParamsError) as err:
        fetch(tmp_path / "ftp", params(*ALL_FAIL, ftp, fallback="none"))
    assert str(err.value).endswith(
        "weights.sources[4]: unknown type 'ftp' ('file', 'url', 'kaggle', 'huggingface')"
    )
    assert not (tmp_path / "ftp").exists()


def test_random_fallback_is_labelled_loadable_and_deterministic(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="petscan.pipeline.fetch_weights")
    meta = fetch(tmp_path / "a", params(*ALL_FAIL, fallback="random", seed=5))
    assert meta["random_init"] is True
    assert meta["weights_label"] == "RANDOM-INIT backbone (not RadImageNet)" == handoff.RANDOM_LABEL
    assert meta["weights_source"] == "random"
    assert handoff.banner(meta) == handoff.RANDOM_LABEL
    assert any(
        r.levelname == "WARNING" and "RANDOMLY INITIALISED" in r.message for r in caplog.records
    )
    assert "1. file RadImageNet-IRV2_notop.h5: not found" in caplog.text
    assert "set weights.fallback: random" not in caplog.text  # it already is
    on_disk = json.loads((tmp_path / "a" / "out" / "weights.json").read_text())
    assert on_disk["random_init"] is True and on_disk["weights_label"] == handoff.RANDOM_LABEL
    path = tmp_path / "a" / "out" / "weights.h5"
    loaded = backbones.build_backbone("tiny", SHAPE, weights=path).get_weights()
    same = fetch(tmp_path / "b", params(*ALL_FAIL, fallback="random", seed=5))
    other = fetch(tmp_path / "c", params(*ALL_FAIL, fallback="random", seed=6))
    assert same["weights_sha256"] == meta["weights_sha256"] != other["weights_sha256"]
    # identical inputs, byte-identical outputs (DVC then sees the same folder hash)
    for name in ("weights.h5", "weights.json"):
        first, second = (tmp_path / d / "out" / name for d in ("a", "b"))
        assert first.read_bytes() == second.read_bytes(), name
    again = backbones.build_backbone("tiny", SHAPE, weights=tmp_path / "b" / "out" / "weights.h5")
    for a, b in zip(loaded, again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_random_install_is_replaced_once_the_real_file_appears(tmp_path, h5_files):
    wp = params({"type": "file", "path": "w.h5"}, fallback="random")
    assert fetch(tmp_path, wp)["random_init"] is True
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    meta = fetch(tmp_path, wp)
    assert meta["random_init"] is False and meta["weights_label"] == "RadImageNet"


def test_imagenet_fallback_explains_it_needs_weights_it_cannot_get(tmp_path):
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        fetch(tmp_path, params(fallback="imagenet"))
    with pytest.raises(ParamsError, match="weights.fallback = 'maybe': input should be 'none',"):
        fetch(tmp_path, params(fallback="maybe"))


def test_read_weights_meta_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro fetch_weights`"):
        handoff.read_weights_meta(tmp_path)
    (tmp_path / "weights.json").write_text('{"backbone": "tiny"}')
    with pytest.raises(ValueError, match="lacks"):
        handoff.read_weights_meta(tmp_path)


# --------------------------------------------------------------------------- the stage


def test_stage_help_and_run(tmp_path, monkeypatch, capsys, h5_files):
    script = load_script("stages/fetch_weights.py")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0 and "--params" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    text = (
        "weights: {dir: models/backbone, sha256: null, fallback: none, timeout_s: 5,"
        " retries: 0, seed: 1, sources: [{type: file, path: w.h5}]}\n"
        "model: {backbone: tiny, input_size: [32, 32], head_units: 8}\n"
    )
    (tmp_path / "params.yaml").write_text(text)
    assert script.main(["--no-progress"]) == 1
    assert "1. file w.h5: not found" in capsys.readouterr().err
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    assert script.main(["--no-progress"]) == 0
    assert "backbone tiny: RadImageNet from file:" in capsys.readouterr().out
    assert handoff.read_weights_meta(tmp_path / "models/backbone")["backbone"] == "tiny"


@pytest.mark.slow
def test_full_size_inception_resnet_v2_random_fallback(tmp_path):
    model = {"backbone": "inception_resnet_v2", "input_size": [75, 75]}  # smallest input
    wp = params(fallback="random", seed=3)
    meta = fetch(tmp_path, wp, model)
    # InceptionResNetV2 no-top: 448 layers with weights, 896 tensors (ecosystem notes)
    assert (meta["layers"], meta["tensors"], meta["random_init"]) == (448, 896, True)
    # Keras numbers auto-named layers per process (conv2d, conv2d_207, ...): match the stem
    assert re.fullmatch(r"conv2d(_\d+)?/kernel", meta["checked_tensors"][0])
    assert meta["size_bytes"] > 200_000_000


def test_wrong_files_are_described_by_type_and_size_never_by_content(tmp_path):
    (tmp_path / "kaggle.json").write_text('{"username": "me", "key": "S3CRET"}')
    (tmp_path / "notes.txt").write_text("password=S3CRET\n")
    (tmp_path / "blob").write_bytes(b"S3CRET\x00\x01\x02")
    assert (
        checks.describe_file(tmp_path / "kaggle.json") == "a JSON text file of 35 bytes, not HDF5"
    )
    assert checks.describe_file(tmp_path / "notes.txt") == "a text file of 16 bytes, not HDF5"
    assert checks.describe_file(tmp_path / "blob") == "9 bytes of binary data that is not HDF5"


# --------------------------------------------------------------------------- Kaggle archives


def kaggle_client(monkeypatch, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> None:
    """A fake Kaggle client whose download is a zip with `members` (old clients zip)."""

    class KaggleApi:
        def authenticate(self):
            pass

        def dataset_download_file(self, dataset, file_name, path, force, quiet):
            with zipfile.ZipFile(Path(path) / f"{file_name}.zip", "w") as zf:
                for info, data in members:
                    zf.writestr(info, data)

    install_fake_kaggle(monkeypatch, KaggleApi)


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_zip_slip_members_never_touch_files_outside(tmp_path, h5_files, monkeypatch):
    data = h5_files["tiny"].read_bytes()
    victim = tmp_path / "home" / "thesis" / "w.h5"  # a user's file with the wanted name
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"three years of work")
    work = tmp_path / "repo"
    depth = len(work.joinpath("out", ".kaggle-xxxx").parts) - 1
    evil = [
        (str(victim), b"absolute"),  # zipfile stores it as given
        ("../" * depth + str(victim.relative_to("/")), b"climbing"),
        ("..\\..\\w.h5", b"backslashes"),
        (symlink_member("link/w.h5", str(victim)), str(victim).encode()),
    ]
    kaggle_client(monkeypatch, evil)
    source = {"type": "kaggle", "dataset": "o/s", "file": "w.h5"}
    with pytest.raises(WeightsError) as err:
        fetch(work, params(source, sha256=sha(data)))
    assert "holds 0 safe members named w.h5 (4 members, 4 refused" in str(err.value)
    assert victim.read_bytes() == b"three years of work"
    assert_nothing_installed(work)
    assert [p.name for p in (work / "out").iterdir()] == []  # the temp dir is gone too
    # with one regular member among them, that one (and only its bytes) is used
    kaggle_client(monkeypatch, [*evil, ("RadImageNet/w.h5", data)])
    meta = fetch(work, params(source, sha256=sha(data)))
    assert meta["weights_sha256"] == sha(data) and meta["weights_source"] == "kaggle:o/s/w.h5"
    assert victim.read_bytes() == b"three years of work"


def test_zip_member_above_the_cap_is_refused(tmp_path, monkeypatch):
    kaggle_client(monkeypatch, [("w.h5", b"\0" * 300_000)])
    source = {"type": "kaggle", "dataset": "o/s", "file": "w.h5"}
    with pytest.raises(WeightsError, match="300000 bytes in the archive, more than"):
        fetch(tmp_path, params(source, sha256="0" * 64, max_download_mb=0.1))


# --------------------------------------------------------------------------- one failing source


def corrupt_kaggle_client(monkeypatch) -> None:
    """A Kaggle client whose download is a corrupt zip (zipfile raises BadZipFile)."""

    class KaggleApi:
        def authenticate(self):
            pass

        def dataset_download_file(self, dataset, file_name, path, force, quiet):
            (Path(path) / f"{file_name}.zip").write_bytes(b"PK\x03\x04 not really a zip" * 10)

    install_fake_kaggle(monkeypatch, KaggleApi)


def exploding_kaggle_client(monkeypatch, error: Exception) -> None:
    """A Kaggle client that authenticates, then its `_kaggle_result` step raises `error`."""
    kaggle_client(monkeypatch, [("w.h5", b"x")])

    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(sources, "_kaggle_result", explode)


@pytest.mark.parametrize(
    ("make_failure", "reason"),
    [
        (corrupt_kaggle_client, "BadZipFile: File is not a zip file"),
        (
            lambda mp: exploding_kaggle_client(mp, OSError(5, "Input/output error")),
            "OSError: [Errno 5] Input/output error",
        ),
        (
            lambda mp: exploding_kaggle_client(mp, KeyError("members\nsecond line")),
            "KeyError: 'members\\nsecond line'",
        ),
    ],
    ids=["corrupt-zip", "oserror", "generic"],
)
def test_any_failing_source_is_recorded_and_the_next_one_is_tried(
    tmp_path, h5_files, monkeypatch, make_failure, reason
):
    data = h5_files["tiny"].read_bytes()
    (tmp_path / "w.h5").write_bytes(data)
    make_failure(monkeypatch)
    kaggle = {"type": "kaggle", "dataset": "o/s", "file": "w.h5"}
    meta = fetch(tmp_path, params(kaggle, {"type": "file", "path": "w.h5"}, sha256=sha(data)))
    assert meta["weights_source"] == f"file:{tmp_path / 'w.h5'}"
    assert meta["weights_sha256"] == sha(data)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.h5", "weights.json"]
    # without the file source, the failure is one line of the report, then the fallback
    (tmp_path / "w.h5").unlink()
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path / "b", params(kaggle, sha256=sha(data)))
    lines = str(err.value).splitlines()
    assert lines[1] == f"  1. kaggle o/s/w.h5: {reason}"
    assert lines[2].startswith("To place the file by hand")
    assert_nothing_installed(tmp_path / "b")
    meta = fetch(tmp_path / "c", params(kaggle, sha256=sha(data), fallback="random"))
    assert meta["weights_source"] == "random"


def test_ctrl_c_in_a_source_is_not_a_source_failure(tmp_path, h5_files, monkeypatch):
    exploding_kaggle_client(monkeypatch, KeyboardInterrupt())
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    kaggle = {"type": "kaggle", "dataset": "o/s", "file": "w.h5"}
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path, params(kaggle, {"type": "file", "path": "w.h5"}, sha256="a" * 64))
    assert_nothing_installed(tmp_path)


def full_disk_pump(monkeypatch) -> None:
    """Every copy of a weights file writes to /dev/full (ENOSPC on the first write)."""
    real = transfer.pump

    def pump(source, sink, bar, **kwargs):
        with open("/dev/full", "wb", buffering=0) as full:
            return real(source, full, bar, **kwargs)

    monkeypatch.setattr(transfer, "pump", pump)


def test_a_full_disk_stops_the_chain_with_one_line(tmp_path, h5_files, monkeypatch, capsys):
    script = load_script("stages/fetch_weights.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    text = (
        "weights: {dir: models/backbone, sha256: null, fallback: random, timeout_s: 5,"
        " retries: 0, seed: 1, sources: [{type: file, path: w.h5}, {type: file, path: w.h5}]}\n"
        "model: {backbone: tiny, input_size: [32, 32], head_units: 8}\n"
    )
    (tmp_path / "params.yaml").write_text(text)
    full_disk_pump(monkeypatch)
    assert script.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    candidate = tmp_path / "models/backbone/.weights.candidate.h5"
    assert err == (
        f"fetch_weights: error: cannot write {candidate}: No space left on device; free space "
        "on that disk (or raise your quota) and rerun\n"
    )
    assert not (tmp_path / "models/backbone/weights.h5").exists()
    assert not candidate.exists()
