"""The frozen backbone's weights at one fixed path, from the first source that works.

`fetch_weights` tries the sources listed in params `weights.sources` in order (a local
`file`, an http(s) `url` including Google Drive share links, a `kaggle` data set, a
`huggingface` hub file), checks that the result loads into the configured backbone, and
installs it as `<weights.dir>/weights.h5` with `<weights.dir>/weights.json` beside it:

    {"backbone": ..., "weights_source": "file:/x.h5" | "url:https://..." | "kaggle:..." |
     "huggingface:..." | "random" | "imagenet", "weights_sha256": ..., "random_init": bool,
     "weights_label": "RadImageNet" | "RANDOM-INIT backbone (not RadImageNet)" | ...}

(`handoff.WeightsInfo` owns that file; this module only writes it.)

When no source works, `weights.fallback` decides: `none` fails with a message naming every
source and why it failed, `random` writes a seeded random-init backbone in the same `.h5`
format (labelled loudly: `random_init` true), `imagenet` asks Keras for its ImageNet
weights (needs internet access).

Downloads use only the standard library and trust nothing they are sent: https only, no
redirect to another host (except between Google Drive's own hosts) or to http, at most
`weights.max_download_mb` within `weights.deadline_s`, a `.part` file resumed with HTTP
Range + If-Range requests, verified against the pinned sha256 that every remote source
needs, and renamed into place only when complete, so a stopped or corrupt download never
leaves a file that looks finished. Kaggle archives are read member by member, never
extracted by the members' own names. Error messages describe a wrong file by its type and
size, never by its content, and show URLs without credentials or query (`redact`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import http.client
import http.cookiejar
import importlib
import logging
import os
import re
import socket
import ssl
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
from tqdm.auto import tqdm

from petscan.handoff.records import (
    DEFAULT_LABEL,
    DEMO_LABEL,
    IMAGENET_LABEL,
    RANDOM_LABEL,
    WEIGHTS_META_FILE,
    WeightsInfo,
    read_weights_meta,
    weights_file,
    write_weights_meta,
)
from petscan.model import backbones
from petscan.params import loading as config
from petscan.utils import logs
from petscan.utils.errors import DiskFullError, UserError, disk_full_message, is_disk_full
from petscan.utils.io import read_json, sha256_file, write_json
from petscan.utils.redact import redact_text, redact_url, redact_values

log = logging.getLogger(__name__)

FALLBACKS = ("none", "random", "imagenet")
DEMO_BACKBONE = "pet_demo"  # installed from weights.demo, never from weights.sources
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "file": ("path",),
    "url": ("url",),
    "kaggle": ("dataset", "file"),
    "huggingface": ("repo_id", "filename"),
}
REMOTE_SOURCES = ("url", "kaggle", "huggingface")  # these need a pinned sha256
CHUNK = 1 << 20
MB = 1 << 20  # weights.max_download_mb counts these
USER_AGENT = "petscan-fetch-weights/0.1 (+python urllib)"
_CANDIDATE = ".weights.candidate.h5"  # Keras wants an .h5 name to load the legacy format
_DRIVE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}
_DRIVE_SUFFIX = ".googleusercontent.com"  # doc-0s-...-docs.googleusercontent.com serves files


class WeightsError(UserError, RuntimeError):
    """Weights that cannot be used: a wrong file, or no source that works."""


class SourceError(WeightsError):
    """One source failed; the message says why (collected into the final report)."""


class _RetryableError(Exception):
    """One download attempt failed in a way another attempt may fix."""


# --------------------------------------------------------------------------- Google Drive


def gdrive_file_id(url: str) -> str | None:
    """The file id of a Google Drive link (`/file/d/<id>/view`, `open?id=`, `uc?id=`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in _DRIVE_HOSTS:
        return None
    match = re.search(r"/file/d/([0-9A-Za-z_-]+)", parts.path)
    if match:
        return match.group(1)
    ids = urllib.parse.parse_qs(parts.query).get("id")
    return ids[0] if ids else None


def normalize_url(url: str) -> str:
    """A direct-download URL: Drive `file/d/<id>/view` and `open?id=` links become
    `https://drive.google.com/uc?export=download&id=<id>`; other URLs are unchanged."""
    file_id = gdrive_file_id(url)
    parts = urllib.parse.urlsplit(url)
    if file_id is None or parts.hostname == "drive.usercontent.google.com":
        return url
    if parts.path.startswith("/uc"):
        query = urllib.parse.parse_qs(parts.query)
        if "confirm" in query:  # already past the interstitial
            return url
    return f"https://drive.google.com/uc?export=download&id={file_id}"


class _FormParser(HTMLParser):
    """Collects forms (action + hidden inputs) and link targets of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((attr.get("action", ""), {}))
        elif tag == "input" and self.forms and attr.get("name"):
            self.forms[-1][1][attr["name"]] = attr.get("value", "")
        elif tag == "a" and attr.get("href"):
            self.links.append(attr["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def gdrive_confirm_url(page: str, base_url: str) -> str | None:
    """The real download URL behind a Google Drive "can't scan this file for viruses" page.

    Handles the current form (`<form action=".../download">` with hidden `id`, `confirm`,
    `uuid` inputs) and the older `href="/uc?export=download&confirm=XXXX&id=..."` link.
    Returns None when the page is no such interstitial (an error or quota page).
    """
    parser = _FormParser()
    parser.feed(page)
    for action, inputs in parser.forms:
        if "confirm" in inputs or "download" in action:
            target = urllib.parse.urljoin(base_url, html.unescape(action) or base_url)
            query = urllib.parse.urlencode(inputs)
            return f"{target}{'&' if '?' in target else '?'}{query}" if query else target
    for href in parser.links:
        if "confirm=" in href:
            return urllib.parse.urljoin(base_url, html.unescape(href))
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        parts = urllib.parse.urlsplit(base_url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["confirm"] = match.group(1)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def html_title(page: str | bytes) -> str:
    if isinstance(page, bytes):
        page = page.decode("utf-8", errors="replace")
    match = re.search(r"<title[^>]*>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    return " ".join(html.unescape(match.group(1)).split()) if match else "no title"


# --------------------------------------------------------------------------- HTTP download


def is_drive_host(host: str | None) -> bool:
    """Google Drive's own hosts, the only ones whose HTML pages are parsed for a download
    link and between which a redirect may change host."""
    host = (host or "").lower()
    return host in _DRIVE_HOSTS or host.endswith(_DRIVE_SUFFIX)


def check_remote_url(url: str, previous: str | None = None) -> None:
    """Refuse a URL that is not https, or that moves to another host than `previous`
    (except between Google Drive's hosts). Raises `SourceError`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        why = "a redirect" if previous else "the URL"
        raise SourceError(
            f"{why} leads to {redact_url(url)!r}: only https:// downloads are allowed "
            "(for a file you placed yourself use a `file` source)"
        )
    if previous is None:
        return
    before = urllib.parse.urlsplit(previous)
    same = (parts.hostname, parts.port) == (before.hostname, before.port)
    if not same and not (is_drive_host(before.hostname) and is_drive_host(parts.hostname)):
        raise SourceError(
            f"refused a redirect from {before.hostname} to another host ({parts.hostname}): "
            "only Google Drive's own hosts may hand a download on"
        )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when `check_remote_url` accepts it (https, same host); the
    credentials of the URL go only to its own host (not from one Drive host to another)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_remote_url(newurl, req.full_url)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not _same_host(newurl, req.full_url):
            new.remove_header("Authorization")
        return new


def _same_host(url: str, other: str) -> bool:
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(other)
    return (a.hostname, a.port) == (b.hostname, b.port)


def split_credentials(url: str) -> tuple[str, str | None]:
    """(`url` without its `user:password@`, the HTTP basic `Authorization` value or None).

    urllib would take `user:password@host` for the host name (and send the password to the
    name resolver); the credentials are sent as HTTP basic auth instead, over https only
    (`check_remote_url`), percent-escapes decoded (`p%40ss` is `p@ss`)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def make_ssl_context(ca_bundle: str | Path | None = None) -> ssl.SSLContext:
    """The system's trusted certificates plus, if given, those of `ca_bundle` (a PEM file;
    `weights.ca_bundle`, for a proxy that re-signs TLS). Host names are always checked."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def https_opener(ssl_context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """An opener that speaks only https: no http, file, ftp or data handler, checked
    redirects, cookies (Google Drive's confirmation needs them)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPSHandler(context=ssl_context or make_ssl_context()),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirects(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    ):
        opener.add_handler(handler)
    return opener


class _Budget:
    """The size cap and the overall deadline of one download."""

    def __init__(self, max_bytes: int | None, deadline_s: float | None) -> None:
        self.max_bytes = int(max_bytes) if max_bytes else None
        self.deadline_s = float(deadline_s) if deadline_s else None
        self.ends = time.monotonic() + self.deadline_s if self.deadline_s else None

    def left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return max(0.0, self.ends - time.monotonic()) if self.ends is not None else float("inf")

    def timeout(self, per_read_s: float) -> float:
        """The socket timeout for the next request; `SourceError` once the deadline passed."""
        self.check_time(None)
        if self.ends is None:
            return per_read_s
        return max(0.1, min(per_read_s, self.ends - time.monotonic()))

    def check_time(self, part: Path | None) -> None:
        if self.ends is not None and time.monotonic() > self.ends:
            kept = (
                f"; {part.stat().st_size} bytes are kept in {part.name} to resume"
                if (part is not None and part.exists())
                else ""
            )
            raise SourceError(
                f"the download took longer than weights.deadline_s = {self.deadline_s:g} s{kept}"
            )

    def check_size(self, size: int, part: Path, what: str) -> None:
        """`SourceError` (and the part file deleted) when `size` bytes exceed the cap."""
        if self.max_bytes is not None and size > self.max_bytes:
            _drop_part(part)
            raise SourceError(
                f"{what} {size} bytes, more than weights.max_download_mb "
                f"({self.max_bytes / MB:g} MB); the download was deleted"
            )


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout_s: float = 30.0,
    retry_wait_s: float = 1.0,
    progress: bool = True,
    max_bytes: int | None = None,
    deadline_s: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Download the https `url` to `dest` and return the file's sha256.

    Bytes go to `<dest>.<key>.part` (one per URL); an interrupted attempt is resumed with
    an HTTP Range request guarded by `If-Range` (the ETag or Last-Modified recorded when
    the part was started, so a changed file restarts from zero), up to `retries` more
    attempts. At most `max_bytes` are accepted and the whole download, retries included,
    stops after `deadline_s` seconds. A body shorter than its Content-Length is
    incomplete; a body without Content-Length is complete only when it matches `sha256`.
    The part file is renamed to `dest` only when complete and, if `sha256` is given,
    matching it. Credentials in the URL (`https://user:password@host/...`) are sent as
    HTTP basic auth to that host only. Raises `SourceError` with the reason, and
    `DiskFullError` when the disk is full.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = normalize_url(url)
    check_remote_url(url)
    url, auth = split_credentials(url)
    key = hashlib.sha1(url.encode()).hexdigest()[:10]
    part = dest.with_name(f"{dest.name}.{key}.part")
    opener = https_opener(ssl_context)
    budget = _Budget(max_bytes, deadline_s)
    shown = redact_url(url)
    errors: list[str] = []
    resolved = [url]  # after a Drive confirmation page, retries go straight to the file
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(retry_wait_s * 2 ** (attempt - 1), 30.0, budget.left()))
            log.info("retrying %s (attempt %d of %d)", shown, attempt + 1, retries + 1)
        try:
            _download_once(opener, resolved, part, timeout_s, progress, budget, (sha256, auth))
            break
        except (_RetryableError, OSError, http.client.HTTPException) as exc:
            if is_disk_full(exc):  # another attempt cannot help; the part is kept to resume
                raise DiskFullError(disk_full_message(exc, part)) from None
            errors.append(_error_text(exc))
            if isinstance(exc, urllib.error.HTTPError) and not _retryable_status(exc.code):
                raise SourceError(_error_text(exc)) from None
            if isinstance(getattr(exc, "reason", None), socket.gaierror):
                raise SourceError(
                    f"cannot resolve the host of {shown} ({exc.reason}): is this machine offline?"
                ) from None
            budget.check_time(part)
    else:
        kept = f"; the partial file {part} is kept to resume next time" if part.exists() else ""
        raise SourceError(
            f"download failed after {retries + 1} attempts, last error: {errors[-1]}{kept}"
        )
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        _drop_part(part)
        raise SourceError(
            f"sha256 mismatch: got {digest}, expected {sha256} (weights.sha256); "
            "the download was deleted"
        )
    _resume_file(part).unlink(missing_ok=True)
    os.replace(part, dest)
    return digest


def _download_once(
    opener, resolved: list[str], part: Path, timeout_s: float, progress: bool, budget, pins
) -> None:
    """One attempt: append to `part` from where it stops (Range + If-Range) or start again.

    `resolved[0]` is the URL to ask; a followed Drive confirmation page replaces it.
    `pins`: (the expected sha256, the `Authorization` value for the first URL's host)."""
    sha256, auth = pins
    first = resolved[0]
    for _hop in range(3):  # Google Drive may put an interstitial page before the file
        url = resolved[0]
        have, validator = _resumable_part(part, budget)
        headers = {"User-Agent": USER_AGENT}
        if auth and _same_host(url, first):
            headers["Authorization"] = auth
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = validator
        try:
            resp = opener.open(
                urllib.request.Request(url, headers=headers), timeout=budget.timeout(timeout_s)
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the part is no prefix the server knows: restart
                _drop_part(part)
                raise _RetryableError("server refused to resume (HTTP 416); restarting") from None
            raise
        with resp:
            if resp.headers.get_content_type() == "text/html":
                page = resp.read(2_000_000).decode("utf-8", errors="replace")
                next_url = _drive_confirmation(page, resp.geturl())
                if next_url and next_url != url:
                    check_remote_url(next_url, resp.geturl())
                    log.info("following the Google Drive download confirmation")
                    resolved[0] = next_url
                    continue
                title = html_title(page)
                raise SourceError(
                    f"the server sent an HTML page (title: {title[:80]!r}), not the "
                    "weights file: the link may be private, wrong or over its download quota"
                )
            complete = _stream_to_part(resp, part, have, url, progress, budget)
        if not complete:  # no Content-Length: only the checksum can tell a cut body
            _check_unannounced_length(part, sha256)
        return
    raise SourceError("too many Google Drive confirmation pages")


def _drive_confirmation(page: str, page_url: str) -> str | None:
    """The download URL behind a Google Drive interstitial; None for any other page (the
    HTML of other hosts is never searched for links)."""
    if not is_drive_host(urllib.parse.urlsplit(page_url).hostname):
        return None
    return gdrive_confirm_url(page, page_url)


def _stream_to_part(resp, part: Path, have: int, url: str, progress: bool, budget) -> bool:
    """Write the body into `part`; True when its length was announced (and received)."""
    if have and resp.status == 206:
        start = _content_range_start(resp.headers.get("Content-Range"))
        if start != have or not _same_file(resp, _resume_file(part)):
            _drop_part(part)
            raise _RetryableError(
                f"server resumed at byte {start} of a file that changed, not at {have}; restarting"
            )
        mode = "ab"
    else:
        if have:
            log.info("the server sent the whole file (it changed, or ignores Range): restarting")
        have, mode = 0, "wb"
        _record_validators(resp, part)
    length = resp.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    total = have + expected if expected is not None else None
    if total is not None:
        budget.check_size(total, part, "the server announces")
    name = Path(urllib.parse.urlsplit(url).path).name.split(";")[0] or "weights"  # no token
    with (
        part.open(mode) as fh,
        _byte_bar(f"download {name}", total, progress, initial=have) as bar,
    ):
        got = _pump(resp, fh, bar, budget=budget, already=have, part=part)
    if expected is not None and got < expected:
        raise _RetryableError(f"connection closed after {have + got} of {total} bytes")
    return expected is not None


def _check_unannounced_length(part: Path, sha256: str | None) -> None:
    """A body sent without Content-Length ends when the connection closes, which a cut
    connection does too: accept it only when it matches the expected sha256."""
    size = part.stat().st_size
    if not sha256:
        _drop_part(part)
        raise SourceError(
            f"the server sent {size} bytes without a Content-Length, so a cut connection "
            "cannot be told from the end of the file: give the file's sha256"
        )
    if sha256_file(part) != sha256.lower():
        _drop_part(part)
        raise _RetryableError(
            f"the {size} bytes sent without a Content-Length do not match the sha256 "
            "(a cut connection, or another file); restarting"
        )


def _resume_file(part: Path) -> Path:
    """Beside a part file: the validators (ETag, Last-Modified) of the file it is part of."""
    return part.with_name(part.name + ".json")


def _drop_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _resume_file(part).unlink(missing_ok=True)


def _record_validators(resp, part: Path) -> None:
    """Keep what identifies this version of the file, for `If-Range` on a resume."""
    etag = resp.headers.get("ETag")
    validators = {
        "etag": etag if etag and not etag.startswith("W/") else None,  # If-Range: strong only
        "last_modified": resp.headers.get("Last-Modified"),
    }
    if any(validators.values()):
        write_json(_resume_file(part), validators)
    else:
        _resume_file(part).unlink(missing_ok=True)


def _resumable_part(part: Path, budget: _Budget) -> tuple[int, str | None]:
    """(bytes to keep, If-Range value); (0, None) after deleting a part that cannot be
    resumed safely: no recorded validator, or not below the size cap."""
    if not part.exists():
        return 0, None
    have = part.stat().st_size
    validators = {}
    with contextlib.suppress(OSError, ValueError):
        validators = read_json(_resume_file(part))
    validator = validators.get("etag") or validators.get("last_modified")
    capped = budget.max_bytes is not None and have >= budget.max_bytes
    if not have or not validator or capped:
        _drop_part(part)
        return 0, None
    return have, str(validator)


def _same_file(resp, resume_file: Path) -> bool:
    """False when a 206 answer names another ETag than the one the part was started with."""
    with contextlib.suppress(OSError, ValueError):
        recorded = read_json(resume_file).get("etag")
        sent = resp.headers.get("ETag")
        return not (recorded and sent) or recorded == sent
    return True


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def _error_text(exc: BaseException) -> str:
    """One line, without credentials."""
    if isinstance(exc, urllib.error.HTTPError) and "infinite loop" in str(exc.reason):
        return f"HTTP {exc.code}: a redirect loop (too many redirects) at {redact_url(exc.url)}"
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = f"cannot reach the server ({exc.reason})"
    else:
        text = redact_text(str(exc)) or type(exc).__name__
    return " ".join(redact_text(text).split())


def _failure_text(exc: Exception) -> str:
    """One line, without credentials: the message of a `WeightsError`, else the
    exception's type and message (an unexpected error of a client or of a file)."""
    text = redact_text(str(exc))
    if not isinstance(exc, WeightsError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return " ".join(text.split())


# --------------------------------------------------------------------------- checking files


def h5_weight_layers(path: str | Path) -> list[tuple[str, list[str], list[tuple[int, ...]]]]:
    """(layer name, weight names, weight shapes) for each layer with weights, in file order,
    the way Keras' legacy loader sees a whole-model or weights-only `.h5` file."""
    with h5py.File(path, "r") as fh:
        group = _weights_group(fh)
        layers = []
        for name in _str_list(group.attrs["layer_names"]):
            names = _str_list(group[name].attrs.get("weight_names", []))
            if names:
                layers.append((name, names, [tuple(group[name][w].shape) for w in names]))
    return layers


def describe_file(path: str | Path) -> str:
    """What a file looks like, in words: HDF5 model summary, HTML page, archive, text..."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    with path.open("rb") as fh:
        head = fh.read(4096)
    if h5py.is_hdf5(str(path)):
        try:
            return _describe_h5(path)
        except (OSError, KeyError) as exc:  # h5py cannot open or read it
            return f"a damaged or truncated HDF5 file of {size} bytes ({_error_text(exc)})"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:1024]:
        return f"an HTML page (title: {html_title(head)!r}), not HDF5"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, not HDF5 (extract the .h5 file from it)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file, not HDF5 (decompress it first)"
    # Never quote the bytes: a wrong file may hold a secret (a key, a token) and this
    # text goes into logs and CI output.
    sample = head[:200]
    if sample.isascii() and all(c >= 32 or c in b"\r\n\t" for c in sample):
        kind = "a JSON text file" if sample.lstrip()[:1] in (b"{", b"[") else "a text file"
        return f"{kind} of {size} bytes, not HDF5"
    return f"{size} bytes of binary data that is not HDF5"


def _describe_h5(path: Path) -> str:
    with h5py.File(path, "r") as fh:
        keys = list(fh.keys())
        has_layers = "layer_names" in fh.attrs or (
            "model_weights" in fh and "layer_names" in fh["model_weights"].attrs
        )
    if not has_layers:
        return f"an HDF5 file that is not a legacy Keras model (top-level keys: {keys[:6]})"
    layers = h5_weight_layers(path)
    tensors = sum(len(names) for _, names, _ in layers)
    kinds = list(dict.fromkeys(re.sub(r"_?\d+$", "", name) for name, _, _ in layers))
    text = (
        f"a Keras model with {len(layers)} layers holding {tensors} weight tensors "
        f"(layers named like {', '.join(kinds[:5])})"
    )
    top = _classification_top(layers)
    return f"{text}, {top}" if top else text


def _classification_top(layers: list[tuple[str, list[str], list[tuple[int, ...]]]]) -> str:
    """'a file with a classification top (...)' when the last layer is a dense classifier."""
    if not layers:
        return ""
    name, _, shapes = layers[-1]
    if shapes and len(shapes[0]) == 2:
        return (
            f"a file with a classification top (last layer {name!r}: Dense "
            f"{shapes[0][0]} -> {shapes[0][1]}); a no-top file is needed"
        )
    return ""


def check_weights(
    path: str | Path, backbone: str, input_shape: tuple[int, int, int]
) -> dict[str, Any]:
    """Refuse a file that is not the configured no-top backbone's weights.

    The file must load by layer order into `backbones.build_backbone(backbone, input_shape)`
    and its first, middle and last tensors must equal the loaded ones (read with h5py).
    Returns {"layers", "tensors", "checked_tensors"}; raises `WeightsError` saying what the
    file looks like instead.
    """
    path = Path(path)
    if not h5py.is_hdf5(str(path)):
        raise WeightsError(f"not a Keras .h5 weights file: it is {describe_file(path)}")
    try:
        layers = h5_weight_layers(path)
    except (KeyError, OSError) as exc:
        raise WeightsError(f"not a Keras .h5 weights file: it is {describe_file(path)}") from exc
    model = backbones.build_backbone(backbone, tuple(input_shape))
    expected = [layer for layer in model.layers if _legacy_weights(layer)]
    n_tensors = sum(len(_legacy_weights(layer)) for layer in expected)
    mismatch = len(layers) != len(expected) or sum(len(n) for _, n, _ in layers) != n_tensors
    if mismatch:
        raise WeightsError(
            f"wrong architecture: the file is {describe_file(path)}; backbone {backbone!r} "
            f"needs {len(expected)} layers holding {n_tensors} weight tensors "
            "(check model.backbone in params.yaml, or the weights source)"
        )
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError or others on shape mismatches
        raise WeightsError(
            f"the file does not load into backbone {backbone!r}: {exc} "
            f"(the file is {describe_file(path)})"
        ) from exc
    try:
        checked = _compare_tensors(path, layers, expected)
    except (OSError, KeyError) as exc:
        raise WeightsError(f"cannot read the file's tensors: {_error_text(exc)}") from exc
    return {"layers": len(layers), "tensors": n_tensors, "checked_tensors": checked}


def _compare_tensors(path: Path, layers, expected) -> list[str]:
    """Compare the first, middle and last weight tensors of the file and the model."""
    flat = [(i, j) for i, (_, names, _) in enumerate(layers) for j in range(len(names))]
    picks = sorted({0, len(flat) // 2, len(flat) - 1})
    checked = []
    with h5py.File(path, "r") as fh:
        group = _weights_group(fh)
        for k in picks:
            i, j = flat[k]
            name, names, _ = layers[i]
            stored = np.asarray(group[name][names[j]])
            loaded = np.asarray(_legacy_weights(expected[i])[j].numpy())
            if stored.shape != loaded.shape or not np.array_equal(stored, loaded):
                raise WeightsError(
                    f"tensor {names[j]} of the file differs from what Keras loaded into "
                    f"layer {expected[i].name!r}: the file's layer order does not match"
                )
            checked.append(names[j])
    return checked


def _weights_group(fh: h5py.File) -> h5py.Group:
    if "layer_names" not in fh.attrs and "model_weights" in fh:
        return fh["model_weights"]
    return fh


def _str_list(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_weights(layer) -> list:
    return layer.trainable_weights + layer.non_trainable_weights


# --------------------------------------------------------------------------- sources


def source_name(source: Mapping[str, Any]) -> str:
    """A short name for messages: `url https://...` (redacted), `kaggle owner/set/file`..."""
    kind = source.get("type", "?")
    fields = [redact_url(str(source.get(f))) for f in SOURCE_FIELDS.get(kind, ()) if source.get(f)]
    return f"{kind} {'/'.join(fields)}".strip()


def expected_sha256(source: Mapping[str, Any], weights_params: Mapping[str, Any]) -> str | None:
    """The source's own `sha256`, else `weights.sha256`."""
    value = source.get("sha256") or weights_params.get("sha256")
    return str(value).lower() if value else None


def check_pins(source: Mapping[str, Any], weights_params: Mapping[str, Any]) -> None:
    """A remote source needs a pinned sha256 (the first download is not trusted blindly)
    and a hub source a pinned revision (a commit hash). Raises `SourceError`."""
    kind = source.get("type")
    if kind not in REMOTE_SOURCES:
        return
    if not expected_sha256(source, weights_params):
        raise SourceError(
            "no sha256 pinned, and a remote file is installed only when its checksum is known: "
            "the first time, download the file yourself, install it once as a `file` source "
            "(its sha256 is printed and written to weights.json) or run `sha256sum` on it, then "
            "set weights.sha256 (or this source's sha256) to that value"
        )
    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256(source, weights_params) or ""):
        raise SourceError("sha256 must be 64 hexadecimal characters")
    if kind == "huggingface" and not re.fullmatch(r"[0-9a-f]{40}", str(source.get("revision"))):
        raise SourceError(
            f"revision must pin a commit (40 hexadecimal characters), got "
            f"{source.get('revision')!r}: a branch or tag can be moved; copy the commit hash "
            "from the repository's history on the hub"
        )


def fetch_source(
    source: Mapping[str, Any],
    dest: Path,
    *,
    root: Path,
    weights_params: Mapping[str, Any],
    progress: bool = True,
) -> str:
    """Put the file of one source at `dest`; return its metadata `source` string.

    Raises `SourceError` (missing field, missing optional client, not found, HTTP error...).
    """
    kind = source.get("type")
    if kind not in SOURCE_FIELDS:
        raise SourceError(f"unknown source type {kind!r}; use one of {sorted(SOURCE_FIELDS)}")
    nulls = [f for f in SOURCE_FIELDS[kind] if not source.get(f)]
    if nulls:
        raise SourceError(f"skipped: {', '.join(nulls)} is null")
    check_pins(source, weights_params)
    fetchers = {
        "file": _fetch_file,
        "url": _fetch_url,
        "kaggle": _fetch_kaggle,
        "huggingface": _fetch_huggingface,
    }
    return fetchers[kind](source, dest, root=root, params=weights_params, progress=progress)


def resolve_file(path: str | Path, root: Path) -> Path:
    """A `file` source path: `~` expanded, relative paths against the repository root
    (the rule `config.source_file_exists` applies to `model.backbone: auto`)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def _fetch_file(source, dest: Path, *, root: Path, params, progress: bool) -> str:
    path = resolve_file(source["path"], root)
    if not path.is_file():
        raise SourceError(f"not found at {path}")
    _copy(path, dest, progress)
    return f"file:{path}"


def _fetch_url(source, dest: Path, *, root: Path, params, progress: bool) -> str:
    ca_bundle = params.get("ca_bundle")
    download(
        source["url"],
        dest,
        sha256=expected_sha256(source, params),
        retries=int(params["retries"]),
        timeout_s=float(params["timeout_s"]),
        retry_wait_s=float(params["retry_wait_s"]),
        progress=progress,
        max_bytes=_max_bytes(params),
        deadline_s=params.get("deadline_s"),
        ssl_context=make_ssl_context(resolve_file(ca_bundle, root)) if ca_bundle else None,
    )
    return f"url:{redact_url(source['url'])}"


def _max_bytes(params: Mapping[str, Any]) -> int | None:
    """`weights.max_download_mb` in bytes; null: no cap."""
    mb = params.get("max_download_mb")
    return int(float(mb) * MB) if mb else None


def _fetch_kaggle(source, dest: Path, *, root: Path, params, progress: bool) -> str:
    api_module = _import_optional("kaggle.api.kaggle_api_extended", "kaggle", "kaggle")
    try:
        api = api_module.KaggleApi()
        api.authenticate()
    except Exception as exc:  # the client raises OSError/ValueError without credentials
        raise SourceError(
            f"Kaggle credentials are not configured ({exc}): put kaggle.json in ~/.kaggle/ "
            "(chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kaggle-") as tmp:
        try:
            api.dataset_download_file(
                source["dataset"], source["file"], path=tmp, force=True, quiet=not progress
            )
        except Exception as exc:
            raise SourceError(f"Kaggle download failed: {exc}") from None
        got = _kaggle_result(Path(tmp), source["file"], _max_bytes(params))
        os.replace(got, dest)
    return f"kaggle:{source['dataset']}/{source['file']}"


def _kaggle_result(folder: Path, filename: str, max_bytes: int | None = None) -> Path:
    """The downloaded file inside `folder` (a private temporary folder); older Kaggle
    clients deliver `<file>.zip`, whose member is copied to `folder/<file>`."""
    name = Path(filename).name
    target = folder / name
    if target.is_file() and not target.is_symlink():
        return target
    archive = folder / f"{name}.zip"
    if archive.is_file() and not archive.is_symlink():
        extract_member(archive, name, target, max_bytes)
        return target
    raise SourceError(f"the Kaggle client wrote no {name} (found {sorted(os.listdir(folder))})")


def safe_member_name(info: zipfile.ZipInfo) -> str | None:
    """The normalised name of a regular-file member that stays inside the folder it is
    extracted to; None for a folder, a symlink, an absolute name or one with `..`."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or kind not in (0, stat.S_IFREG):  # 0: made on a system without modes
        return None
    name = info.filename.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or not parts:
        return None
    return "/".join(parts)


def extract_member(archive: Path, name: str, target: Path, max_bytes: int | None = None) -> None:
    """Copy the archive's regular member whose base name is `name` to `target`.

    A member's own name never becomes a path: only its bytes are read. Members that are
    links, absolute or climb out with `..` are ignored; several candidates, or none, is
    an error. At most `max_bytes` are written (a zip bomb stops there)."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        safe = [(safe_member_name(i), i) for i in infos]
        matches = [i for n, i in safe if n is not None and n.rsplit("/", 1)[-1] == name]
        if len(matches) != 1:
            refused = sum(1 for n, i in safe if n is None and not i.is_dir())
            raise SourceError(
                f"the Kaggle archive {archive.name} holds {len(matches)} safe members named "
                f"{name} ({len(infos)} members, {refused} refused: links, absolute or `..` "
                "names); expected exactly one"
            )
        member = matches[0]
        if max_bytes is not None and member.file_size > max_bytes:
            raise SourceError(
                f"{member.file_size} bytes in the archive, more than weights.max_download_mb"
            )
        budget = _Budget(max_bytes, None)
        with zf.open(member) as src, target.open("wb") as out:
            _pump(src, out, _byte_bar("unzip", None, False), budget=budget, part=target)


def _fetch_huggingface(source, dest: Path, *, root: Path, params, progress: bool) -> str:
    hub = _import_optional("huggingface_hub", "huggingface_hub", "hub")
    try:
        cached = hub.hf_hub_download(
            repo_id=source["repo_id"],
            filename=source["filename"],
            revision=source.get("revision"),
            repo_type=source.get("repo_type"),
        )
    except Exception as exc:  # hub errors (offline, 404, gated) have many classes
        raise SourceError(f"Hugging Face download failed: {exc}") from None
    _copy(Path(cached), dest, progress)
    return f"huggingface:{source['repo_id']}/{source['filename']}@{source['revision']}"


def _import_optional(module: str, package: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SourceError(
            f"the optional '{package}' client is not installed: pip install 'petscan[{extra}]'"
        ) from None
    except Exception as exc:  # `import kaggle` authenticates at import time
        raise SourceError(
            f"the '{package}' client failed to start ({exc}); for Kaggle put kaggle.json in "
            "~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None


def _copy(src: Path, dest: Path, progress: bool) -> None:
    with (
        src.open("rb") as fin,
        dest.open("wb") as fout,
        _byte_bar(f"copy {src.name}", src.stat().st_size, progress) as bar,
    ):
        _pump(fin, fout, bar)


def _byte_bar(desc: str, total: int | None, progress: bool, initial: int = 0) -> tqdm:
    """A progress bar counting bytes (KiB, MiB, ...); `total=None` when the size is unknown."""
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
    )


def _pump(
    source, sink, bar: tqdm, budget: _Budget | None = None, already: int = 0, part=None
) -> int:
    """Copy `source` into `sink` in reads of at most `CHUNK` bytes, advancing `bar`; the
    bytes copied. With a `budget`, `already + copied` must stay within its size cap and
    the copy within its deadline (checked after every read)."""
    copied = 0
    read = getattr(source, "read1", source.read)  # read1: returns what has arrived
    while chunk := read(CHUNK):
        sink.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
        if budget is not None:
            budget.check_size(already + copied, part, "the body reached")
            budget.check_time(part)
    return copied


# --------------------------------------------------------------------------- fallbacks


def save_random_backbone(
    backbone: str, input_shape: tuple[int, int, int], seed: int, path: str | Path
) -> None:
    """A seeded random-init backbone written as a legacy `.h5` (same format as RadImageNet's).

    Seeds Python, NumPy and Keras globally (`keras.utils.set_random_seed`): the same seed
    gives byte-identical tensors in any process.
    """
    keras.utils.set_random_seed(int(seed))
    model = backbones.build_backbone(backbone, tuple(input_shape))
    with logs.legacy_h5():  # the RadImageNet file's own format, on purpose
        model.save(str(path))


def save_imagenet_backbone(
    backbone: str, input_shape: tuple[int, int, int], path: str | Path
) -> None:
    """Keras' ImageNet weights for the backbone, written as a legacy `.h5`."""
    if backbone == "tiny":
        raise WeightsError("the 'tiny' test backbone has no ImageNet weights")
    try:
        model = backbones.build_backbone(backbone, tuple(input_shape), weights="imagenet")
    except Exception as exc:
        raise WeightsError(
            "fallback 'imagenet' needs Keras to download ImageNet weights from "
            f"storage.googleapis.com, which failed ({_error_text(exc)}); on an offline "
            "machine it cannot work: place the RadImageNet file or use fallback: random"
        ) from None
    with logs.legacy_h5():
        model.save(str(path))


# --------------------------------------------------------------------------- the stage


def settings_of(weights_params: Mapping[str, Any], model_params: Mapping[str, Any]) -> dict:
    """The params that decide which file is installed (timeouts and retries do not), as
    recorded in weights.json: URLs without credentials or query (`redact`)."""
    return {
        "backbone": model_params["backbone"],
        "input_size": [int(v) for v in model_params["input_size"]],
        "sha256": weights_params.get("sha256"),
        "sources": [redact_values(dict(s)) for s in weights_params.get("sources") or []],
        "fallback": str(weights_params["fallback"]),
        "seed": weights_params.get("seed"),
        "demo": dict(weights_params["demo"]) if model_params["backbone"] == DEMO_BACKBONE else None,
    }


def run_fetch_weights(
    weights_params: Mapping[str, Any],
    model_params: Mapping[str, Any],
    *,
    workspace: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Install `<weights.dir>/weights.h5` and `weights.json`; return the metadata.

    `weights.dir` resolves against `workspace` (default: the folder holding params.yaml),
    relative `file` sources against `root` (default: the real repository root, which
    differs inside `dvc exp run --queue`). Work is skipped when the installed file matches
    its metadata's sha256 and settings, unless `force`.
    """
    workspace = Path(workspace) if workspace else config.workspace_root()
    root = Path(root) if root else config.repo_root()
    out_dir = workspace / weights_params["dir"]
    settings = settings_of(weights_params, model_params)
    fallback = settings["fallback"]
    if fallback not in FALLBACKS:
        raise WeightsError(f"weights.fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not force and (meta := _up_to_date(out_dir, settings, root)):
        log.info(
            "%s is up to date (%s); nothing to do", weights_file(out_dir), meta["weights_source"]
        )
        return meta

    out_dir.mkdir(parents=True, exist_ok=True)
    candidate = out_dir / _CANDIDATE
    failures: list[str] = []
    try:
        if settings["backbone"] == DEMO_BACKBONE:
            return _install_demo(candidate, out_dir, settings, root)
        for source in weights_params.get("sources") or []:
            result = _try_source(source, candidate, root, weights_params, settings, progress)
            if isinstance(result, dict):
                return _install(candidate, out_dir, {**result, **_common(settings)})
            failures.append(result)
        return _fallback(candidate, out_dir, settings, failures, root)
    finally:
        candidate.unlink(missing_ok=True)


def _try_source(source, candidate: Path, root: Path, weights_params, settings, progress):
    """The metadata of a working source, or the line saying why it failed.

    Any failure of a source, of any exception type (a corrupt archive, a client's own
    error, a bug in a client), is that source's failure: the next source is tried. Only a
    full disk stops the chain (`DiskFullError`: every source writes to the same folder);
    Ctrl-C and SystemExit propagate."""
    name = source_name(source)
    try:
        label = fetch_source(
            source, candidate, root=root, weights_params=weights_params, progress=progress
        )
        digest = sha256_file(candidate)
        expected = expected_sha256(source, weights_params)
        if expected and digest != expected:
            raise SourceError(f"sha256 mismatch: got {digest}, expected {expected}")
        shape = (*settings["input_size"], 3)
        summary = check_weights(candidate, settings["backbone"], shape)
    except Exception as exc:  # noqa: BLE001 (the rule: a failing source never stops the chain)
        candidate.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(exc, candidate)) from None
        if isinstance(exc, DiskFullError):
            raise
        text = _failure_text(exc)
        log.info("source %s failed: %s", name, text)
        return f"{name}: {text}"
    log.info("weights from %s (sha256 %s)", label, digest)
    return {
        "weights_source": label,
        "weights_sha256": digest,
        "random_init": False,
        "weights_label": str(source.get("label") or DEFAULT_LABEL),
        **summary,
    }


def _install_demo(candidate: Path, out_dir: Path, settings, root: Path) -> dict[str, Any]:
    """Install the shipped `pet_demo` backbone, checked against its pinned sha256."""
    demo = settings["demo"]
    path = resolve_file(demo["path"], root)
    restore = f"restore it (`git checkout -- {demo['path']}`) or rebuild it (`make pretrain-demo`)"
    if not path.is_file():
        raise WeightsError(f"the demo backbone {path} is missing: {restore}")
    digest = sha256_file(path)
    if demo["sha256"] and digest != demo["sha256"]:
        raise WeightsError(
            f"the demo backbone {path} has sha256 {digest}, but weights.demo.sha256 pins "
            f"{demo['sha256']}: {restore}, then pin the new file's sha256"
        )
    _copy(path, candidate, progress=False)
    summary = check_weights(candidate, DEMO_BACKBONE, (*settings["input_size"], 3))
    meta = {
        "weights_source": f"demo:{demo['path']}",
        "weights_sha256": digest,
        "random_init": False,
        "weights_label": DEMO_LABEL,
        **summary,
    }
    log.info("the %s (%s)", DEMO_LABEL, path)
    return _install(candidate, out_dir, {**meta, **_common(settings)})


def _fallback(candidate: Path, out_dir: Path, settings, failures: list[str], root: Path):
    fallback, backbone = settings["fallback"], settings["backbone"]
    shape = (*settings["input_size"], 3)
    report = _failure_report(settings, failures, root)
    if fallback == "none":
        raise WeightsError(report)
    if fallback == "imagenet":
        try:
            save_imagenet_backbone(backbone, shape, candidate)
        except WeightsError as exc:
            raise WeightsError(f"{report}\n{exc}") from None
        meta = {"weights_source": "imagenet", "random_init": False, "weights_label": IMAGENET_LABEL}
        log.warning("no RadImageNet weights: using Keras' ImageNet weights instead")
    else:
        save_random_backbone(backbone, shape, int(settings["seed"] or 0), candidate)
        meta = {"weights_source": "random", "random_init": True, "weights_label": RANDOM_LABEL}
        log.warning(
            "!!! %s: no source gave the weights, so '%s' is RANDOMLY INITIALISED "
            "(seed %s). Every number computed with it says nothing about RadImageNet.\n%s",
            RANDOM_LABEL,
            backbone,
            settings["seed"],
            report,
        )
    summary = check_weights(candidate, backbone, shape)
    meta = {**meta, "weights_sha256": sha256_file(candidate), **summary}
    meta["rejected_files"] = _local_files(settings, root)  # so they do not "appear" next time
    return _install(candidate, out_dir, {**meta, **_common(settings)})


def _local_files(settings, root: Path) -> dict[str, dict[str, Any]]:
    """{path: {size, mtime_ns, sha256}} of the `file` sources that exist (and were refused)."""
    found = {}
    for source in settings["sources"]:
        path = source.get("path") if source.get("type") == "file" else None
        if path and (file := resolve_file(path, root)).is_file():
            stat = file.stat()
            found[str(file)] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": sha256_file(file),
            }
    return found


def _is_new_file(file: Path, refused: Mapping[str, Any] | None) -> bool:
    """True unless `file` is the one refused before (same size and time, or same bytes)."""
    if not refused:
        return True
    stat = file.stat()
    if stat.st_size == refused.get("size") and stat.st_mtime_ns == refused.get("mtime_ns"):
        return False
    return sha256_file(file) != refused.get("sha256")


def _failure_report(settings, failures: list[str], root: Path) -> str:
    lines = [
        f"no backbone weights for {settings['backbone']!r}: every weights.sources entry failed"
    ]
    lines += [f"  {i}. {text}" for i, text in enumerate(failures, 1)] or ["  (no sources listed)"]
    files = [s for s in settings["sources"] if s.get("type") == "file" and s.get("path")]
    target = resolve_file(files[0]["path"], root) if files else None
    if target is not None:
        lines.append(
            f"To place the file by hand: cp RadImageNet-IRV2_notop.h5 {target} "
            "(the `file` source's path), then rerun."
        )
    else:
        lines.append(
            "To place the file by hand: add {type: file, path: /path/to/the.h5} to "
            "weights.sources in params.yaml, then rerun."
        )
    if settings["fallback"] != "random":
        lines.append(
            "Or set weights.fallback: random for a labelled random-init backbone (demo only)."
        )
    return "\n".join(lines)


def _common(settings) -> dict[str, Any]:
    return {
        "backbone": settings["backbone"],
        "input_size": settings["input_size"],
        "size_bytes": None,
        "keras_version": keras.__version__,
        "settings": settings,
    }


def _install(candidate: Path, out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Move the checked file into place, then write its metadata (stale metadata goes first,
    so an interruption leaves a mismatch that the next run redoes)."""
    target = weights_file(out_dir)
    meta["size_bytes"] = candidate.stat().st_size
    info = WeightsInfo.from_dict(meta)
    (out_dir / WEIGHTS_META_FILE).unlink(missing_ok=True)
    os.replace(candidate, target)
    meta = write_weights_meta(out_dir, info, meta)
    for part in out_dir.glob(f"{_CANDIDATE}.*.part"):  # other URLs' unfinished downloads
        _drop_part(part)
    log.info("wrote %s (%s, %s)", target, info.weights_label, info.weights_source)
    return meta


def _up_to_date(out_dir: Path, settings, root: Path) -> dict[str, Any] | None:
    target, meta_path = weights_file(out_dir), out_dir / WEIGHTS_META_FILE
    if not (target.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_weights_meta(out_dir)
    except (ValueError, OSError):
        return None
    if meta.get("settings") != settings or sha256_file(target) != meta["weights_sha256"]:
        return None
    if meta["random_init"]:
        refused = meta.get("rejected_files") or {}
        for source in settings["sources"]:
            path = source.get("path") if source.get("type") == "file" else None
            file = resolve_file(path, root) if path else None
            if file is not None and file.is_file() and _is_new_file(file, refused.get(str(file))):
                log.info("a weights file appeared at %s: replacing the random init", path)
                return None
    return meta
