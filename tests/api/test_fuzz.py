"""Property-based fuzzing of the running service from its own ``/openapi.json`` (schemathesis).

Every operation of the document, with a valid token (an editor's: it may call them all), a
bounded number of generated requests each: no 5xx, and every response matching the document's
schema for it (status codes, content types, bodies, headers).

Left out: the check that every request the document allows is accepted (2xx). The document
cannot say all the contract's rules: an event body is any JSON object there (``parse_event``
judges it, with the contract's reasons), and a cursor is any text (only the ones this
service gave are read). Those answer 422 with a one-line reason, as test_api.py checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import Session

from tests.api.conftest import Server, auth, start_server, write_tokens
from tests.helpers import EVENT_DEFAULTS, SKEW_S, at
from tests.servers import PostgresServer
from tests.workers import dispose_engines
from worker.domain.rules import load_rules
from worker.store.database import make_engine, upgrade
from worker.store.ingest import ingest

#: Generated requests per operation: enough to find a crash, few enough for the normal run.
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed(
    postgres: PostgresServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One service on PostgreSQL for the whole module, with a few phones and dead letters."""
    url = postgres.create_database()
    upgrade(url)
    engine = make_engine(url)
    events: list[object] = [
        {**EVENT_DEFAULTS, "event_id": f"e{n}", "phone_id": f"P{n}", "lead_id": f"L{n}"}
        for n in range(5)
    ]
    with Session(engine) as session, session.begin():
        ingest(session, [*events, "{bad"], load_rules(), at("2026-01-14T10:00:05+00:00"),
               task="test", skew_s=SKEW_S)  # fmt: skip
    engine.dispose()
    directory = tmp_path_factory.mktemp("fuzz")
    env = {
        "RECALL_HOME": str(directory / "home"),
        "RECALL_DATABASE_URL": url,
        "RECALL_BROKER_URL": redis_url,
        "RECALL_API_TOKENS": str(write_tokens(directory / "tokens.toml")),
    }
    server = start_server(env, directory / "serve.log")
    yield server
    server.stop()
    dispose_engines()
    postgres.drop_database(url)


def test_no_5xx_and_every_response_matches_the_document(fuzzed: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", headers=auth("editor"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15  # every operation this service has, /healthz included

    for operation in operations:
        raw = operation.definition.raw
        # An operation with nothing to vary gets a few calls (GET /v1/status waits 2 s each
        # for workers that are not there).
        varied = raw.get("parameters") or "requestBody" in raw
        # Claims are the dialers' alone; everything else an editor may call.
        headers = auth("dialer" if "claims" in operation.path else "editor")

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES if varied else 3,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            case.call_and_validate(
                headers=headers,  # noqa: B023  (called at once, within this iteration)
                excluded_checks=[positive_data_acceptance],
            )

        try:
            call()
        except Exception as error:
            raise AssertionError(f"{operation.label}: {error}") from error


def test_the_fuzzing_leaves_no_token_in_the_output(fuzzed: Server, tmp_path: Path) -> None:
    assert fuzzed.get("/v1/phones", role="editor").status_code == 200
    for role in ("dialer", "viewer", "editor"):
        assert auth(role)["Authorization"].removeprefix("Bearer ") not in fuzzed.output()
