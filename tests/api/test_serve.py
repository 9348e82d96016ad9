"""``recall serve`` starting and refusing to start, and ``recall tokens new``.

The embedded default's first start (a token printed once, working, never printed again); the
refusal without tokens in production, of broken tokens files, of a port in use and of a database
not at the latest migration: each a one-line error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.api.conftest import Server, auth, run_serve, server_env
from tests.helpers import one_line_error
from tests.servers import PostgresServer, free_port, wait_for
from tests.workers import ROOT
from worker.api.tokens import find_token, load_tokens
from worker.cli import main


def refused(env: dict[str, str], *args: str, status: int = 1) -> str:
    """Run ``recall serve`` expecting it to refuse: exit ``status`` (1; 2 for a usage error),
    one ``error:`` line on stderr, nothing on stdout; returns the line."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "serve", "--port", str(free_port()), *args],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_first_start_of_the_embedded_default_prints_a_working_token_once(
    serve: Callable[[dict[str, str]], Server], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = serve({"RECALL_HOME": str(home)})
    found = re.search(r"API token of `admin` \(editor\): (\S+)", first.output())
    assert found, first.output()
    token = found.group(1)
    tokens_file = home / "api-tokens.toml"
    assert f"its hash is kept in {tokens_file}" in first.output()
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert token not in tokens_file.read_text()
    (admin,) = load_tokens(tokens_file)
    assert (admin.name, admin.role) == ("admin", "editor")
    assert find_token((admin,), token) == admin

    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(first.url + "/v1/rules", headers=headers).status_code == 200
    assert httpx.get(first.url + "/v1/phones", headers=headers).status_code == 200
    assert httpx.get(first.url + "/v1/rules").status_code == 401
    first.stop()
    assert first.output().count(token) == 1  # printed once, in no log line after

    again = serve({"RECALL_HOME": str(home)})
    assert token not in again.output()
    assert "API token" not in again.output()
    assert f"tokens {tokens_file}" in again.output()
    assert httpx.get(again.url + "/v1/rules", headers=headers).status_code == 200


def test_the_embedded_default_uses_recall_api_tokens_when_set(
    serve: Callable[[dict[str, str]], Server], tmp_path: Path, tokens_file: Path
) -> None:
    server = serve({"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(tokens_file)})

    assert "API token" not in server.output()
    assert not (tmp_path / "home" / "api-tokens.toml").exists()
    assert server.get("/v1/rules", role="viewer").status_code == 200


def test_production_refuses_to_start_without_tokens(database_url: str, tmp_path: Path) -> None:
    line = refused({"RECALL_DATABASE_URL": database_url, "RECALL_HOME": str(tmp_path)})

    assert line.startswith("error: no API tokens configured: set RECALL_API_TOKENS")
    assert not (tmp_path / "api-tokens.toml").exists()


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", ["no [[token]] entries"]),
        ("[[token]\n", ["not valid TOML"]),
        ("tokens = 1\n", ["tokens: unknown key (allowed: token)"]),
        (
            '[[token]]\nname = "hopper-1"\nrole = "dialer"\n',
            ["token[0] (hopper-1): sha256: required"],
        ),
        (
            '[[token]]\nname = "hopper-1"\nrole = "boss"\nsha256 = "' + "a" * 64 + '"\n',
            ["token[0] (hopper-1): role: must be one of dialer, viewer, editor, got 'boss'"],
        ),
        (
            '[[token]]\nname = "hopper-1"\nrole = "dialer"\nsha256 = "abc"\n',
            ["token[0] (hopper-1): sha256: must be 64 lowercase hex digits"],
        ),
        (
            '[[token]]\nname = "a"\nrole = "dialer"\nsha256 = "' + "a" * 64 + '"\n'
            '[[token]]\nname = "a"\nrole = "viewer"\nsha256 = "' + "b" * 64 + '"\n',
            ["token[1] (a): name: used by an earlier entry"],
        ),
        (
            '[[token]]\nname = "a"\nrole = "dialer"\nsha256 = "' + "a" * 64 + '"\ntoken = "x"\n',
            ["token[0] (a): token: unknown key"],
        ),
        (
            '[[token]]\nname = 3\nrole = "dialer"\nsha256 = "' + "a" * 64 + '"\n',
            ["token[0]: name: must be a string"],
        ),
    ],
)
def test_a_broken_tokens_file_is_refused_naming_the_entry_and_field(
    tmp_path: Path, text: str, parts: list[str]
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)

    line = refused({"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(path)})

    assert line.startswith(f"error: {path}: ")
    for part in parts:
        assert part in line


def test_a_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    line = refused({"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(path)})

    assert line == f"error: {path}: no such tokens file (RECALL_API_TOKENS)"


def test_a_port_in_use_is_refused(tmp_path: Path, tokens_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(tokens_file)}
        line = refused(env, "--port", str(port))

    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def test_a_database_not_migrated_is_refused_as_the_worker_refuses_it(
    postgres: PostgresServer, tmp_path: Path, tokens_file: Path
) -> None:
    url = postgres.create_database()
    try:
        line = refused({"RECALL_DATABASE_URL": url, "RECALL_API_TOKENS": str(tokens_file)})
    finally:
        postgres.drop_database(url)

    assert "is at migration none" in line
    assert line.endswith("run `recall db upgrade`")


def test_ssl_options_go_together(tmp_path: Path, tokens_file: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    env = {"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(tokens_file)}
    line = refused(env, "--ssl-certfile", str(tmp_path / "cert.pem"), status=2)
    assert "--ssl-certfile and --ssl-keyfile go together" in line


def test_tokens_new_prints_a_token_once_and_its_entry() -> None:
    result = CliRunner().invoke(main, ["tokens", "new", "hopper-1", "--role", "dialer"])

    assert result.exit_code == 0, result.output
    first, *rest = result.stdout.splitlines()
    token = first.removeprefix("token: ")
    assert len(token) == 43
    entry = tomllib.loads("\n".join(rest))["token"][0]
    assert entry == {
        "name": "hopper-1",
        "role": "dialer",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    again = CliRunner().invoke(main, ["tokens", "new", "hopper-1", "--role", "dialer"])
    assert again.stdout.splitlines()[0] != first


def test_tokens_new_refuses_a_bad_name_or_role() -> None:
    bad_name = CliRunner().invoke(main, ["tokens", "new", "two words", "--role", "viewer"])
    one_line_error(bad_name, "token name 'two words'")
    bad_role = CliRunner().invoke(main, ["tokens", "new", "x", "--role", "boss"])
    assert bad_role.exit_code == 2
    assert "Traceback" not in bad_role.output


def test_it_serves_https_with_its_own_certificate(tmp_path: Path, tokens_file: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    env = {"RECALL_HOME": str(tmp_path / "home"), "RECALL_API_TOKENS": str(tokens_file)}
    log = tmp_path / "serve.log"
    args = ("--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    server = Server(run_serve(env, log, *args), f"https://127.0.0.1:{port}", log)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        wait_for(
            lambda: httpx.get(server.url + "/healthz", verify=context).status_code == 200,
            60,
            "recall serve over https",
        )
        answer = httpx.get(server.url + "/v1/rules", headers=auth("viewer"), verify=context)
        assert answer.status_code == 200
        assert f"https://127.0.0.1:{port}" in server.output()
    finally:
        server.stop()
