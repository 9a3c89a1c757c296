"""fetch_weights: sources, resumable downloads, file checks, fallbacks. No internet: a local
HTTP server on 127.0.0.1 serves weights files the tests write with the `tiny` backbone."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import load_script

from petscan import backbones, weights

SHAPE = (32, 32, 3)
MODEL = {"backbone": "tiny", "input_size": [32, 32]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory) -> dict[str, Path]:
    """tiny backbone weights, another small model, and the tiny backbone with a top."""
    folder = tmp_path_factory.mktemp("h5")
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


class Server:
    """Serves `routes[path] = (body, content_type, mode)`; mode: ok | cut_first |
    always_cut | no_range. Records (path, Range header) of every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str, str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer.requests.append((self.path, self.headers.get("Range")))
                path = self.path.split("?")[0]
                if path not in outer.routes:
                    self.send_error(404)
                    return
                body, ctype, mode = outer.routes[path]
                first = sum(1 for p, _ in outer.requests if p.split("?")[0] == path) == 1
                start = 0
                rng = self.headers.get("Range")
                if rng and mode != "no_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = mode == "always_cut" or (mode == "cut_first" and first)
                end = start + (len(body) - start) // 2 if cut else len(body)
                self.wfile.write(body[start:end])

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def params(*sources, fallback="none", **extra) -> dict:
    base = {
        "dir": "out",
        "sha256": None,
        "sources": list(sources),
        "fallback": fallback,
        "timeout_s": 5,
        "retries": 2,
        "retry_wait_s": 0,
        "seed": 101,
    }
    return {**base, **extra}


def fetch(tmp_path: Path, wp: dict, **kwargs) -> dict:
    return weights.fetch_weights(
        wp, MODEL, workspace=tmp_path, root=tmp_path, progress=False, **kwargs
    )


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
    assert meta["source"] == f"file:{tmp_path / 'RadImageNet-IRV2_notop.h5'}"
    assert meta["sha256"] == sha(data)
    assert (meta["random_init"], meta["label"], meta["backbone"]) == (False, "RadImageNet", "tiny")
    # tiny: 3 conv (kernel, bias) + 3 batch norms (4 tensors) = 6 layers, 18 tensors
    assert (meta["layers"], meta["tensors"]) == (6, 18)
    assert meta["checked_tensors"] == [
        "tiny_conv0/kernel",
        "tiny_bn1/beta",  # tensor 18 // 2 = 9: conv0 2 + bn0 4 + conv1 2, gamma, beta
        "tiny_bn2/moving_variance",
    ]
    assert weights.load_weights_meta(tmp_path / "out") == meta
    assert not weights.is_random_init(meta) and weights.warning_banner(meta) is None
    model = backbones.build_backbone("tiny", SHAPE, weights=installed)
    with h5py.File(h5_files["tiny"]) as fh:
        kernel = fh["model_weights/tiny_conv2/tiny_conv2/kernel"][()]
    np.testing.assert_array_equal(model.get_layer("tiny_conv2").kernel.numpy(), kernel)


def test_file_source_expands_home(tmp_path, h5_files, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    meta = fetch(tmp_path, params({"type": "file", "path": "~/w.h5"}))
    assert meta["source"] == f"file:{tmp_path / 'home' / 'w.h5'}"


def test_current_install_is_skipped_and_redone_when_settings_or_file_change(
    tmp_path, h5_files, caplog
):
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    wp = params({"type": "file", "path": "w.h5"})
    first = fetch(tmp_path, wp)
    stamp = (tmp_path / "out" / "weights.h5").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="petscan.weights")
    assert fetch(tmp_path, wp) == first
    assert (tmp_path / "out" / "weights.h5").stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text
    (tmp_path / "out" / "weights.h5").write_bytes(b"tampered")
    again = fetch(tmp_path, wp)
    assert (tmp_path / "out" / "weights.h5").read_bytes() == h5_files["tiny"].read_bytes()
    assert again["sha256"] == first["sha256"]
    # a changed expectation is a changed setting: the wrong checksum now fails
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        fetch(tmp_path, {**wp, "sha256": "0" * 64})


def test_url_download_verifies_sha256_and_leaves_no_part(tmp_path, h5_files, server):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    url = f"{server.url}/w.h5"
    meta = fetch(tmp_path, params({"type": "url", "url": url}, sha256=sha(data)))
    assert meta["source"] == f"url:{url}" and meta["sha256"] == sha(data)
    assert (tmp_path / "out" / "weights.h5").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.h5", "weights.json"]


def test_cut_connection_resumes_with_range(tmp_path, h5_files, server):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "cut_first")
    dest = tmp_path / "w.h5"
    digest = weights.download(f"{server.url}/w.h5", dest, retries=2, retry_wait_s=0, progress=False)
    assert dest.read_bytes() == data and digest == sha(data)
    assert server.requests == [("/w.h5", None), ("/w.h5", f"bytes={len(data) // 2}-")]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    data = bytes(range(256)) * 40
    server.routes["/b"] = (data, "application/octet-stream", "no_range")
    dest = tmp_path / "b.bin"
    part = dest.with_name(f"b.bin.{hashlib.sha1(f'{server.url}/b'.encode()).hexdigest()[:10]}.part")
    part.write_bytes(b"garbage from an older attempt")
    weights.download(f"{server.url}/b", dest, retries=0, progress=False)
    assert dest.read_bytes() == data and not part.exists()


def test_always_cut_fails_clearly_without_final_file(tmp_path, h5_files, server):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "always_cut")
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, params({"type": "url", "url": f"{server.url}/w.h5"}))
    assert "download failed after 3 attempts" in str(err.value)
    assert f"of {len(data)} bytes" in str(err.value)
    assert len(server.requests) == 3
    assert_nothing_installed(tmp_path)
    # what stays is only a .part file, kept to resume next time
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".part"]
    # the next run resumes from the kept part (a Range request) and cleans up
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    server.requests.clear()
    meta = fetch(tmp_path, params({"type": "url", "url": f"{server.url}/w.h5"}))
    assert meta["sha256"] == sha(data)
    assert server.requests[0][1] is not None and server.requests[0][1].startswith("bytes=")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.h5", "weights.json"]


def test_html_page_is_refused_with_its_title(tmp_path, server):
    page = b"<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head></html>"
    server.routes["/html"] = (page, "text/html; charset=utf-8", "ok")
    server.routes["/disguised"] = (page, "application/octet-stream", "ok")
    wp = params(
        {"type": "url", "url": f"{server.url}/html"},
        {"type": "url", "url": f"{server.url}/disguised"},
    )
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    lines = str(err.value).splitlines()
    assert "1. url" in lines[1] and "HTML page (title: 'Sign in - Google Accounts')" in lines[1]
    assert "2. url" in lines[2] and "it is an HTML page (title: 'Sign in" in lines[2]
    assert_nothing_installed(tmp_path)


def test_random_bytes_and_wrong_checksum_are_refused(tmp_path, h5_files, server):
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    server.routes["/noise"] = (b"\x00\x01" + noise, "application/octet-stream", "ok")
    server.routes["/w.h5"] = (h5_files["tiny"].read_bytes(), "application/octet-stream", "ok")
    wp = params(
        {"type": "url", "url": f"{server.url}/noise"},
        {"type": "url", "url": f"{server.url}/w.h5", "sha256": "ab" * 32},
    )
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    text = str(err.value)
    assert "5002 bytes of binary data that is not HDF5 (starts 00 01" in text
    assert (
        f"sha256 mismatch: got {sha(h5_files['tiny'].read_bytes())}, expected {'ab' * 32}" in text
    )
    assert_nothing_installed(tmp_path)
    assert not list((tmp_path / "out").glob("*.part"))


def test_download_sha256_mismatch_deletes_the_part(tmp_path, server):
    server.routes["/b"] = (b"abc", "application/octet-stream", "ok")
    with pytest.raises(weights.SourceError, match="sha256 mismatch.*deleted"):
        weights.download(f"{server.url}/b", tmp_path / "b", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_not_retried(tmp_path, server):
    with pytest.raises(weights.SourceError, match="HTTP 404"):
        weights.download(f"{server.url}/missing", tmp_path / "b", retries=3, progress=False)
    assert len(server.requests) == 1


def test_wrong_architecture_and_classification_top_are_described(tmp_path, h5_files):
    for name in ("other", "top"):
        (tmp_path / f"{name}.h5").write_bytes(h5_files[name].read_bytes())
    wp = params({"type": "file", "path": "other.h5"}, {"type": "file", "path": "top.h5"})
    with pytest.raises(weights.WeightsError) as err:
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
    with pytest.raises(weights.WeightsError, match="does not load into backbone 'tiny'"):
        weights.check_weights(tmp_path / "narrow.h5", "tiny", SHAPE)


def test_check_weights_describes_non_keras_hdf5(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh["data"] = np.zeros(3)
    with pytest.raises(weights.WeightsError, match=r"not a legacy Keras model .*\['data'\]"):
        weights.check_weights(tmp_path / "x.h5", "tiny", SHAPE)


def test_missing_optional_clients_say_how_to_install(tmp_path, monkeypatch):
    for module in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended", "huggingface_hub"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails with ImportError
    wp = params(
        {"type": "kaggle", "dataset": "owner/set", "file": "w.h5"},
        {"type": "huggingface", "repo_id": "someone/radimagenet", "filename": "w.h5"},
    )
    with pytest.raises(weights.WeightsError) as err:
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

    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = KaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)
    meta = fetch(tmp_path, params({"type": "kaggle", "dataset": "o/s", "file": "w.h5"}))
    assert calls == ["auth", ("o/s", "w.h5")]
    assert meta["source"] == "kaggle:o/s/w.h5" and meta["sha256"] == sha(data)

    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_download = lambda repo_id, filename, revision, repo_type: str(h5_files["tiny"])
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    wp = params({"type": "huggingface", "repo_id": "a/b", "filename": "w.h5", "label": "Hub copy"})
    meta = fetch(tmp_path / "hub", wp)
    assert (meta["source"], meta["label"]) == ("huggingface:a/b/w.h5", "Hub copy")


def test_kaggle_without_credentials(tmp_path, monkeypatch):
    class KaggleApi:
        def authenticate(self):
            raise OSError("Could not find kaggle.json")

    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = KaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)
    with pytest.raises(weights.WeightsError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        fetch(tmp_path, params({"type": "kaggle", "dataset": "o/s", "file": "w.h5"}))


# --------------------------------------------------------------------------- fallbacks


ALL_FAIL = (
    {"type": "file", "path": "RadImageNet-IRV2_notop.h5"},
    {"type": "url", "url": None},
    {"type": "huggingface", "repo_id": None, "filename": "x.h5"},
    {"type": "ftp", "url": "ftp://x"},
)


def test_all_sources_failing_with_fallback_none_lists_each(tmp_path):
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, params(*ALL_FAIL, fallback="none"))
    lines = str(err.value).splitlines()
    target = tmp_path / "RadImageNet-IRV2_notop.h5"
    assert lines[:5] == [
        "no backbone weights for 'tiny': every weights.sources entry failed",
        f"  1. file RadImageNet-IRV2_notop.h5: not found at {target}",
        "  2. url: skipped: url is null",
        "  3. huggingface x.h5: skipped: repo_id is null",
        "  4. ftp: unknown source type 'ftp'; use one of ['file', 'huggingface', 'kaggle', 'url']",
    ]
    assert f"cp RadImageNet-IRV2_notop.h5 {target}" in lines[5]
    assert "weights.fallback: random" in lines[6]
    assert_nothing_installed(tmp_path)


def test_random_fallback_is_labelled_loadable_and_deterministic(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="petscan.weights")
    meta = fetch(tmp_path / "a", params(*ALL_FAIL, fallback="random", seed=5))
    assert meta["random_init"] is True and weights.is_random_init(meta)
    assert meta["label"] == "RANDOM-INIT backbone (not RadImageNet)" == weights.RANDOM_LABEL
    assert meta["source"] == "random"
    assert weights.warning_banner(meta) == weights.RANDOM_LABEL
    assert any(
        r.levelname == "WARNING" and "RANDOMLY INITIALISED" in r.message for r in caplog.records
    )
    assert "1. file RadImageNet-IRV2_notop.h5: not found" in caplog.text
    assert "set weights.fallback: random" not in caplog.text  # it already is
    on_disk = json.loads((tmp_path / "a" / "out" / "weights.json").read_text())
    assert on_disk["random_init"] is True and on_disk["label"] == weights.RANDOM_LABEL
    path = tmp_path / "a" / "out" / "weights.h5"
    loaded = backbones.build_backbone("tiny", SHAPE, weights=path).get_weights()
    same = fetch(tmp_path / "b", params(*ALL_FAIL, fallback="random", seed=5))
    other = fetch(tmp_path / "c", params(*ALL_FAIL, fallback="random", seed=6))
    assert same["sha256"] == meta["sha256"] != other["sha256"]
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
    assert meta["random_init"] is False and meta["label"] == "RadImageNet"


def test_imagenet_fallback_explains_it_needs_weights_it_cannot_get(tmp_path):
    with pytest.raises(weights.WeightsError, match="no ImageNet weights"):
        fetch(tmp_path, params(fallback="imagenet"))
    with pytest.raises(weights.WeightsError, match="fallback must be one of"):
        fetch(tmp_path, params(fallback="maybe"))


def test_load_weights_meta_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the fetch_weights stage"):
        weights.load_weights_meta(tmp_path)
    (tmp_path / "weights.json").write_text('{"backbone": "tiny"}')
    with pytest.raises(ValueError, match="lacks"):
        weights.load_weights_meta(tmp_path)


# --------------------------------------------------------------------------- Google Drive

DRIVE_ID = "1UgYviHhVyQFLjqUuk5WfDB9bI6fBEr7Q"
DIRECT = f"https://drive.google.com/uc?export=download&id={DRIVE_ID}"


@pytest.mark.parametrize(
    "url, expected",
    [
        (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing", DIRECT),
        (f"https://drive.google.com/file/d/{DRIVE_ID}/view", DIRECT),
        (f"https://drive.google.com/open?id={DRIVE_ID}", DIRECT),
        (f"https://drive.google.com/uc?id={DRIVE_ID}&export=download", DIRECT),
        (f"{DIRECT}&confirm=t", f"{DIRECT}&confirm=t"),
        ("https://example.org/file/d/abc/view", "https://example.org/file/d/abc/view"),
    ],
)
def test_drive_links_become_direct_downloads(url, expected):
    assert weights.normalize_url(url) == expected


def test_drive_interstitials_are_parsed():
    form = (
        "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
        '<form id="download-form" action="https://drive.usercontent.google.com/download" '
        'method="get"><input type="submit" value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{DRIVE_ID}">'
        '<input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="u-1"></form></body></html>'
    )
    assert weights.gdrive_confirm_url(form, DIRECT) == (
        f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download"
        "&confirm=t&uuid=u-1"
    )
    old = f'<a id="uc-download-link" href="/uc?export=download&amp;confirm=Ab_1&amp;id={DRIVE_ID}">'
    assert weights.gdrive_confirm_url(old, DIRECT) == (
        f"https://drive.google.com/uc?export=download&confirm=Ab_1&id={DRIVE_ID}"
    )
    quota = "<html><title>Google Drive - Quota exceeded</title><p>Too many users</p></html>"
    assert weights.gdrive_confirm_url(quota, DIRECT) is None
    assert weights.html_title(quota) == "Google Drive - Quota exceeded"


def test_interstitial_is_followed_over_http(tmp_path, h5_files, server):
    data = h5_files["tiny"].read_bytes()
    page = (
        b'<html><form id="download-form" action="/download" method="get">'
        b'<input type="hidden" name="id" value="x"><input type="hidden" name="confirm" value="t">'
        b"</form></html>"
    )
    server.routes["/uc"] = (page, "text/html", "ok")
    server.routes["/download"] = (data, "application/octet-stream", "cut_first")
    digest = weights.download(
        f"{server.url}/uc?id=x", tmp_path / "w.h5", retry_wait_s=0, progress=False
    )
    assert digest == sha(data) and (tmp_path / "w.h5").read_bytes() == data
    # the retry after the cut goes straight to the confirmed URL, resuming with Range
    assert server.requests == [
        ("/uc?id=x", None),
        ("/download?id=x&confirm=t", None),
        ("/download?id=x&confirm=t", f"bytes={len(data) // 2}-"),
    ]


# --------------------------------------------------------------------------- the stage


def test_stage_help_and_run(tmp_path, monkeypatch, capsys, h5_files):
    stage = load_script("stages/fetch_weights.py")
    with pytest.raises(SystemExit) as exit_:
        stage.main(["--help"])
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
    assert stage.main(["--no-progress"]) == 1
    assert "1. file w.h5: not found" in capsys.readouterr().err
    (tmp_path / "w.h5").write_bytes(h5_files["tiny"].read_bytes())
    assert stage.main(["--no-progress"]) == 0
    assert "backbone tiny: RadImageNet from file:" in capsys.readouterr().out
    assert weights.load_weights_meta(tmp_path / "models/backbone")["backbone"] == "tiny"


@pytest.mark.slow
def test_full_size_inception_resnet_v2_random_fallback(tmp_path):
    model = {"backbone": "inception_resnet_v2", "input_size": [75, 75]}  # smallest input
    wp = params(fallback="random", seed=3)
    meta = weights.fetch_weights(wp, model, workspace=tmp_path, root=tmp_path, progress=False)
    # InceptionResNetV2 no-top: 448 layers with weights, 896 tensors (ecosystem notes)
    assert (meta["layers"], meta["tensors"], meta["random_init"]) == (448, 896, True)
    # Keras numbers auto-named layers per process (conv2d, conv2d_207, ...): match the stem
    assert re.fullmatch(r"conv2d(_\d+)?/kernel", meta["checked_tensors"][0])
    assert meta["size_bytes"] > 200_000_000
