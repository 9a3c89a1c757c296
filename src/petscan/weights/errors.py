"""What goes wrong with weights, and the one line that says so.

`WeightsError`: weights that cannot be used (a wrong file, or no source that works).
`SourceError`: one source failed; its line goes into the stage's failure report.
`error_text` and `failure_text` turn any exception into one line without credentials.
"""

from __future__ import annotations

import urllib.error

from petscan.utils.errors import UserError
from petscan.utils.redact import redact_text, redact_url


class WeightsError(UserError, RuntimeError):
    """Weights that cannot be used: a wrong file, or no source that works."""


class SourceError(WeightsError):
    """One source failed; the message says why (collected into the final report)."""


def error_text(exc: BaseException) -> str:
    """One line, without credentials (HTTP errors by their status, network errors by
    their reason)."""
    if isinstance(exc, urllib.error.HTTPError) and "infinite loop" in str(exc.reason):
        return f"HTTP {exc.code}: a redirect loop (too many redirects) at {redact_url(exc.url)}"
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = f"cannot reach the server ({exc.reason})"
    else:
        text = redact_text(str(exc)) or type(exc).__name__
    return " ".join(redact_text(text).split())


def failure_text(exc: Exception) -> str:
    """One line, without credentials: the message of a `WeightsError`, else the
    exception's type and message (an unexpected error of a client or of a file)."""
    text = redact_text(str(exc))
    if not isinstance(exc, WeightsError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return " ".join(text.split())
