"""The console's secret key (worker/console/secret.py) and its cookies over https.

RECALL_SECRET_KEY when set (32 characters at least); the embedded default's key file, made once
with mode 0600 and kept; elsewhere, unset, a one-line refusal. Cookies are Secure over https only.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from worker.console.secret import SecretKeyError, derived_key, secret_key
from worker.console.session import secure_cookies


def settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"RECALL_HOME": str(home), **env})


def test_the_environments_key(tmp_path: Path) -> None:
    key = "k" * 32
    assert secret_key(settings(tmp_path, RECALL_SECRET_KEY=key)) == key
    assert not (tmp_path / "secret-key").exists()
    assert key not in repr(settings(tmp_path, RECALL_SECRET_KEY=key))
    with pytest.raises(SecretKeyError, match=r"^RECALL_SECRET_KEY: must be at least 32"):
        secret_key(settings(tmp_path, RECALL_SECRET_KEY="short"))


def test_the_embedded_default_makes_one_and_keeps_it(tmp_path: Path) -> None:
    first = secret_key(settings(tmp_path))
    path = tmp_path / "secret-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64
    assert secret_key(settings(tmp_path)) == first


def _key_of(home: str) -> str:
    return secret_key(settings(Path(home)))


def test_processes_starting_together_share_one_whole_key(tmp_path: Path) -> None:
    # Each `recall serve` process makes the key if it finds none: only one makes it; the others,
    # however they interleave, read that whole key (never a half-written or empty file).
    with multiprocessing.get_context("fork").Pool(8) as pool:
        keys = pool.map(_key_of, [str(tmp_path)] * 64)
    assert len(set(keys)) == 1
    assert len(keys[0]) == 64
    assert [path.name for path in tmp_path.iterdir()] == ["secret-key"]


def test_production_without_a_key_is_refused(tmp_path: Path) -> None:
    production = settings(tmp_path, RECALL_DATABASE_URL="postgresql+psycopg://db/recall")
    with pytest.raises(SecretKeyError, match=r"^no RECALL_SECRET_KEY: "):
        secret_key(production)


def test_each_use_has_its_own_key() -> None:
    assert derived_key("k" * 32, "session") != derived_key("k" * 32, "csrf")
    assert len(derived_key("k" * 32, "session")) == 32


@pytest.mark.parametrize(("scheme", "secure"), [("https", True), ("http", False)])
def test_cookies_are_secure_over_https(scheme: str, secure: bool) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"set-cookie", b"a=1; Path=/"), (b"content-type", b"x")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {}

    asyncio.run(secure_cookies(app)({"type": "http", "scheme": scheme}, receive, send))
    headers = dict(sent[0]["headers"])
    assert headers[b"set-cookie"] == (b"a=1; Path=/; Secure" if secure else b"a=1; Path=/")
    assert headers[b"content-type"] == b"x"
