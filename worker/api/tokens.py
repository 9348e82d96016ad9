"""API tokens: the operator's file of token hashes, and checking a presented token against it.

The file (``RECALL_API_TOKENS``) is TOML with one ``[[token]]`` table per token: ``name`` (who it
is: recorded as the author of what it changes), ``role`` (``dialer``, ``viewer`` or ``editor``)
and ``sha256``, the hex SHA-256 of the token. It holds no token itself: ``recall tokens new``
prints a fresh token once, with the entry to add. A broken file is refused as a whole, with the
file, the entry and the field named, as a broken rules file is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import make_home_file

__all__ = [
    "ROLES",
    "Token",
    "TokensError",
    "ensure_embedded_tokens",
    "find_token",
    "load_tokens",
    "new_token",
    "token_entry",
]

#: The roles, each allowed what the one before it is plus more: a ``dialer`` reads phones, claims
#: and decides; a ``viewer`` reads everything; an ``editor`` also changes rules and replays.
ROLES = ("dialer", "viewer", "editor")

#: The name of the tokens file the embedded default keeps under RECALL_HOME.
EMBEDDED_FILE = "api-tokens.toml"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")
_KEYS = ("name", "role", "sha256")


class TokensError(ValueError):
    """A tokens file that cannot be used: one line naming the file, the entry and the field."""


@dataclass(frozen=True, slots=True)
class Token:
    """One configured token: its name, its role and the SHA-256 digest of its secret."""

    name: str
    role: str
    digest: bytes


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).digest()


def find_token(tokens: tuple[Token, ...], presented: str) -> Token | None:
    """The configured token whose hash is ``presented``'s, or None.

    Every entry is compared, in constant time, whatever matched before: how long it takes says
    nothing about which entry (if any) was close.
    """
    digest = digest_of(presented)
    found: Token | None = None
    for token in tokens:
        if hmac.compare_digest(digest, token.digest) and found is None:
            found = token
    return found


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_entry(name: str, role: str, token: str) -> str:
    """The ``[[token]]`` table to add to the tokens file for ``token`` (its hash, not itself)."""
    return f'[[token]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{digest_of(token).hex()}"\n'


def check_name(name: str) -> str:
    """``name`` if it can name a token (letters, digits, ``._@-``; 64 at most), else TokensError."""
    if not _NAME.fullmatch(name):
        raise TokensError(
            f"token name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-',"
            " starting with a letter or digit"
        )
    return name


def _entry_error(path: Path, index: int, name: object, field: str, message: str) -> TokensError:
    named = f" ({name})" if isinstance(name, str) and name else ""
    return TokensError(f"{path}: token[{index}]{named}: {field}: {message}")


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names.update({list: "an array", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _read_entry(path: Path, index: int, raw: object) -> Token:
    if not isinstance(raw, dict):
        raise TokensError(f"{path}: token[{index}]: must be a table, got {_type_name(raw)}")
    name = raw.get("name")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        allowed = ", ".join(_KEYS)
        raise _entry_error(path, index, name, unknown[0], f"unknown key (allowed: {allowed})")
    for key in _KEYS:
        if key not in raw:
            raise _entry_error(path, index, name, key, "required")
        if not isinstance(raw[key], str):
            raise _entry_error(
                path, index, name, key, f"must be a string, got {_type_name(raw[key])}"
            )
    try:
        check_name(raw["name"])
    except TokensError as error:
        raise _entry_error(path, index, None, "name", str(error)) from None
    if raw["role"] not in ROLES:
        raise _entry_error(
            path, index, name, "role", f"must be one of {', '.join(ROLES)}, got {raw['role']!r}"
        )
    if not _HEX.fullmatch(raw["sha256"]):
        raise _entry_error(
            path, index, name, "sha256", "must be 64 lowercase hex digits (the token's SHA-256)"
        )
    return Token(raw["name"], raw["role"], bytes.fromhex(raw["sha256"]))


def load_tokens(path: Path) -> tuple[Token, ...]:
    """The tokens of the file at ``path``; TokensError (one line) when it cannot be used."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokensError(f"{path}: no such tokens file (RECALL_API_TOKENS)") from None
    except OSError as error:
        raise TokensError(f"{path}: cannot read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TokensError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise TokensError(f"{path}: {unknown[0]}: unknown key (allowed: token)")
    entries = data.get("token", [])
    if not isinstance(entries, list) or not entries:
        raise TokensError(f"{path}: token: no [[token]] entries: the service needs at least one")
    tokens = tuple(_read_entry(path, index, raw) for index, raw in enumerate(entries))
    names: set[str] = set()
    hashes: set[bytes] = set()
    for index, token in enumerate(tokens):
        if token.name in names:
            raise _entry_error(path, index, token.name, "name", "used by an earlier entry")
        if token.digest in hashes:
            raise _entry_error(path, index, token.name, "sha256", "the same as an earlier entry's")
        names.add(token.name)
        hashes.add(token.digest)
    return tokens


def ensure_embedded_tokens(home: Path) -> tuple[Path, str | None]:
    """The embedded default's tokens file under ``home``, made on first use.

    Returns the file and, when this call made it, the new ``admin`` token (an ``editor``): the
    only time it is ever shown. The file is created with mode 0600, and never overwritten.
    """
    path = home / EMBEDDED_FILE
    token = new_token()
    header = (
        "# API tokens of `recall serve` (hashes only). Add one with `recall tokens new NAME"
        " --role ROLE`.\n"
    )
    # Made whole, or not at all: another process made it meanwhile, and its token stands.
    made = make_home_file(path, header + token_entry("admin", "editor", token))
    return path, token if made else None
