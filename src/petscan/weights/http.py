"""The HTTPS download: resumable, budgeted, retried, trusting nothing it is sent.

https only, no redirect to another host (except between Google Drive's own hosts) or to
http, at most `max_bytes` within `deadline_s`, a `.part` file resumed with HTTP Range +
If-Range requests, checked against the expected sha256 and renamed into place only when
complete, so a stopped or corrupt download never leaves a file that looks finished.
Credentials in a URL go as HTTP basic auth to that URL's host only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.cookiejar
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from petscan.utils.errors import DiskFullError, disk_full_message, is_disk_full
from petscan.utils.io import read_json, sha256_file, write_json
from petscan.utils.redact import redact_url
from petscan.weights import drive
from petscan.weights.errors import SourceError, error_text
from petscan.weights.transfer import Budget, byte_bar, drop_part, pump, resume_file

log = logging.getLogger(__name__)

USER_AGENT = "petscan-fetch-weights/0.1 (+python urllib)"


class _RetryableError(Exception):
    """One download attempt failed in a way another attempt may fix."""


# --------------------------------------------------------------------------- the client


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
    if not same and not (
        drive.is_drive_host(before.hostname) and drive.is_drive_host(parts.hostname)
    ):
        raise SourceError(
            f"refused a redirect from {before.hostname} to another host ({parts.hostname}): "
            "only Google Drive's own hosts may hand a download on"
        )


class CheckedRedirects(urllib.request.HTTPRedirectHandler):
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
        CheckedRedirects(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    ):
        opener.add_handler(handler)
    return opener


# --------------------------------------------------------------------------- the download


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
    url = drive.normalize_url(url)
    check_remote_url(url)
    url, auth = split_credentials(url)
    key = hashlib.sha1(url.encode()).hexdigest()[:10]
    part = dest.with_name(f"{dest.name}.{key}.part")
    opener = https_opener(ssl_context)
    budget = Budget(max_bytes, deadline_s)
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
            errors.append(error_text(exc))
            if isinstance(exc, urllib.error.HTTPError) and not _retryable_status(exc.code):
                raise SourceError(error_text(exc)) from None
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
        drop_part(part)
        raise SourceError(
            f"sha256 mismatch: got {digest}, expected {sha256} (weights.sha256); "
            "the download was deleted"
        )
    resume_file(part).unlink(missing_ok=True)
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
                drop_part(part)
                raise _RetryableError("server refused to resume (HTTP 416); restarting") from None
            raise
        with resp:
            if resp.headers.get_content_type() == "text/html":
                page = resp.read(2_000_000).decode("utf-8", errors="replace")
                next_url = drive.drive_confirmation(page, resp.geturl())
                if next_url and next_url != url:
                    check_remote_url(next_url, resp.geturl())
                    log.info("following the Google Drive download confirmation")
                    resolved[0] = next_url
                    continue
                title = drive.html_title(page)
                raise SourceError(
                    f"the server sent an HTML page (title: {title[:80]!r}), not the "
                    "weights file: the link may be private, wrong or over its download quota"
                )
            complete = _stream_to_part(resp, part, have, url, progress, budget)
        if not complete:  # no Content-Length: only the checksum can tell a cut body
            _check_unannounced_length(part, sha256)
        return
    raise SourceError("too many Google Drive confirmation pages")


def _stream_to_part(resp, part: Path, have: int, url: str, progress: bool, budget) -> bool:
    """Write the body into `part`; True when its length was announced (and received)."""
    if have and resp.status == 206:
        start = _content_range_start(resp.headers.get("Content-Range"))
        if start != have or not _same_file(resp, resume_file(part)):
            drop_part(part)
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
        byte_bar(f"download {name}", total, progress, initial=have) as bar,
    ):
        got = pump(resp, fh, bar, budget=budget, already=have, part=part)
    if expected is not None and got < expected:
        raise _RetryableError(f"connection closed after {have + got} of {total} bytes")
    return expected is not None


def _check_unannounced_length(part: Path, sha256: str | None) -> None:
    """A body sent without Content-Length ends when the connection closes, which a cut
    connection does too: accept it only when it matches the expected sha256."""
    size = part.stat().st_size
    if not sha256:
        drop_part(part)
        raise SourceError(
            f"the server sent {size} bytes without a Content-Length, so a cut connection "
            "cannot be told from the end of the file: give the file's sha256"
        )
    if sha256_file(part) != sha256.lower():
        drop_part(part)
        raise _RetryableError(
            f"the {size} bytes sent without a Content-Length do not match the sha256 "
            "(a cut connection, or another file); restarting"
        )


def _record_validators(resp, part: Path) -> None:
    """Keep what identifies this version of the file, for `If-Range` on a resume."""
    etag = resp.headers.get("ETag")
    validators = {
        "etag": etag if etag and not etag.startswith("W/") else None,  # If-Range: strong only
        "last_modified": resp.headers.get("Last-Modified"),
    }
    if any(validators.values()):
        write_json(resume_file(part), validators)
    else:
        resume_file(part).unlink(missing_ok=True)


def _resumable_part(part: Path, budget: Budget) -> tuple[int, str | None]:
    """(bytes to keep, If-Range value); (0, None) after deleting a part that cannot be
    resumed safely: no recorded validator, or not below the size cap."""
    if not part.exists():
        return 0, None
    have = part.stat().st_size
    validators = {}
    with contextlib.suppress(OSError, ValueError):
        validators = read_json(resume_file(part))
    validator = validators.get("etag") or validators.get("last_modified")
    capped = budget.max_bytes is not None and have >= budget.max_bytes
    if not have or not validator or capped:
        drop_part(part)
        return 0, None
    return have, str(validator)


def _same_file(resp, record: Path) -> bool:
    """False when a 206 answer names another ETag than the one the part was started with."""
    with contextlib.suppress(OSError, ValueError):
        recorded = read_json(record).get("etag")
        sent = resp.headers.get("ETag")
        return not (recorded and sent) or recorded == sent
    return True


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)
