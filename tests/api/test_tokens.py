"""The tokens file and the check of a presented token (no server needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.api import tokens as tokens_module
from worker.api.tokens import Token, ensure_embedded_tokens, find_token, load_tokens, token_entry


def test_a_token_is_found_among_many_comparing_every_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = [f"secret-{n}" for n in range(5)]
    configured = tuple(
        Token(f"t{n}", "viewer", hashlib.sha256(secret.encode()).digest())
        for n, secret in enumerate(secrets)
    )
    compared: list[bytes] = []
    real = tokens_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)

    assert find_token(configured, "secret-0") == configured[0]
    assert len(compared) == 5  # no early exit on the first match
    assert find_token(configured, "secret-3") == configured[3]
    assert find_token(configured, "nope") is None
    assert find_token(configured, "") is None


def test_entries_printed_by_tokens_new_load_back(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(token_entry("hopper-1", "dialer", "abc") + token_entry("ops", "editor", "def"))

    loaded = load_tokens(path)

    assert [(t.name, t.role) for t in loaded] == [("hopper-1", "dialer"), ("ops", "editor")]
    assert find_token(loaded, "def") == loaded[1]


def test_the_embedded_file_is_made_once(tmp_path: Path) -> None:
    path, token = ensure_embedded_tokens(tmp_path)
    again, none = ensure_embedded_tokens(tmp_path)

    assert token is not None
    assert (again, none) == (path, None)
    assert find_token(load_tokens(path), token) is not None
