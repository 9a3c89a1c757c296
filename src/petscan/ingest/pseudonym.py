"""Pseudonyms: a keyed hash (HMAC-SHA256) of the PatientID, with a key kept out of the repo.

The key comes from the environment variable `ingest.key_env`, else from the file
`ingest.key_file` (`~` expanded); a key file inside the repository is refused, so it cannot
be committed. Without the key nobody can recompute a pseudonym from a PatientID; with it,
the same patient gets the same pseudonym in every export (all their views stay in one split).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from petscan.utils.errors import UserError

MIN_KEY_BYTES = 16
MAKE_KEY = (
    "mkdir -p ~/.config/petscan && python -c 'import secrets; print(secrets.token_hex(32))' "
    "> ~/.config/petscan/pseudonym.key && chmod 600 ~/.config/petscan/pseudonym.key"
)


class PseudonymKeyError(UserError):
    """No usable pseudonym key."""


def load_key(env_name: str, key_file: str | None, repo_root: str | Path) -> bytes:
    """The key: the environment variable `env_name`, else `key_file` (outside `repo_root`)."""
    value = os.environ.get(env_name, "")
    where = f"${env_name}"
    if not value and key_file:
        path = Path(key_file).expanduser().resolve()
        root = Path(repo_root).resolve()
        if path.is_relative_to(root):
            raise PseudonymKeyError(
                f"ingest.key_file {key_file} is inside the repository: a pseudonym key must "
                f"never be committed; move it out, e.g. {MAKE_KEY}"
            )
        if path.is_file():
            value, where = path.read_text(encoding="utf-8").strip(), str(path)
    if not value:
        raise PseudonymKeyError(
            f"no pseudonym key: set ${env_name} or create ingest.key_file ({key_file}): {MAKE_KEY}"
        )
    if len(value.encode()) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"the pseudonym key in {where} is shorter than {MIN_KEY_BYTES} bytes"
        )
    return value.encode()


def pseudonym(patient_id: str, key: bytes) -> str:
    """`p` + 16 hex digits of HMAC-SHA256(key, PatientID): letters and digits only, so it
    matches `data.patient_pattern` (`<patient>_v<k>`)."""
    digest = hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return "p" + digest[:16]
