"""The console's secret key: what its session cookies are encrypted and its CSRF tokens signed with.

``RECALL_SECRET_KEY`` when set (every process of ``recall serve`` behind one address must have the
same, or a session made by one is refused by the next). On the embedded default, unset: a key made
under ``RECALL_HOME`` on first start (mode 0600), kept for the next. Elsewhere, unset: the service
refuses to start (``SecretKeyError``), rather than make a key of its own that the other processes
would not share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from config.settings import Settings, make_home_file

__all__ = ["EMBEDDED_FILE", "MIN_LENGTH", "SecretKeyError", "derived_key", "secret_key"]

#: The name of the key file the embedded default keeps under RECALL_HOME.
EMBEDDED_FILE = "secret-key"
#: The shortest key accepted: 32 characters (`openssl rand -hex 32` gives 64).
MIN_LENGTH = 32


class SecretKeyError(ValueError):
    """No usable secret key: one line saying what to set."""


def _embedded_key(home: Path) -> str:
    """The key under ``home``, made whole on first use (by whichever process starts first)."""
    path = home / EMBEDDED_FILE
    make_home_file(path, secrets.token_hex(32) + "\n")
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_LENGTH:
        raise SecretKeyError(
            f"{path}: the console's secret key is shorter than {MIN_LENGTH} characters"
            " (delete the file to have a new one made)"
        )
    return key


def secret_key(settings: Settings) -> str:
    """The console's secret key for ``settings`` (see the module's docstring)."""
    if settings.secret_key is not None:
        if len(settings.secret_key) < MIN_LENGTH:
            raise SecretKeyError(
                f"RECALL_SECRET_KEY: must be at least {MIN_LENGTH} characters"
                " (e.g. `openssl rand -hex 32`)"
            )
        return settings.secret_key
    if settings.embedded:
        return _embedded_key(settings.ready_home())
    raise SecretKeyError(
        "no RECALL_SECRET_KEY: the console's session cookies need one secret shared by every"
        " `recall serve` process (e.g. `openssl rand -hex 32`)"
    )


def derived_key(key: str, purpose: str) -> bytes:
    """32 bytes for one ``purpose`` (``session``, ``csrf``), derived from ``key``: one secret for
    the operator to keep, a distinct key for each use."""
    return hmac.new(key.encode("utf-8"), purpose.encode("ascii"), hashlib.sha256).digest()
