"""The https download of weights: resumes, budgets, redirects, credentials, Google Drive,
and what an attacker's server can try. No internet: a local HTTP server on 127.0.0.1
serves weights files the tests write with the `tiny` backbone."""

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
import threading
import time
import types
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_weights import assert_nothing_installed, fetch, params, sha, write_h5_files

from petscan.utils.errors import ParamsError
from petscan.weights import drive, http, transfer
from petscan.weights.errors import SourceError, WeightsError


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory) -> dict[str, Path]:
    return write_h5_files(tmp_path_factory.mktemp("h5"))


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
        cert=cert_file, server=server, client=http.make_ssl_context(cert_file)
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
    """The `.part` file `http.download` keeps for `url` beside `dest`."""
    return dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:10]}.part")


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
    digest = http.download(
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
    transfer.resume_file(part).write_text(json.dumps({"etag": etag(data)}))
    http.download(f"{server.url}/b", dest, retries=0, progress=False, ssl_context=tls.client)
    assert server.requests == [("/b", "bytes=29-")]  # answered 200: the whole file
    assert dest.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_part_without_recorded_version_is_not_resumed(tmp_path, server, tls):
    data = bytes(range(256)) * 40
    server.routes["/b"] = (data, "application/octet-stream", "ok")
    dest = tmp_path / "b.bin"
    part = part_of(dest, f"{server.url}/b")
    part.write_bytes(data[:100])  # a prefix, but of which version of the file?
    http.download(f"{server.url}/b", dest, retries=0, progress=False, ssl_context=tls.client)
    assert server.requests == [("/b", None)] and dest.read_bytes() == data


def test_always_cut_fails_clearly_without_final_file(tmp_path, h5_files, server, tls):
    data = h5_files["tiny"].read_bytes()
    server.routes["/w.h5"] = (data, "application/octet-stream", "always_cut")
    source = {"type": "url", "url": f"{server.url}/w.h5"}
    wp = params(source, sha256=sha(data), ca_bundle=str(tls.cert))
    with pytest.raises(WeightsError) as err:
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
    with pytest.raises(WeightsError) as err:
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
    with pytest.raises(WeightsError) as err:
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
    with pytest.raises(SourceError, match="sha256 mismatch.*deleted"):
        http.download(
            f"{server.url}/b", tmp_path / "b", sha256="0" * 64, progress=False,
            ssl_context=tls.client,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_not_retried(tmp_path, server, tls):
    with pytest.raises(SourceError, match="HTTP 404"):
        http.download(
            f"{server.url}/missing", tmp_path / "b", retries=3, progress=False,
            ssl_context=tls.client,
        )  # fmt: skip
    assert len(server.requests) == 1


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
    assert drive.normalize_url(url) == expected


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
    assert drive.gdrive_confirm_url(form, DIRECT) == (
        f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download"
        "&confirm=t&uuid=u-1"
    )
    old = f'<a id="uc-download-link" href="/uc?export=download&amp;confirm=Ab_1&amp;id={DRIVE_ID}">'
    assert drive.gdrive_confirm_url(old, DIRECT) == (
        f"https://drive.google.com/uc?export=download&confirm=Ab_1&id={DRIVE_ID}"
    )
    quota = "<html><title>Google Drive - Quota exceeded</title><p>Too many users</p></html>"
    assert drive.gdrive_confirm_url(quota, DIRECT) is None
    assert drive.html_title(quota) == "Google Drive - Quota exceeded"


def play_drive(monkeypatch) -> None:
    """Let the test server at 127.0.0.1 play a Google Drive host."""
    real = drive.is_drive_host
    monkeypatch.setattr(drive, "is_drive_host", lambda host: host == "127.0.0.1" or real(host))


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
    digest = http.download(
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
    return http.download(f"{server.url}{path}", dest, ssl_context=tls.client, **kwargs)


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
            with pytest.raises(SourceError, match="only https:// downloads"):
                http.download(url, tmp_path / "out" / "w.h5", progress=False)
        assert plain.requests == []
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
        # the same through the stage: each source's line says why
        wp = params({"type": "url", "url": f"{plain.url}/w.h5"}, sha256="0" * 64)
        with pytest.raises(WeightsError, match="1. url http://.*only https://"):
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
            with pytest.raises(SourceError, match=reason) as err:
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
    with pytest.raises(WeightsError, match="sent an HTML page") as err:
        fetch(tmp_path, wp)
    assert len(server.requests) == 1
    # a Drive host: the confirmation link is checked like a redirect
    play_drive(monkeypatch)
    with pytest.raises(WeightsError, match="only https:// downloads") as err2:
        fetch(tmp_path, wp)
    away = {"type": "url", "url": f"{server.url}/uc-away", "sha256": sha(secret)}
    with pytest.raises(WeightsError, match="to another host \\(localhost\\)"):
        fetch(tmp_path, params(away, ca_bundle=str(tls.cert)))
    for text in (str(err.value), str(err2.value), caplog.text):
        assert "S3CRET" not in text
    assert_nothing_installed(tmp_path)
    assert not [p for p in (tmp_path / "out").iterdir() if p.read_bytes() == secret]


def test_endless_body_stops_at_the_size_cap(tmp_path, server, tls):
    server.handlers["/endless"] = stream_forever(b"\0" * 65536, 0.0)
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        get(server, tls, "/endless", tmp_path / "w.h5", sha256="0" * 64, max_bytes=256 * 1024)
    assert time.monotonic() - started < 10
    assert re.search(
        r"the body reached \d+ bytes, more than weights.max_download_mb \(0.25 MB\)", str(err.value)
    )
    assert list(tmp_path.iterdir()) == []  # the part file is deleted


def test_announced_length_above_the_cap_is_refused_before_reading(tmp_path, server, tls):
    server.handlers["/huge"] = stream_forever(b"\0" * 10, 0.05, length=10 * 2**30, limit_s=2)
    with pytest.raises(SourceError, match="announces 10737418240 bytes, more than"):
        get(server, tls, "/huge", tmp_path / "w.h5", sha256="0" * 64, max_bytes=2**20, retries=2)
    assert len(server.requests) == 1 and list(tmp_path.iterdir()) == []


def test_a_trickling_body_stops_at_the_total_deadline(tmp_path, server, tls):
    # every read returns well within the per-read timeout: only the deadline stops it
    server.handlers["/slow"] = stream_forever(b"x" * 1024, 0.05, length=2**20)
    started = time.monotonic()
    with pytest.raises(SourceError, match="longer than weights.deadline_s = 1 s"):
        get(server, tls, "/slow", tmp_path / "w.h5", sha256="0" * 64, timeout_s=5, deadline_s=1)
    assert 1 <= time.monotonic() - started < 4 and len(server.requests) == 1


def test_retries_do_not_outlast_the_deadline(tmp_path, server, tls):
    server.routes["/w"] = (b"y" * 4000, "application/octet-stream", "always_cut")
    started = time.monotonic()
    with pytest.raises(SourceError, match="deadline_s = 1.5 s"):
        get(server, tls, "/w", tmp_path / "w", retries=20, retry_wait_s=1, deadline_s=1.5)
    assert time.monotonic() - started < 3 and len(server.requests) <= 3


def test_short_body_without_content_length_is_not_complete(tmp_path, server, tls):
    body = bytes(range(256)) * 64
    server.routes["/once"] = (body, "application/octet-stream", "no_length")  # cut once
    server.routes["/always"] = (body, "application/octet-stream", "no_length_cut")
    assert get(server, tls, "/once", tmp_path / "a", sha256=sha(body), retries=1) == sha(body)
    assert (tmp_path / "a").read_bytes() == body
    assert server.requests == [("/once", None), ("/once", None)]  # restarted, not resumed
    with pytest.raises(SourceError) as err:
        get(server, tls, "/always", tmp_path / "b", sha256=sha(body), retries=1)
    assert f"the {len(body) // 2} bytes sent without a Content-Length do not match" in str(
        err.value
    )
    with pytest.raises(SourceError, match="without a Content-Length.*give the file's sha256"):
        get(server, tls, "/always", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_file_changed_since_the_part_was_started_is_not_spliced(tmp_path, server, tls):
    old = bytes(range(256)) * 40
    new = bytes(reversed(range(256))) * 40
    server.routes["/w"] = (old, "application/octet-stream", "always_cut")
    dest = tmp_path / "w.bin"
    with pytest.raises(SourceError):
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
    transfer.resume_file(part).write_text(json.dumps({"etag": etag(old)}))
    assert get(server, tls, "/w", dest, sha256=sha(new), retries=1) == sha(new)
    assert server.requests == [("/w", "bytes=1000-"), ("/w", None)]
    assert dest.read_bytes() == new


def test_a_part_at_the_size_cap_is_not_resumed(tmp_path, server, tls):
    body = b"z" * 5000
    server.routes["/w"] = (body, "application/octet-stream", "ok")
    dest = tmp_path / "w"
    part = part_of(dest, f"{server.url}/w")
    part.write_bytes(b"z" * 8000)  # grown past the cap by some earlier run
    transfer.resume_file(part).write_text(json.dumps({"etag": etag(body)}))
    assert get(server, tls, "/w", dest, sha256=sha(body), max_bytes=6000) == sha(body)
    assert server.requests == [("/w", None)]


def test_remote_sources_need_a_pinned_sha256(tmp_path, h5_files, server, tls, caplog):
    server.routes["/w.h5"] = (h5_files["tiny"].read_bytes(), "application/octet-stream", "ok")
    wp = params({"type": "url", "url": f"{server.url}/w.h5"}, ca_bundle=str(tls.cert))
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path, wp)
    line = str(err.value).splitlines()[1]
    assert "no sha256 pinned" in line and "sha256sum" in line and "weights.sha256" in line
    assert server.requests == []
    # a pin that is no sha256 is refused by the schema, for the section or for a source
    with pytest.raises(ParamsError, match="weights.sha256 = 'not-a-checksum': string should"):
        fetch(tmp_path, {**wp, "sha256": "not-a-checksum"})
    bad = {"type": "url", "url": f"{server.url}/w.h5", "sha256": "ab" * 31}
    with pytest.raises(ParamsError, match=r"weights.sources\[0\].sha256 = 'abab"):
        fetch(tmp_path, params(bad, ca_bundle=str(tls.cert)))
    assert server.requests == []


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
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path, wp, force=True)
    assert "url https://127.0.0.1" in str(err.value) and "S3CRET" not in str(err.value)


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
    moved = http.CheckedRedirects().redirect_request(
        request, None, 302, "Found", {}, "https://drive.usercontent.google.com/download?id=x"
    )
    assert moved.get_header("Authorization") is None
    assert http.split_credentials("https://h/x") == ("https://h/x", None)


def test_a_redirect_loop_is_one_line(tmp_path, server, tls):
    server.handlers["/loop"] = redirect_to("/loop")
    with pytest.raises(SourceError) as err:
        get(server, tls, "/loop?token=S3CRET", tmp_path / "w.h5", sha256="0" * 64)
    assert str(err.value) == (
        f"HTTP 302: a redirect loop (too many redirects) at {server.url}/loop"
    )


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
    with pytest.raises(WeightsError) as err:
        fetch(tmp_path / "b", params({"type": "url", "url": url}, sha256=sha(data)))
    assert "dl;***/w.h5" in str(err.value) and "S3CRET" not in str(err.value)
