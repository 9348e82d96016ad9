"""The operators' console through HTTP against a real ``recall serve``, on SQLite and PostgreSQL.

Signing in (a wrong token, a dialer's refused), the session cookie, CSRF on every form, a viewer
reading but not changing, a built-in SIP code's locked fields refused when forged, every change
through the preview (a validation error shown, nothing saved; a stale preview previewed again),
saving with a comment and seeing it first in the rules history with its author, a running worker
deciding with it within seconds, and each page with its key content. The secret key's start-up
refusal and the embedded default's key file.
"""

from __future__ import annotations

import itertools
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.api.conftest import TOKENS, Server
from tests.api.test_serve import refused
from tests.console.conftest import Console, csrf_of, hidden, recent, store_calls
from tests.workers import WorkerProcess
from worker.client import RecallClient
from worker.domain.rules import Rules

EDIT_486 = {"description": "Busy Here", "recall": "yes", "days": "0", "hours": "0",
            "minutes": "7"}  # fmt: skip
#: 404 recalls: P2's suppressed call (c3) would have been recalled, whatever the hour.
EDIT_404 = {"description": "Not Found", "recall": "yes", "days": "1"}


@pytest.fixture
def server(db_engine: Engine, default_rules: Rules, api: Server) -> Server:
    """A service on a database holding yesterday's call results and a dead letter."""
    store_calls(db_engine, default_rules)
    return api


def versions(server: Server) -> list[dict[str, str]]:
    response = server.get("/v1/rules/versions")
    assert response.status_code == 200
    result: list[dict[str, str]] = response.json()
    return result


def test_sign_in_with_a_token_and_out(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    first = browser.get("/")
    assert first.url.path == "/console/login"  # / -> /console -> a page -> sign in first
    assert [step.status_code for step in first.history] == [302, 302, 302]

    wrong = browser.client.post(
        "/console/login",
        data={"token": "not-a-token-0123456789", "_csrf_token": csrf_of(first.text)},
    )
    assert wrong.status_code == 401
    assert "That token is not valid." in wrong.text
    assert "not-a-token-0123456789" not in wrong.text
    assert "recall_session" not in browser.client.cookies

    signed = browser.login("editor")
    assert signed.status_code == 200
    assert signed.url.path == "/console/sip-codes"
    assert "editor (editor)" in signed.text
    cookie = next(
        value
        for step in signed.history
        for value in step.headers.get_list("set-cookie")
        if value.startswith("recall_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/console" in cookie
    assert "Max-Age=28800" in cookie  # 8 hours
    assert TOKENS["editor"] not in cookie
    assert TOKENS["editor"] not in server.output()

    out = browser.submit(signed.text, "/console/logout", {})
    assert out.url.path == "/console/login"
    assert browser.get("/console/rules").url.path == "/console/login"


def test_a_dialer_is_refused(server: Server, console_client: Callable[[str], Console]) -> None:
    browser = console_client(server.url)
    response = browser.login("dialer")
    assert response.status_code == 403
    assert "has the role dialer: it is for the API only" in response.text
    assert browser.get("/console/sip-codes").url.path == "/console/login"


def test_a_viewer_reads_every_page_but_changes_nothing(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    page = browser.login("viewer")
    assert page.status_code == 200
    pages = {
        "/console/sip-codes?code=486": ["<h1>SIP Codes</h1>", "Busy Here", "SIP code 486"],
        "/console/outcomes?code=SYSANSMACH": ["Outcome Codes", "Outcome SYSANSMACH"],
        "/console/plans?plan=default": ["System Recalls: plan default", "Can Recall", "eu_sales"],
        "/console/phones?phone_id=P1": ["phone-decisions", "c1", "c2", "sip:486"],
        "/console/dead-letters": ["unknown_plan", "n1"],
        "/console/rules": ["Rules history", "rules-history"],
    }
    for path, texts in pages.items():
        response = browser.get(path)
        assert response.status_code == 200, path
        for text in texts:
            assert text in response.text, (path, text)
        assert "Rules in force: version" in response.text
        assert "Preview the change" not in response.text  # no edit forms for a viewer
        assert "/console/sip-codes/new" not in response.text
    searched = browser.get("/console/phones", params={"phone_id": "<script>x</script>"})
    assert "No phone &lt;script&gt;x&lt;/script&gt; in the database." in searched.text
    assert "<script>x" not in searched.text  # every value is escaped
    edit = browser.submit(page.text, "/console/sip-codes/486", EDIT_486)
    assert edit.status_code == 403
    save = browser.submit(page.text, "/console/save", {"text": "", "comment": "x"})
    assert save.status_code == 403
    replay = browser.submit(page.text, "/console/dead-letters/replay", {})
    assert replay.status_code == 403


def test_a_form_without_its_csrf_token_is_refused(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    browser.login("editor")
    before = versions(server)
    for path in ("/console/sip-codes/486", "/console/save", "/console/logout"):
        response = browser.client.post(path, data=EDIT_486)
        assert response.status_code == 403, path
    wrong = browser.client.post("/console/sip-codes/486", data={**EDIT_486, "_csrf_token": "0"})
    assert wrong.status_code == 403
    assert versions(server) == before
    # The API's bearer-token paths take no CSRF token.
    assert server.post("/v1/dead-letters/replay", json={}).status_code == 200


def test_a_built_in_codes_locked_fields_are_refused_when_forged(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    page = browser.login("editor")
    page = browser.get("/console/sip-codes?code=486")
    assert 'id="code" name="code" value="486" disabled' in page.text
    assert 'id="active" name="active" disabled' in page.text
    before = versions(server)
    for forged in ({"code": "499"}, {"active": "no"}):
        response = browser.submit(page.text, "/console/sip-codes/486", {**EDIT_486, **forged})
        assert response.status_code == 422, forged
        assert "SIP code 486 is built-in (a shipped code): its code and active flag are locked" in (
            response.text
        )
    assert versions(server) == before


def test_a_change_is_previewed_then_saved_with_its_author(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    browser.login("editor")
    page = browser.get("/console/sip-codes?code=404")
    preview = browser.submit(page.text, "/console/sip-codes/404", EDIT_404)
    assert preview.status_code == 200
    assert "<h1>Preview the change</h1>" in preview.text
    assert "recall_after" in preview.text  # the diff: 404 recalls after a day
    assert "{ days = 1 }" in preview.text
    assert "Decisions that change: <strong>1</strong>" in preview.text  # c3, P2's 404
    assert "<td>c3</td>" in preview.text
    assert versions(server) == []  # nothing saved by a preview

    no_comment = browser.submit(
        preview.text,
        "/console/save",
        {"text": hidden(preview.text, "text"), "based_on": hidden(preview.text, "based_on")},
    )
    assert "Write a comment" in no_comment.text
    saved = browser.submit(
        preview.text,
        "/console/save",
        {
            "text": hidden(preview.text, "text"),
            "based_on": hidden(preview.text, "based_on"),
            "comment": "404 recalled tomorrow",
            "days": "7",
        },
    )
    assert saved.url.path == "/console/rules"
    newest = versions(server)[0]
    assert (newest["author"], newest["comment"], newest["source"]) == (
        "editor",
        "404 recalled tomorrow",
        "console",
    )
    assert saved.text.index(newest["version"]) < saved.text.index("404 recalled tomorrow")
    assert f'id="version-in-force">{newest["version"]}' in saved.text
    rules = server.get("/v1/rules").json()
    assert rules["version"] == newest["version"]

    # The same preview saved again: the version it was based on is no longer in force.
    stale = browser.submit(
        preview.text,
        "/console/save",
        {
            "text": hidden(preview.text, "text"),
            "based_on": hidden(preview.text, "based_on"),
            "comment": "again",
        },
    )
    assert "The rules in force changed meanwhile" in stale.text
    assert [row["source"] for row in versions(server)] == ["console"]


def test_a_rules_error_is_shown_and_nothing_saved(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    browser.login("editor")
    page = browser.get("/console/plans?plan=default")
    response = browser.submit(
        page.text,
        "/console/plans/default",
        {"can_recall": "yes", "timezone": "Mars/Olympus_Mons", "calling_hours_on": "no"},
    )
    assert response.status_code == 422
    assert "rules.toml: plans[" in response.text
    assert "timezone" in response.text
    not_a_number = browser.submit(page.text, "/console/sip-codes/486", {**EDIT_486, "days": "x"})
    assert not_a_number.status_code == 422
    assert "recall time days: must be a whole number" in not_a_number.text
    assert versions(server) == []


def test_a_new_code_asks_first(server: Server, console_client: Callable[[str], Console]) -> None:
    browser = console_client(server.url)
    page = browser.login("editor")
    fields = {"code": "499", "description": "Carrier special", "recall": "yes", "hours": "2"}
    confirm = browser.submit(page.text, "/console/sip-codes/new", fields)
    assert "Create a new SIP code?" in confirm.text
    assert "new-code-warning" in confirm.text
    assert "instead of by its class fallback" in confirm.text
    preview = browser.submit(confirm.text, "/console/sip-codes/new", {**fields, "confirmed": "yes"})
    assert "<h1>Preview the change</h1>" in preview.text
    assert "added" in preview.text
    assert versions(server) == []
    exists = browser.submit(page.text, "/console/sip-codes/new", {**fields, "code": "486"})
    assert exists.status_code == 422
    assert "code 486: exists already" in exists.text


def test_inactive_codes_are_hidden_until_asked_for(
    server: Server, console_client: Callable[[str], Console]
) -> None:
    browser = console_client(server.url)
    browser.login("editor")
    page = browser.get("/console/sip-codes")
    assert 'id="sip-486"' in page.text
    # Make a custom code, inactive, through the console itself.
    fields = {"code": "498", "description": "Custom", "recall": "no", "confirmed": "yes"}
    preview = browser.submit(page.text, "/console/sip-codes/new", fields)
    browser.submit(
        preview.text,
        "/console/save",
        {"text": hidden(preview.text, "text"), "based_on": hidden(preview.text, "based_on"),
         "comment": "custom code"},
    )  # fmt: skip
    page = browser.get("/console/sip-codes?code=498")
    preview = browser.submit(
        page.text, "/console/sip-codes/498", {"active": "no", "recall": "no", "description": "x"}
    )
    browser.submit(
        preview.text,
        "/console/save",
        {"text": hidden(preview.text, "text"), "based_on": hidden(preview.text, "based_on"),
         "comment": "retire 498"},
    )  # fmt: skip
    assert [row["comment"] for row in versions(server)][:2] == ["retire 498", "custom code"]
    listed = browser.get("/console/sip-codes")
    assert 'id="sip-498"' not in listed.text
    assert "Show inactive codes (1 hidden)" in listed.text
    shown = browser.get("/console/sip-codes?inactive=true")
    assert 'id="sip-498"' in shown.text


def test_a_running_worker_takes_a_console_edit_within_seconds(
    server: Server,
    database_url: str,
    broker_url: str,
    tmp_path: Path,
    worker_process: Callable[..., WorkerProcess],
    console_client: Callable[[str], Console],
) -> None:
    env = {
        "RECALL_BROKER_URL": broker_url, "RECALL_DATABASE_URL": database_url,
        "RECALL_HOME": str(tmp_path / "worker-home"), "RECALL_METRICS_PORT": "0",
    }  # fmt: skip
    worker = worker_process(env, "--concurrency", "1", name="console")
    client = RecallClient(broker_url)
    # A first call result: the worker records the rules it decides with (its file's).
    client.publish(recent(event_id="w-first", phone_id="PW-FIRST", lead_id="LW-FIRST"))
    wait_for_decision(server, "w-first", worker)
    browser = console_client(server.url)
    browser.login("editor")
    page = browser.get("/console/sip-codes?code=486")
    preview = browser.submit(page.text, "/console/sip-codes/486", EDIT_486)
    saved = browser.submit(
        preview.text,
        "/console/save",
        {"text": hidden(preview.text, "text"), "based_on": hidden(preview.text, "based_on"),
         "comment": "busy lines sooner"},
    )  # fmt: skip
    edited_at = time.monotonic()
    version = versions(server)[0]["version"]
    assert f'id="version-in-force">{version}' in saved.text
    try:
        for number in itertools.count():
            event_id = f"w{number}"
            client.publish(recent(event_id=event_id, phone_id=f"PW{number}", lead_id=f"LW{number}"))
            decision = wait_for_decision(server, event_id, worker)
            if decision["rules_version"] == version:
                break
            assert time.monotonic() - edited_at < 15, worker.text()[-3000:]
    finally:
        client.app.close()
    assert "SIP 486 Busy Here recalls after 7m" in decision["explanation"]


def wait_for_decision(server: Server, event_id: str, worker: WorkerProcess) -> dict[str, Any]:
    """The decision stored for ``event_id``, as the console's phone history shows it (30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        phone = server.get(f"/v1/phones/P{event_id.upper()}")
        if phone.status_code == 200 and phone.json()["last_decision"]["event_id"] == event_id:
            last: dict[str, Any] = phone.json()["last_decision"]
            return last
        time.sleep(0.1)
    raise AssertionError(worker.text()[-3000:])


def test_production_without_a_secret_key_is_refused(
    database_url: str, tokens_file: Path, tmp_path: Path
) -> None:
    env = {
        "RECALL_DATABASE_URL": database_url,
        "RECALL_API_TOKENS": str(tokens_file),
        "RECALL_HOME": str(tmp_path / "home"),
    }
    assert "no RECALL_SECRET_KEY" in refused({**env, "RECALL_SECRET_KEY": ""})
    assert "RECALL_SECRET_KEY: must be at least 32 characters" in refused(
        {**env, "RECALL_SECRET_KEY": "short"}
    )


def test_the_embedded_default_makes_its_secret_key(
    serve: Callable[[dict[str, str]], Server], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = serve({"RECALL_HOME": str(home)})
    key = home / "secret-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().strip()) == 64
    assert key.read_text().strip() not in server.output()
    assert httpx.get(server.url + "/console/login").status_code == 200
