"""Every endpoint of the HTTP API through a real ``recall serve``, on SQLite and PostgreSQL.

State is built through the real paths (``ingest``, ``fire_recalls``, ``record_rules_version``),
and each answer is compared with what the matching ``recall ... --json`` command prints: the same
bytes for phones and decisions (the contract shapes, DESIGN.md section 7).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.api.conftest import TOKENS, Server
from tests.helpers import DECISION_KEYS, EVENT_DEFAULTS, SKEW_S, at, reset_process_state
from tests.workers import ROOT
from worker.cli import main
from worker.domain.engine import Decision
from worker.domain.rules import Rules, load_rules
from worker.store.ingest import ingest
from worker.store.queries import dead_letters, phone
from worker.store.recalls import fire_recalls
from worker.store.rules_versions import record_rules_version, source_of

NOW = at("2026-01-14T10:00:05+00:00")
FIRED_AT = at("2026-01-14T10:15:00+00:00")

#: Every endpoint this service has, with an example request and the roles it lets in.
ENDPOINTS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("GET", "/openapi.json", {}, ("dialer", "viewer", "editor")),
    ("GET", "/v1/status", {}, ("viewer", "editor")),
    ("GET", "/v1/phones/P1", {}, ("dialer", "viewer", "editor")),
    ("GET", "/v1/phones", {}, ("dialer", "viewer", "editor")),
    ("POST", "/v1/decide", {"json": EVENT_DEFAULTS}, ("dialer", "viewer", "editor")),
    ("POST", "/v1/plans/default/claims", {"json": {"limit": 1}}, ("dialer",)),
    ("DELETE", "/v1/claims/no-such-lease", {}, ("dialer",)),
    ("GET", "/v1/rules", {}, ("viewer", "editor")),
    ("GET", "/v1/rules/versions", {}, ("viewer", "editor")),
    ("GET", "/v1/rules/versions/0", {}, ("viewer", "editor")),
    ("GET", "/v1/rules/diff?from=0&to=0", {}, ("viewer", "editor")),
    ("PUT", "/v1/rules", {"json": {"rules": "", "comment": "none"}}, ("editor",)),
    ("POST", "/v1/rules/preview", {"json": {"rules": "", "days": 1}}, ("viewer", "editor")),
    ("GET", "/v1/dead-letters", {}, ("viewer", "editor")),
    ("POST", "/v1/dead-letters/replay", {"json": {"ids": [999]}}, ("editor",)),
]


def event(**changes: Any) -> dict[str, Any]:
    return {**EVENT_DEFAULTS, **changes}


@pytest.fixture
def filled(db_engine: Engine, default_rules: Rules) -> dict[str, Decision]:
    """P1 waits for a recall, P2 is suppressed, P3 is eligible, P4 of another plan waits; one
    dead letter for an unknown plan, one that is not JSON. Returns the decisions by phone."""
    payloads: list[object] = [
        event(event_id="e1", phone_id="P1"),
        event(event_id="e2", phone_id="P2", lead_id="L2", sip_code=404),
        event(event_id="e3", phone_id="P3", lead_id="L3"),
        event(event_id="e4", phone_id="P4", lead_id="L4", plan_id="eu_sales"),
        event(event_id="n1", phone_id="PN", plan_id="newplan"),
        "{not json",
    ]
    with Session(db_engine) as session, session.begin():
        report = ingest(session, payloads, default_rules, NOW, task="test", skew_s=SKEW_S)
    with Session(db_engine) as session, session.begin():
        fire_recalls(session, ["e3"], FIRED_AT, early_tolerance=timedelta(0))
    return {decision.phone_id: decision for decision in report.decisions}


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """Run ``recall ... --json`` on the same database: what the API answers is compared to it."""
    env = {"RECALL_DATABASE_URL": database_url, "RECALL_HOME": str(tmp_path / "cli-home")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RECALL_RULES", raising=False)
    reset_process_state()

    def run(*args: str, stdin: bytes | None = None) -> Any:
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        return result

    yield run
    reset_process_state()


def _no_token_in(server: Server) -> None:
    output = server.output()
    for token in TOKENS.values():
        assert token not in output


def test_healthz_needs_no_token(api: Server) -> None:
    response = api.get("/healthz", role=None)

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(("method", "path", "body", "roles"), ENDPOINTS)
def test_every_endpoint_needs_a_token_of_its_roles(
    api: Server, method: str, path: str, body: dict[str, Any], roles: tuple[str, ...]
) -> None:
    import httpx

    def call(headers: dict[str, str]) -> httpx.Response:
        return httpx.request(method, api.url + path, headers=headers, timeout=30, **body)

    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {TOKENS['editor']}"},
        {"Authorization": "Bearer"},
    ):
        refused = call(headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["status_code"] == 401
        assert "\n" not in refused.json()["detail"]
    for role, token in TOKENS.items():
        answer = call({"Authorization": f"Bearer {token}"})
        if role in roles:
            assert answer.status_code not in (401, 403), (role, answer.text)
        else:
            assert answer.status_code == 403, (role, answer.text)
            assert answer.json() == {
                "status_code": 403,
                "detail": f"token {role!r} has the role {role}; this needs {' or '.join(roles)}",
            }
    _no_token_in(api)


def test_a_phone_is_the_bytes_recall_phones_show_prints(
    api: Server, filled: dict[str, Decision], db_engine: Engine, cli: Any
) -> None:
    for phone_id in ("P1", "P2", "P3"):
        response = api.get(f"/v1/phones/{phone_id}", role="dialer")
        printed = cli("phones", "show", phone_id, "--json")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.content + b"\n" == printed.stdout_bytes
        with Session(db_engine) as session:
            assert response.content == orjson.dumps(phone(session, phone_id))
    assert response.json()["eligible"] is True
    assert response.json()["last_decision"] == filled["P3"].to_json()

    missing = api.get("/v1/phones/nope", role="dialer")
    assert (missing.status_code, missing.json()) == (
        404,
        {"status_code": 404, "detail": "no phone 'nope'"},
    )
    _no_token_in(api)


def test_phones_page_by_page_with_filters(api: Server, filled: dict[str, Decision]) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/phones", role="dialer", params=query).json()
        assert len(page["phones"]) <= 2
        seen += [row["phone_id"] for row in page["phones"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["P1", "P2", "P3", "P4"]
    assert pages == 2

    everything = api.get("/v1/phones", role="dialer").json()
    assert everything["next_cursor"] is None
    assert [row["phone_id"] for row in everything["phones"]] == seen

    def ids(**params: Any) -> list[str]:
        return [row["phone_id"] for row in api.get("/v1/phones", params=params).json()["phones"]]

    assert ids(eligible="true") == ["P3"]
    assert ids(eligible="false") == ["P1", "P2", "P4"]
    assert ids(plan_id="eu_sales") == ["P4"]
    assert ids(plan_id="default", eligible="false", limit=1) == ["P1"]
    assert ids(plan_id="nothing") == []


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"cursor": "%%%"}, 422, "cursor: not a cursor this service gave"),
        ({"cursor": "_-8"}, 422, "cursor: not a cursor this service gave"),
        ({"limit": "0"}, 400, "limit"),
        ({"limit": "1001"}, 400, "limit"),
        ({"limit": "ten"}, 400, "limit"),
        ({"eligible": "maybe"}, 400, "eligible"),
    ],
)
def test_a_bad_listing_query_is_a_one_line_error(
    api: Server, params: dict[str, str], status: int, detail: str
) -> None:
    response = api.get("/v1/phones", role="dialer", params=params)

    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status
    assert detail in body["detail"]
    assert "\n" not in body["detail"]
    assert "127.0.0.1" not in body["detail"]  # the URL is never echoed


def test_decide_prints_what_recall_decide_prints(api: Server, cli: Any) -> None:
    payload = orjson.dumps(event(outcome_code="SYSANSMACH", sip_code=200))
    for query, args in (
        ({}, []),
        ({"now": "2026-01-14T10:01:00+00:00"}, ["--now", "2026-01-14T10:01:00+00:00"]),
    ):
        response = api.post("/v1/decide", role="dialer", content=payload, params=query)
        printed = cli("decide", "--json", *args, stdin=payload)

        assert response.status_code == 200, response.text
        assert response.content + b"\n" == printed.stdout_bytes


@pytest.mark.parametrize(
    "payload",
    [
        b"[1]",
        b"{not json",
        b"",
        orjson.dumps({**EVENT_DEFAULTS, "sip_code": 99}),
        orjson.dumps({**EVENT_DEFAULTS, "occurred_at": "2026-01-14T10:00:00"}),
        orjson.dumps({key: v for key, v in EVENT_DEFAULTS.items() if key != "phone_id"}),
        orjson.dumps({**EVENT_DEFAULTS, "plan_id": "nowhere"}),
    ],
)
def test_decide_refuses_what_recall_decide_refuses_with_its_line(
    api: Server, cli: Any, payload: bytes
) -> None:
    response = api.post("/v1/decide", role="dialer", content=payload)
    printed = cli("decide", "--json", stdin=payload)

    assert printed.exit_code == 1
    assert response.status_code == 422, response.text
    assert response.json() == {
        "status_code": 422,
        "detail": printed.stderr.strip().removeprefix("error: "),
    }


@pytest.mark.parametrize("now", ["yesterday", "2026-01-14T10:00:00", "2026-01-14T09:00:00+00:00"])
def test_decide_refuses_a_bad_now_or_an_event_ahead_of_it(api: Server, now: str) -> None:
    response = api.post("/v1/decide", role="viewer", json=event(), params={"now": now})

    assert response.status_code == 422
    assert response.json()["detail"].startswith(("now: ", "invalid_event: occurred_at"))


def test_rules_in_force_before_and_after_versions_are_recorded(
    api: Server, db_engine: Engine, cli: Any, default_rules: Rules, write_rules: Any
) -> None:
    before = api.get("/v1/rules").json()
    assert before == {
        "version": default_rules.version,
        "in_force_since": None,
        "source": "shipped defaults",
        "author": None,
        "comment": None,
        "rules": default_rules.export_text(),
        "file": None,
        "file_version": default_rules.version,
        "file_differs": False,
        "file_error": None,
        "note": None,
    }
    assert api.get("/v1/rules/versions").json() == []

    changed = load_rules(write_rules("[[sip_codes]]\ncode = 486\nrecall_after = { minutes = 5 }\n"))
    with Session(db_engine) as session, session.begin():
        record_rules_version(session, default_rules, source_of(default_rules), NOW)
    with Session(db_engine) as session, session.begin():
        record_rules_version(
            session, changed, source_of(changed), FIRED_AT, author="ops", comment="busy sooner"
        )

    now_in_force = api.get("/v1/rules").json()
    assert now_in_force["version"] == changed.version
    assert (now_in_force["author"], now_in_force["comment"]) == ("ops", "busy sooner")
    assert now_in_force["in_force_since"] == at(FIRED_AT.isoformat()).isoformat()
    assert now_in_force["rules"] == changed.export_text()

    versions = api.get("/v1/rules/versions")
    assert versions.content + b"\n" == cli("rules", "history", "--json").stdout_bytes
    assert [row["version"] for row in versions.json()] == [changed.version, default_rules.version]

    one = api.get(f"/v1/rules/versions/{default_rules.version[:5]}").json()
    assert (one["version"], one["rules"]) == (default_rules.version, default_rules.export_text())

    old, new = default_rules.version, changed.version[:6]
    diff = api.get("/v1/rules/diff", params={"from": old, "to": new})
    assert diff.content + b"\n" == cli("rules", "diff", old, new, "--json").stdout_bytes
    assert diff.json()["changes"][0]["fields"] == [
        {"field": "recall_after", "old": {"minutes": 15}, "new": {"minutes": 5}}
    ]

    for path in ("/v1/rules/versions/ffffff", "/v1/rules/versions/xyz"):
        missing = api.get(path)
        assert missing.status_code == 404
        assert missing.json()["detail"].startswith("no rules version")
    missing = api.get("/v1/rules/diff", params={"from": old, "to": "abcabc"})
    assert missing.status_code == 404
    assert api.get("/v1/rules/diff", params={"from": old}).status_code == 400


def test_dead_letters_list_and_replay(
    api: Server, filled: dict[str, Decision], db_engine: Engine, cli: Any
) -> None:
    listed = api.get("/v1/dead-letters")
    with Session(db_engine) as session:
        assert listed.json() == dead_letters(session, include_replayed=False, limit=1000)
    assert listed.content + b"\n" == cli("dead-letters", "list", "--json").stdout_bytes
    assert [row["reason"] for row in listed.json()] == ["unknown_plan", "invalid_event"]
    assert len(api.get("/v1/dead-letters", params={"limit": 1}).json()) == 1
    first = listed.json()[0]["id"]

    unknown = api.post("/v1/dead-letters/replay", json={"ids": [first, 999]})
    assert unknown.status_code == 422
    assert unknown.json()["detail"].startswith("no dead letter with id 999")

    replayed = api.post("/v1/dead-letters/replay", json={"ids": [first]})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"taken": 0, "still_refused": 1, "actions": {}}
    everything = api.post("/v1/dead-letters/replay")
    assert everything.json() == {"taken": 0, "still_refused": 2, "actions": {}}
    assert api.post("/v1/dead-letters/replay", json={"ids": ["x"]}).status_code == 400


def test_status_is_recall_status_json(api: Server, filled: dict[str, Decision]) -> None:
    status = api.get("/v1/status")

    assert status.status_code == 200
    data = status.json()
    assert data["healthy"] is False
    assert "no worker answered: start `recall worker`" in data["problems"]
    assert data["recalls"]["pending"] == 2
    assert data["dead_letters_new"] == 2
    assert set(data) == {
        "healthy", "problems", "broker", "database", "rules", "workers", "queues", "recalls",
        "replays_running", "dead_letters_new", "rules_in_force",
    }  # fmt: skip
    assert data["rules_in_force"]["file_differs"] is False


def test_unknown_paths_and_methods_are_json_errors(api: Server) -> None:
    assert api.get("/v2/nothing").json() == {"status_code": 404, "detail": "Not Found"}
    wrong = api.post("/v1/rules/versions")
    assert wrong.status_code == 405
    assert set(wrong.json()) == {"status_code", "detail"}


def test_the_openapi_document_describes_every_endpoint(api: Server) -> None:
    document = api.get("/openapi.json", role="dialer")

    assert document.status_code == 200
    paths = document.json()["paths"]
    assert set(paths) == {
        "/healthz", "/v1/status", "/v1/phones", "/v1/phones/{phone_id}", "/v1/decide",
        "/v1/rules", "/v1/rules/versions", "/v1/rules/versions/{version}", "/v1/rules/diff",
        "/v1/rules/preview", "/v1/dead-letters", "/v1/dead-letters/replay",
        "/v1/plans/{plan_id}/claims", "/v1/claims/{lease_id}",
    }  # fmt: skip
    assert "requestBody" in paths["/v1/decide"]["post"]
    schemas = document.json()["components"]["schemas"]
    # The event a dialer sends is the contract's one schema, the worker's and docs/'s.
    body = paths["/v1/decide"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    published = orjson.loads((ROOT / "docs" / "event.schema.json").read_bytes())
    published.pop("$schema")
    for field in published["properties"].values():  # the document leaves out null defaults
        if "default" in field and field["default"] is None:
            del field["default"]
    assert body == published
    assert list(schemas["Phone"]["properties"]) == [
        "phone_id", "lead_id", "plan_id", "eligible", "eligible_at", "pending_recall",
        "last_result_at", "last_decision",
    ]  # fmt: skip
    some = Decision("e1", "P1", "suppress", None, None, None, "no_failure")
    assert list(schemas["Decision"]["properties"]) == list(some.to_json())
    assert set(schemas["Decision"]["properties"]) == DECISION_KEYS


BUSY_SOONER = "[[sip_codes]]\ncode = 486\nrecall_after = { minutes = 5 }\n"


def test_an_edit_is_a_new_version_in_force_with_its_author(
    api: Server, filled: dict[str, Decision], default_rules: Rules, write_rules: Any, cli: Any
) -> None:
    proposed = load_rules(write_rules(BUSY_SOONER))

    answer = api.put("/v1/rules", json={"rules": BUSY_SOONER, "comment": "busy sooner"})

    assert answer.status_code == 200, answer.text
    saved = answer.json()
    assert (saved["version"], saved["source"]) == (proposed.version, "api")
    assert (saved["author"], saved["comment"]) == ("editor", "busy sooner")
    assert saved["rules"] == proposed.export_text()
    in_force = api.get("/v1/rules").json()
    assert (in_force["version"], in_force["author"]) == (proposed.version, "editor")
    # The service's own rules are the shipped defaults: another version now, and it says so.
    assert (in_force["file_version"], in_force["file_differs"]) == (default_rules.version, True)
    assert "an edit through the API or the console is newer" in in_force["note"]
    history = cli("rules", "history", "--json")
    assert next(row["author"] for row in orjson.loads(history.stdout_bytes)) == "editor"
    # Decisions through the API are made with the version in force.
    decided = api.post("/v1/decide", role="dialer", json=event(event_id="d1")).json()
    assert (decided["rules_version"], decided["due_at"]) == (
        proposed.version,
        "2026-01-14T10:05:00+00:00",
    )
    # The same rules again: no new version.
    again = api.put("/v1/rules", json={"rules": BUSY_SOONER, "comment": "once more"})
    assert again.json()["comment"] == "busy sooner"
    assert len(api.get("/v1/rules/versions").json()) == 1


def test_a_broken_edit_is_refused_with_the_line_rules_check_prints(
    api: Server, write_rules: Any, cli: Any
) -> None:
    broken = "[[sip_codes]]\ncode = 486\nrecall_after = { weeks = 1 }\n"
    checked = cli("rules", "check", "--rules", str(write_rules(broken)))
    assert checked.exit_code != 0

    answer = api.put("/v1/rules", json={"rules": broken, "comment": "weekly"})

    assert answer.status_code == 422
    line = checked.output.strip().removeprefix("error: ")
    assert answer.json()["detail"] == line.replace(str(write_rules(broken)), "rules.toml")
    blank = api.put("/v1/rules", json={"rules": BUSY_SOONER, "comment": "  "})
    assert (blank.status_code, blank.json()["detail"]) == (422, "comment: must not be empty")
    assert api.put("/v1/rules", json={"rules": BUSY_SOONER}).status_code == 400
    assert api.get("/v1/rules/versions").json() == []


def test_the_preview_is_the_what_if_rules_preview_prints(
    api: Server,
    filled: dict[str, Decision],
    db_engine: Engine,
    default_rules: Rules,
    write_rules: Any,
    cli: Any,
) -> None:
    path = write_rules(BUSY_SOONER)
    with Session(db_engine) as session, session.begin():  # as a worker does when it starts
        record_rules_version(session, default_rules, source_of(default_rules), NOW)

    answer = api.post("/v1/rules/preview", role="viewer", json={"rules": BUSY_SOONER, "days": 366})

    assert answer.status_code == 200, answer.text
    shown = answer.json()
    ran = cli("rules", "preview", str(path), "--days", "366", "--json")
    assert ran.exit_code == 0, ran.output
    printed = orjson.loads(ran.stdout)
    assert shown["mode"] == "preview"
    # Both over the same stored events (the API's clock and the command's differ by a moment).
    assert shown["compare"].pop("rules").endswith(" + rules.toml")
    assert printed["compare"].pop("rules").endswith(f" + {path}")
    for result in (shown, printed):
        del result["since"], result["until"]
    assert shown == printed
    assert shown["summary"]["events"] == 4
    assert shown["compare"]["differing_decisions"] >= 1
    refused = api.post("/v1/rules/preview", json={"rules": "[[plans]]\n", "days": 7})
    assert refused.status_code == 422
    too_far = api.post("/v1/rules/preview", json={"rules": BUSY_SOONER, "days": 400})
    assert too_far.status_code == 400


def test_a_claim_leases_the_eligible_phones_until_given_back_or_called(
    api: Server, filled: dict[str, Decision], db_engine: Engine, default_rules: Rules, cli: Any
) -> None:
    claims = api.post("/v1/plans/default/claims", role="dialer", json={"limit": 5, "lease_s": 60})

    assert claims.status_code == 200, claims.text
    (claimed,) = claims.json()  # P3 alone is eligible; P1 waits for its recall
    with Session(db_engine) as session:
        shown = phone(session, "P3")
    assert {key: claimed[key] for key in shown} == shown  # the phone's own shape, then the lease
    assert list(claimed)[len(shown) :] == ["lease_id", "leased_until", "reason", "agent"]
    assert (claimed["reason"], claimed["agent"]) == ("sip_recall", None)
    leased_until = at(claimed["leased_until"])
    assert timedelta(seconds=55) < leased_until - datetime.now(UTC) <= timedelta(seconds=60)
    # Leased: no other claim gets it, whoever asks.
    assert api.post("/v1/plans/default/claims", role="dialer", json={}).json() == []
    assert orjson.loads(cli("phones", "claim", "--plan", "default", "--json").stdout) == []

    given_back = api.delete(f"/v1/claims/{claimed['lease_id']}")
    assert given_back.status_code == 204
    assert api.delete(f"/v1/claims/{claimed['lease_id']}").status_code == 404
    again = api.post("/v1/plans/default/claims", role="dialer", json={"limit": 1}).json()
    assert [each["phone_id"] for each in again] == ["P3"]
    assert again[0]["lease_id"] != claimed["lease_id"]

    # A call result for the claimed phone ends its lease (and the phone waits for a new recall).
    with Session(db_engine) as session, session.begin():
        ingest(session, [event(event_id="e3b", phone_id="P3", lead_id="L3",
                               occurred_at="2026-01-14T10:20:00+00:00")],
               default_rules, FIRED_AT, task="test", skew_s=SKEW_S)  # fmt: skip
    assert api.delete(f"/v1/claims/{again[0]['lease_id']}").status_code == 404
    assert api.post("/v1/plans/default/claims", role="dialer", json={}).json() == []

    unknown = api.post("/v1/plans/nowhere/claims", role="dialer", json={})
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        "unknown plan 'nowhere': not in the rules in force",
    )
    for body in ({"limit": 0}, {"limit": 1001}, {"lease_s": 0}, {"lease_s": 86_401}, {"x": 1}):
        assert api.post("/v1/plans/default/claims", role="dialer", json=body).status_code == 400


def test_an_expired_lease_makes_the_phone_claimable_again(
    api: Server, filled: dict[str, Decision]
) -> None:
    first = api.post("/v1/plans/default/claims", role="dialer", json={"lease_s": 1}).json()
    assert [each["phone_id"] for each in first] == ["P3"]
    assert api.post("/v1/plans/default/claims", role="dialer", json={}).json() == []

    time.sleep(1.2)

    second = api.post("/v1/plans/default/claims", role="dialer", json={}).json()
    assert [each["phone_id"] for each in second] == ["P3"]
    assert api.delete(f"/v1/claims/{first[0]['lease_id']}").status_code == 404
