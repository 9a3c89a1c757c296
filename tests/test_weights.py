"""fetch_weights: sources, resumable downloads, file checks, fallbacks. No internet: a local
HTTP server on 127.0.0.1 serves weights files the tests write with the `tiny` backbone."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import stat
import sys
import threading
import time
import types
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import load_script

from petscan.handoff import records as handoff
from petscan.model import backbones
from petscan.weights import fetch as weights

SHAPE = (32, 32, 3)
REV = "0123456789abcdef0123456789abcdef01234567"  # a pinned hub revision
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


def make_tls(folder: Path) -> types.SimpleNamespace:
    """A self-signed certificate for 127.0.0.1 and localhost: `cert` (its PEM file, the
    `weights.ca_bundle` of the tests), `server` and `client` SSL contexts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "petscan test server")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return types.SimpleNamespace(
        cert=cert_file, server=server, client=weights.make_ssl_context(cert_file)
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> types.SimpleNamespace:
    return make_tls(tmp_path_factory.mktemp("tls"))


def etag(body: bytes) -> str:
    return f'"{sha(body)[:16]}"'


class Server:
    """An https server on 127.0.0.1 (or plain http with `tls=None`).

    Serves `routes[path] = (body, content_type, mode)`; mode: ok | cut_first | always_cut |
    no_range | no_length (no Content-Length; half the body, then closes, the first time) |
    no_length_cut (no Content-Length, always half). Every body has a strong ETag and
    `If-Range` is honoured.
    `handlers[path] = function(request_handler)` answers a path itself. Records (path,
    Range header) of every request in `requests` and all headers in `headers`."""

    def __init__(self, tls=None) -> None:
        self.routes: dict[str, tuple[bytes, str, str]] = {}
        self.handlers: dict[str, object] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer.requests.append((self.path, self.headers.get("Range")))
                outer.headers.append(dict(self.headers))
                path = self.path.split("?")[0]
                if path in outer.handlers:
                    outer.handlers[path](self)
                    return
                if path not in outer.routes:
                    self.send_error(404)
                    return
                body, ctype, mode = outer.routes[path]
                first = sum(1 for p, _ in outer.requests if p.split("?")[0] == path) == 1
                start = 0
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                fresh = if_range is None or if_range == etag(body)
                if rng and mode != "no_range" and fresh:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("ETag", etag(body))
                if not mode.startswith("no_length"):
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = mode in ("always_cut", "no_length_cut") or (
                    mode in ("cut_first", "no_length") and first
                )
                end = start + (len(body) - start) // 2 if cut else len(body)
                self.wfile.write(body[start:end])

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.server.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tls):
    srv = Server(tls)
    yield srv
    srv.close()


def part_of(dest: Path, url: str) -> Path:
    """The `.part` file `weights.download` keeps for `url` beside `dest`."""
    return dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:10]}.part")


def params(*sources, fallback="none", **extra) -> dict:
    base = {
        "dir": "out",
        "sha256": None,
        "sources": list(sources),
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


def fetch(tmp_path: Path, wp: dict, **kwargs) -> dict:
    return weights.run_fetch_weights(
        wp, MODEL, workspace=tmp_path, root=tmp_path, progress=False, **kwargs
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
    caplog.set_level(logging.INFO, logger="petscan.weights.fetch")
    assert fetch(tmp_path, wp) == first
    assert (tmp_path / "out" / "weights.h5").stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text
    (tmp_path / "out" / "weights.h5").write_bytes(b"tampered")
    again = fetch(tmp_path, wp)
    assert (tmp_path / "out" / "weights.h5").read_bytes() == h5_files["tiny"].read_bytes()
    assert again["weights_sha256"] == first["weights_sha256"]
    # a changed expectation is a changed setting: the wrong checksum now fails
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        fetch(tmp_path, {**wp, "sha256": "0" * 64})


def test_url_download_verifies_sha256_and_leaves_no_part(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    url = f"{server.url}/w.h5"
    wp = params({"type": "url", "url": url}, sha256=sha(data), ca_bundle=str(tls.cert))
    meta = fetch(tmp_path, wp)
    assert meta["weights_source"] == f"url:{url}" and meta["weights_sha256"] == sha(data)
    assert (tmp_path / "out" / "weights.h5").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.h5", "weights.json"]


def test_cut_connection_resumes_with_range_and_if_range(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "cut_first")
    dest = tmp_path / "w.h5"
    digest = weights.download(
        f"{server.url}/w.h5", dest, retries=2, retry_wait_s=0, progress=False,
        ssl_context=tls.client,
    )  # fmt: skip
    assert dest.read_bytes() == data and digest == sha(data)
    assert server.requests == [("/w.h5", None), ("/w.h5", f"bytes={len(data) // 2}-")]
    # the resume names the version of the file the part came from
    assert "If-Range" not in server.headers[0] and server.headers[1]["If-Range"] == etag(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, tls):
    data = bytes(range(256)) * 40
    server.routes["/b"] = (data, "application/octet-stream", "no_range")
    dest = tmp_path / "b.bin"
    part = part_of(dest, f"{server.url}/b")
    part.write_bytes(b"garbage from an older attempt")
    weights._resume_file(part).write_text(json.dumps({"etag": etag(data)}))
    weights.download(f"{server.url}/b", dest, retries=0, progress=False, ssl_context=tls.client)
    assert server.requests == [("/b", "bytes=29-")]  # answered 200: the whole file
    assert dest.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_part_without_recorded_version_is_not_resumed(tmp_path, server, tls):
    data = bytes(range(256)) * 40
    server.routes["/b"] = (data, "application/octet-stream", "ok")
    dest = tmp_path / "b.bin"
    part = part_of(dest, f"{server.url}/b")
    part.write_bytes(data[:100])  # a prefix, but of which version of the file?
    weights.download(f"{server.url}/b", dest, retries=0, progress=False, ssl_context=tls.client)
    assert server.requests == [("/b", None)] and dest.read_bytes() == data


def test_always_cut_fails_clearly_without_final_file(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "always_cut")
    source = {"type": "url", "url": f"{server.url}/w.h5"}
    wp = params(source, sha256=sha(data), ca_bundle=str(tls.cert))
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    assert "download failed after 3 attempts" in str(err.value)
    assert f"of {len(data)} bytes" in str(err.value)
    assert len(server.requests) == 3
    assert_nothing_installed(tmp_path)
    # what stays is only a .part file (and the version it is of), kept to resume next time
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".json", ".part"]
    # the next run resumes from the kept part (a Range request) and cleans up
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    server.requests.clear()
    meta = fetch(tmp_path, wp)
    assert meta["weights_sha256"] == sha(data)
    assert server.requests[0][1] is not None and server.requests[0][1].startswith("bytes=")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.h5", "weights.json"]


def test_html_page_is_refused_with_its_title(tmp_path, server, tls):
    page = b"<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head></html>"
    server.routes["/html"] = (page, "text/html; charset=utf-8", "ok")
    server.routes["/disguised"] = (page, "application/octet-stream", "ok")
    wp = params(
        {"type": "url", "url": f"{server.url}/html", "sha256": "0" * 64},
        {"type": "url", "url": f"{server.url}/disguised", "sha256": sha(page)},
        ca_bundle=str(tls.cert),
    )
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    lines = str(err.value).splitlines()
    assert "1. url" in lines[1] and "HTML page (title: 'Sign in - Google Accounts')" in lines[1]
    assert "2. url" in lines[2] and "it is an HTML page (title: 'Sign in" in lines[2]
    assert_nothing_installed(tmp_path)


def test_random_bytes_and_wrong_checksum_are_refused(tmp_path, h5_files, server, tls):
    noise = b"\x00\x01" + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    server.routes["/noise"] = (noise, "application/octet-stream", "ok")
    server.routes["/w.h5"] = (h5_files["tiny"].read_bytes(), "application/octet-stream", "ok")
    wp = params(
        {"type": "url", "url": f"{server.url}/noise", "sha256": sha(noise)},
        {"type": "url", "url": f"{server.url}/w.h5", "sha256": "ab" * 32},
        ca_bundle=str(tls.cert),
    )
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    text = str(err.value)
    assert (
        "/noise: not a Keras .h5 weights file: it is 5002 bytes of binary data that is not "
        "HDF5\n" in text
    )
    assert (
        f"sha256 mismatch: got {sha(h5_files['tiny'].read_bytes())}, expected {'ab' * 32}" in text
    )
    assert_nothing_installed(tmp_path)
    assert not list((tmp_path / "out").glob("*.part"))


def test_download_sha256_mismatch_deletes_the_part(tmp_path, server, tls):
    server.routes["/b"] = (b"abc", "application/octet-stream", "ok")
    with pytest.raises(weights.SourceError, match="sha256 mismatch.*deleted"):
        weights.download(
            f"{server.url}/b", tmp_path / "b", sha256="0" * 64, progress=False,
            ssl_context=tls.client,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_not_retried(tmp_path, server, tls):
    with pytest.raises(weights.SourceError, match="HTTP 404"):
        weights.download(
            f"{server.url}/missing", tmp_path / "b", retries=3, progress=False,
            ssl_context=tls.client,
        )  # fmt: skip
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
        {
            "type": "huggingface",
            "repo_id": "someone/radimagenet",
            "filename": "w.h5",
            "revision": REV,
        },
        sha256="ab" * 32,
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
    with pytest.raises(weights.WeightsError, match="revision must pin a commit"):
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
    with pytest.raises(weights.WeightsError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        fetch(
            tmp_path, params({"type": "kaggle", "dataset": "o/s", "file": "w.h5"}, sha256="a" * 64)
        )


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
    caplog.set_level(logging.WARNING, logger="petscan.weights.fetch")
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
    with pytest.raises(weights.WeightsError, match="no ImageNet weights"):
        fetch(tmp_path, params(fallback="imagenet"))
    with pytest.raises(weights.WeightsError, match="fallback must be one of"):
        fetch(tmp_path, params(fallback="maybe"))


def test_read_weights_meta_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro fetch_weights`"):
        handoff.read_weights_meta(tmp_path)
    (tmp_path / "weights.json").write_text('{"backbone": "tiny"}')
    with pytest.raises(ValueError, match="lacks"):
        handoff.read_weights_meta(tmp_path)


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


def play_drive(monkeypatch) -> None:
    """Let the test server at 127.0.0.1 play a Google Drive host."""
    drive = weights.is_drive_host
    monkeypatch.setattr(weights, "is_drive_host", lambda host: host == "127.0.0.1" or drive(host))


def test_interstitial_of_a_drive_host_is_followed(tmp_path, h5_files, server, tls, monkeypatch):
    play_drive(monkeypatch)
    data = h5_files["tiny"].read_bytes()
    page = (
        b'<html><form id="download-form" action="/download" method="get">'
        b'<input type="hidden" name="id" value="x"><input type="hidden" name="confirm" value="t">'
        b"</form></html>"
    )
    server.routes["/uc"] = (page, "text/html", "ok")
    server.routes["/download"] = (data, "application/octet-stream", "cut_first")
    digest = weights.download(
        f"{server.url}/uc?id=x", tmp_path / "w.h5", retry_wait_s=0, progress=False,
        ssl_context=tls.client,
    )  # fmt: skip
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
    assert handoff.read_weights_meta(tmp_path / "models/backbone")["backbone"] == "tiny"


@pytest.mark.slow
def test_full_size_inception_resnet_v2_random_fallback(tmp_path):
    model = {"backbone": "inception_resnet_v2", "input_size": [75, 75]}  # smallest input
    wp = params(fallback="random", seed=3)
    meta = weights.run_fetch_weights(wp, model, workspace=tmp_path, root=tmp_path, progress=False)
    # InceptionResNetV2 no-top: 448 layers with weights, 896 tensors (ecosystem notes)
    assert (meta["layers"], meta["tensors"], meta["random_init"]) == (448, 896, True)
    # Keras numbers auto-named layers per process (conv2d, conv2d_207, ...): match the stem
    assert re.fullmatch(r"conv2d(_\d+)?/kernel", meta["checked_tensors"][0])
    assert meta["size_bytes"] > 200_000_000


# --------------------------------------------------------------------------- the attacker


def stream_forever(chunk: bytes, pause_s: float, length: int | None = None, limit_s: float = 20):
    """A handler that answers 200 and writes `chunk` every `pause_s` seconds until the
    client goes away (or `limit_s` passes); `length`: the Content-Length it announces."""

    def handler(request) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            request.send_header("Content-Length", str(length))
        request.end_headers()
        ends = time.monotonic() + limit_s
        with contextlib.suppress(OSError):
            while time.monotonic() < ends:
                request.wfile.write(chunk)
                time.sleep(pause_s)

    return handler


def redirect_to(location: str):
    def handler(request) -> None:
        request.send_response(302)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handler


def get(server, tls, path: str, dest: Path, **kwargs) -> str:
    kwargs = {"retries": 0, "retry_wait_s": 0, "progress": False, **kwargs}
    return weights.download(f"{server.url}{path}", dest, ssl_context=tls.client, **kwargs)


def test_plain_http_file_ftp_and_data_urls_are_refused_before_any_request(tmp_path, h5_files):
    plain = Server(tls=None)
    try:
        plain.routes["/w.h5"] = (h5_files["tiny"].read_bytes(), "application/octet-stream", "ok")
        (tmp_path / "secret.json").write_text('{"key": "S3CRET"}')
        for url in (
            f"{plain.url}/w.h5",
            (tmp_path / "secret.json").as_uri(),
            "ftp://127.0.0.1/w.h5",
            "data:application/octet-stream;base64,AAAA",
        ):
            with pytest.raises(weights.SourceError, match="only https:// downloads"):
                weights.download(url, tmp_path / "out" / "w.h5", progress=False)
        assert plain.requests == []
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
        # the same through the stage: each source's line says why
        wp = params({"type": "url", "url": f"{plain.url}/w.h5"}, sha256="0" * 64)
        with pytest.raises(weights.WeightsError, match="1. url http://.*only https://"):
            fetch(tmp_path, wp)
    finally:
        plain.close()


def test_redirects_to_http_other_hosts_or_files_are_refused(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    plain = Server(tls=None)
    try:
        plain.routes["/w.h5"] = (data, "application/octet-stream", "ok")
        server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
        server.handlers["/to-http"] = redirect_to(f"{plain.url}/w.h5")
        # localhost is the same machine and in the certificate: only the host policy refuses
        server.handlers["/to-localhost"] = redirect_to(f"https://localhost:{server.port}/w.h5")
        server.handlers["/to-file"] = redirect_to((tmp_path / "secret.json").as_uri())
        server.handlers["/same-host"] = redirect_to("/w.h5")
        (tmp_path / "secret.json").write_text('{"key": "S3CRET"}')
        for path, reason in (
            ("/to-http", "only https:// downloads"),
            ("/to-localhost", "refused a redirect from 127.0.0.1 to another host \\(localhost\\)"),
            ("/to-file", "HTTP 302|only https://"),
        ):
            with pytest.raises(weights.SourceError, match=reason) as err:
                get(server, tls, path, tmp_path / "w.h5", sha256=sha(data))
            assert "S3CRET" not in str(err.value)
            assert not (tmp_path / "w.h5").exists()
        assert plain.requests == []
        assert [p for p, _ in server.requests] == ["/to-http", "/to-localhost", "/to-file"]
        assert get(server, tls, "/same-host", tmp_path / "w.h5", sha256=sha(data)) == sha(data)
        assert [p for p, _ in server.requests][-2:] == ["/same-host", "/w.h5"]
    finally:
        plain.close()


def test_drive_page_pointing_at_a_local_file_copies_nothing(
    tmp_path, server, tls, monkeypatch, caplog
):
    secret = b'{"username": "me", "key": "S3CRET-KAGGLE-KEY"}'
    (tmp_path / "kaggle.json").write_bytes(secret)
    page = (
        "<html><title>Google Drive - Virus scan warning</title>"
        f'<form action="{(tmp_path / "kaggle.json").as_uri()}#download">'
        '<input type="hidden" name="confirm" value="t"></form></html>'
    ).encode()
    server.routes["/uc"] = (page, "text/html", "ok")
    server.routes["/uc-away"] = (
        f'<form action="https://localhost:{server.port}/download">'
        '<input type="hidden" name="confirm" value="t"></form>'.encode(),
        "text/html",
        "ok",
    )
    caplog.set_level(logging.DEBUG)
    source = {"type": "url", "url": f"{server.url}/uc?id=x", "sha256": sha(secret)}
    wp = params(source, ca_bundle=str(tls.cert))
    # a host that is not Google Drive: its HTML is never searched for a link
    with pytest.raises(weights.WeightsError, match="sent an HTML page") as err:
        fetch(tmp_path, wp)
    assert len(server.requests) == 1
    # a Drive host: the confirmation link is checked like a redirect
    play_drive(monkeypatch)
    with pytest.raises(weights.WeightsError, match="only https:// downloads") as err2:
        fetch(tmp_path, wp)
    away = {"type": "url", "url": f"{server.url}/uc-away", "sha256": sha(secret)}
    with pytest.raises(weights.WeightsError, match="to another host \\(localhost\\)"):
        fetch(tmp_path, params(away, ca_bundle=str(tls.cert)))
    for text in (str(err.value), str(err2.value), caplog.text):
        assert "S3CRET" not in text
    assert_nothing_installed(tmp_path)
    assert not [p for p in (tmp_path / "out").iterdir() if p.read_bytes() == secret]


def test_wrong_files_are_described_by_type_and_size_never_by_content(tmp_path):
    (tmp_path / "kaggle.json").write_text('{"username": "me", "key": "S3CRET"}')
    (tmp_path / "notes.txt").write_text("password=S3CRET\n")
    (tmp_path / "blob").write_bytes(b"S3CRET\x00\x01\x02")
    assert (
        weights.describe_file(tmp_path / "kaggle.json") == "a JSON text file of 35 bytes, not HDF5"
    )
    assert weights.describe_file(tmp_path / "notes.txt") == "a text file of 16 bytes, not HDF5"
    assert weights.describe_file(tmp_path / "blob") == "9 bytes of binary data that is not HDF5"


def test_endless_body_stops_at_the_size_cap(tmp_path, server, tls):
    server.handlers["/endless"] = stream_forever(b"\0" * 65536, 0.0)
    started = time.monotonic()
    with pytest.raises(weights.SourceError) as err:
        get(server, tls, "/endless", tmp_path / "w.h5", sha256="0" * 64, max_bytes=256 * 1024)
    assert time.monotonic() - started < 10
    assert re.search(
        r"the body reached \d+ bytes, more than weights.max_download_mb \(0.25 MB\)", str(err.value)
    )
    assert list(tmp_path.iterdir()) == []  # the part file is deleted


def test_announced_length_above_the_cap_is_refused_before_reading(tmp_path, server, tls):
    server.handlers["/huge"] = stream_forever(b"\0" * 10, 0.05, length=10 * 2**30, limit_s=2)
    with pytest.raises(weights.SourceError, match="announces 10737418240 bytes, more than"):
        get(server, tls, "/huge", tmp_path / "w.h5", sha256="0" * 64, max_bytes=2**20, retries=2)
    assert len(server.requests) == 1 and list(tmp_path.iterdir()) == []


def test_a_trickling_body_stops_at_the_total_deadline(tmp_path, server, tls):
    # every read returns well within the per-read timeout: only the deadline stops it
    server.handlers["/slow"] = stream_forever(b"x" * 1024, 0.05, length=2**20)
    started = time.monotonic()
    with pytest.raises(weights.SourceError, match="longer than weights.deadline_s = 1 s"):
        get(server, tls, "/slow", tmp_path / "w.h5", sha256="0" * 64, timeout_s=5, deadline_s=1)
    assert 1 <= time.monotonic() - started < 4 and len(server.requests) == 1


def test_retries_do_not_outlast_the_deadline(tmp_path, server, tls):
    server.routes["/w"] = (b"y" * 4000, "application/octet-stream", "always_cut")
    started = time.monotonic()
    with pytest.raises(weights.SourceError, match="deadline_s = 1.5 s"):
        get(server, tls, "/w", tmp_path / "w", retries=20, retry_wait_s=1, deadline_s=1.5)
    assert time.monotonic() - started < 3 and len(server.requests) <= 3


def test_short_body_without_content_length_is_not_complete(tmp_path, server, tls):
    body = bytes(range(256)) * 64
    server.routes["/once"] = (body, "application/octet-stream", "no_length")  # cut once
    server.routes["/always"] = (body, "application/octet-stream", "no_length_cut")
    assert get(server, tls, "/once", tmp_path / "a", sha256=sha(body), retries=1) == sha(body)
    assert (tmp_path / "a").read_bytes() == body
    assert server.requests == [("/once", None), ("/once", None)]  # restarted, not resumed
    with pytest.raises(weights.SourceError) as err:
        get(server, tls, "/always", tmp_path / "b", sha256=sha(body), retries=1)
    assert f"the {len(body) // 2} bytes sent without a Content-Length do not match" in str(
        err.value
    )
    with pytest.raises(
        weights.SourceError, match="without a Content-Length.*give the file's sha256"
    ):
        get(server, tls, "/always", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_file_changed_since_the_part_was_started_is_not_spliced(tmp_path, server, tls):
    old = bytes(range(256)) * 40
    new = bytes(reversed(range(256))) * 40
    server.routes["/w"] = (old, "application/octet-stream", "always_cut")
    dest = tmp_path / "w.bin"
    with pytest.raises(weights.SourceError):
        get(server, tls, "/w", dest, sha256=sha(new))
    part = part_of(dest, f"{server.url}/w")
    assert part.read_bytes() == old[: len(old) // 2]
    server.routes["/w"] = (new, "application/octet-stream", "ok")  # the file changes
    assert get(server, tls, "/w", dest, sha256=sha(new)) == sha(new)
    assert server.requests[-1] == ("/w", f"bytes={len(old) // 2}-")
    assert server.headers[-1]["If-Range"] == etag(old)  # so the server sent all of `new`
    assert dest.read_bytes() == new and not part.exists()


def test_a_206_of_another_version_restarts_from_zero(tmp_path, server, tls):
    old, new = b"a" * 3000, b"b" * 3000

    def ignores_if_range(request) -> None:  # answers any Range from the new version
        start = int((request.headers.get("Range") or "bytes=0-").split("=")[1].split("-")[0])
        request.send_response(206 if start else 200)
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(new) - 1}/{len(new)}")
        request.send_header("ETag", etag(new))
        request.send_header("Content-Length", str(len(new) - start))
        request.end_headers()
        request.wfile.write(new[start:])

    server.handlers["/w"] = ignores_if_range
    dest = tmp_path / "w"
    part = part_of(dest, f"{server.url}/w")
    part.write_bytes(old[:1000])
    weights._resume_file(part).write_text(json.dumps({"etag": etag(old)}))
    assert get(server, tls, "/w", dest, sha256=sha(new), retries=1) == sha(new)
    assert server.requests == [("/w", "bytes=1000-"), ("/w", None)]
    assert dest.read_bytes() == new


def test_a_part_at_the_size_cap_is_not_resumed(tmp_path, server, tls):
    body = b"z" * 5000
    server.routes["/w"] = (body, "application/octet-stream", "ok")
    dest = tmp_path / "w"
    part = part_of(dest, f"{server.url}/w")
    part.write_bytes(b"z" * 8000)  # grown past the cap by some earlier run
    weights._resume_file(part).write_text(json.dumps({"etag": etag(body)}))
    assert get(server, tls, "/w", dest, sha256=sha(body), max_bytes=6000) == sha(body)
    assert server.requests == [("/w", None)]


def test_remote_sources_need_a_pinned_sha256(tmp_path, h5_files, server, tls, caplog):
    server.routes["/w.h5"] = (h5_files["tiny"].read_bytes(), "application/octet-stream", "ok")
    wp = params({"type": "url", "url": f"{server.url}/w.h5"}, ca_bundle=str(tls.cert))
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp)
    line = str(err.value).splitlines()[1]
    assert "no sha256 pinned" in line and "sha256sum" in line and "weights.sha256" in line
    assert server.requests == []
    with pytest.raises(weights.WeightsError, match="64 hexadecimal"):
        fetch(tmp_path, {**wp, "sha256": "not-a-checksum"})


def test_recorded_urls_lose_tokens_and_query(tmp_path, h5_files, server, tls, caplog):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    url = f"{server.url}/w.h5?token=S3CRET"
    wp = params({"type": "url", "url": url}, sha256=sha(data), ca_bundle=str(tls.cert))
    caplog.set_level(logging.DEBUG)
    meta = fetch(tmp_path, wp)
    assert server.requests == [("/w.h5?token=S3CRET", None)]  # the real URL was asked
    assert meta["weights_source"] == f"url:{server.url}/w.h5?***"
    on_disk = (tmp_path / "out" / "weights.json").read_text()
    assert "S3CRET" not in on_disk and "S3CRET" not in caplog.text
    stamp = (tmp_path / "out" / "weights.h5").stat().st_mtime_ns
    assert fetch(tmp_path, wp) == meta  # still up to date: nothing fetched or rewritten
    assert (tmp_path / "out" / "weights.h5").stat().st_mtime_ns == stamp
    server.routes.clear()
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path, wp, force=True)
    assert "url https://127.0.0.1" in str(err.value) and "S3CRET" not in str(err.value)


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
    with pytest.raises(weights.WeightsError) as err:
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
    with pytest.raises(weights.WeightsError, match="300000 bytes in the archive, more than"):
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

    monkeypatch.setattr(weights, "_kaggle_result", explode)


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
    with pytest.raises(weights.WeightsError) as err:
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


# --------------------------------------------------------------------------- credentials, loops


def test_credentials_in_the_url_are_sent_as_basic_auth_to_that_host_only(
    tmp_path, h5_files, server, tls
):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "ok")
    server.handlers["/moved"] = redirect_to("/w.h5")
    url = f"https://me:p%40ss%3Aw0rd@127.0.0.1:{server.port}/moved"
    wp = params({"type": "url", "url": url}, sha256=sha(data), ca_bundle=str(tls.cert))
    meta = fetch(tmp_path, wp)
    assert meta["weights_sha256"] == sha(data)
    expected = "Basic " + base64.b64encode(b"me:p@ss:w0rd").decode()
    assert [h.get("Authorization") for h in server.headers] == [expected, expected]
    assert [h["Host"] for h in server.headers] == [f"127.0.0.1:{server.port}"] * 2
    assert meta["weights_source"] == f"url:https://me:***@127.0.0.1:{server.port}/moved"
    assert "p%40ss" not in (tmp_path / "out" / "weights.json").read_text()
    # a redirect to another host (between Google Drive's hosts) does not take them along
    request = urllib.request.Request(
        "https://drive.google.com/uc?id=x", headers={"Authorization": expected}
    )
    moved = weights._CheckedRedirects().redirect_request(
        request, None, 302, "Found", {}, "https://drive.usercontent.google.com/download?id=x"
    )
    assert moved.get_header("Authorization") is None
    assert weights.split_credentials("https://h/x") == ("https://h/x", None)


def test_a_redirect_loop_is_one_line(tmp_path, server, tls):
    server.handlers["/loop"] = redirect_to("/loop")
    with pytest.raises(weights.SourceError) as err:
        get(server, tls, "/loop?token=S3CRET", tmp_path / "w.h5", sha256="0" * 64)
    assert str(err.value) == (
        f"HTTP 302: a redirect loop (too many redirects) at {server.url}/loop"
    )


def full_disk_pump(monkeypatch) -> None:
    """Every copy of a weights file writes to /dev/full (ENOSPC on the first write)."""
    real = weights._pump

    def pump(source, sink, bar, **kwargs):
        with open("/dev/full", "wb", buffering=0) as full:
            return real(source, full, bar, **kwargs)

    monkeypatch.setattr(weights, "_pump", pump)


def test_a_full_disk_stops_the_chain_with_one_line(tmp_path, h5_files, monkeypatch, capsys):
    stage = load_script("stages/fetch_weights.py")
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
    assert stage.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    candidate = tmp_path / "models/backbone/.weights.candidate.h5"
    assert err == (
        f"fetch_weights: error: cannot write {candidate}: No space left on device; free space "
        "on that disk (or raise your quota) and rerun\n"
    )
    assert not (tmp_path / "models/backbone/weights.h5").exists()
    assert not candidate.exists()


def test_a_token_in_a_path_parameter_is_not_recorded(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    server.routes["/dl;jsessionid=S3CRET/w.h5"] = (data, "application/octet-stream", "ok")
    url = f"{server.url}/dl;jsessionid=S3CRET/w.h5"
    meta = fetch(
        tmp_path, params({"type": "url", "url": url}, sha256=sha(data), ca_bundle=str(tls.cert))
    )
    assert meta["weights_source"] == f"url:{server.url}/dl;***/w.h5"
    assert meta["settings"]["sources"][0]["url"] == f"{server.url}/dl;***/w.h5"
    assert "S3CRET" not in (tmp_path / "out" / "weights.json").read_text()
    server.routes.clear()  # the failure report names the source without the token too
    with pytest.raises(weights.WeightsError) as err:
        fetch(tmp_path / "b", params({"type": "url", "url": url}, sha256=sha(data)))
    assert "dl;***/w.h5" in str(err.value) and "S3CRET" not in str(err.value)
