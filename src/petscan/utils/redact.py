"""URLs as they may be recorded: no password, token, path parameter or query string.

Every URL that ends up in a log line, an error message, MLflow params or tags,
`weights.json`, `train.json` or a tuning summary goes through `redact_url` first
(`redact_values` does it for every URL inside nested params):

    https://user:pw@host/x?token=t      -> https://user:***@host/x?***
    postgresql://:pw@db:5432/optuna     -> postgresql://:***@db:5432/optuna
    https://TOKEN@host/x                -> https://***@host/x
    mysql://db/optuna?password=pw       -> mysql://db/optuna?***
    https://host/dl;jsessionid=S/w.h5   -> https://host/dl;***/w.h5
    sqlite:////repo/tune/optuna.db      -> unchanged (a path, no secret)
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from petscan.utils.errors import UserError

MASK = "***"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>//.*)$", re.DOTALL)
_EMBEDDED = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PATH_PARAMS = re.compile(r";[^/]*")  # `;jsessionid=...` in a path segment (RFC 3986 3.3)


def redact_url(url: str) -> str:
    """`url` with every part that can carry a token masked: the password (or a lone user
    name, often a token) of its userinfo, the parameters of its path segments
    (`;jsessionid=...` becomes `;***`), its query string and fragment (replaced by
    `?***`). A string that is no `scheme://` URL is returned unchanged."""
    match = _URL.match(url)
    if not match:
        return url
    scheme, rest = match["scheme"], match["rest"][2:]
    authority, sep, tail = _split_authority(rest)
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    path, query = _split_query(sep + tail)
    path = _PATH_PARAMS.sub(f";{MASK}", path)
    return f"{scheme}://{authority}{path}{'?' + MASK if query else ''}"


def refuse_cleartext_credentials(url: str, what: str) -> None:
    """`UserError` (one line) when `url` carries credentials (`user:password@`) over plain
    http to another machine, where they would cross the network unencrypted."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or "@" not in parts.netloc:
        return
    if (parts.hostname or "") in _LOOPBACK:
        return
    raise UserError(
        f"{what} {redact_url(url)} would send its credentials unencrypted over http: use https://"
    )


def redact_text(text: str) -> str:
    """Every `scheme://...` URL inside free text (an error message) redacted."""
    return _EMBEDDED.sub(lambda m: redact_url(m.group(0)), text)


def redact_values(obj: Any) -> Any:
    """A copy of nested params with every string that is a URL redacted."""
    if isinstance(obj, str):
        return redact_url(obj)
    if isinstance(obj, Mapping):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_values(v) for v in obj)
    return obj


def _split_authority(rest: str) -> tuple[str, str, str]:
    """(authority, first separator, what follows) of the part after `scheme://`.

    A password may contain `/`, `?` or `#` (RFC 3986 says it must not, but users paste
    such URLs): the authority ends at the last `@` before the path, if there is one."""
    at = rest.rfind("@")
    start = at + 1 if at >= 0 else 0
    cut = min((i for i in (rest.find(c, start) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:cut], rest[cut : cut + 1], rest[cut + 1 :]


def _split_query(path: str) -> tuple[str, bool]:
    """(path without query and fragment, whether there was a query or fragment)."""
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=-1)
    return (path, False) if cut < 0 else (path[:cut], True)
