"""The console through a real ``recall serve``: a signed-in browser-like client, and stored call
results for its pages (a phone's decisions, the preview's what-if, a dead letter)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.api.conftest import TOKENS, api, serve, tokens_file  # noqa: F401 (fixtures)
from tests.helpers import EVENT_DEFAULTS, SKEW_S
from worker.domain.rules import Rules
from worker.store.ingest import ingest

_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(page)
    assert found, page[:2000]
    return found.group(1)


def hidden(page: str, name: str) -> str:
    """The value of the first hidden input ``name`` of a page."""
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page[:2000]
    return html.unescape(found.group(1))


class Console:
    """A cookie-keeping client of one server's console, as a browser without JavaScript is."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=60, follow_redirects=True)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def login(self, role: str) -> httpx.Response:
        """Sign in with the tests' token of ``role``."""
        form = self.get("/console/login")
        return self.client.post(
            "/console/login", data={"token": TOKENS[role], "_csrf_token": csrf_of(form.text)}
        )

    def submit(self, page: str, path: str, data: dict[str, str]) -> httpx.Response:
        """Post ``data`` to ``path`` as a form of ``page`` does (with its CSRF token)."""
        return self.client.post(path, data={**data, "_csrf_token": csrf_of(page)})

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def console_client() -> Iterator[type[Console]]:
    made: list[Console] = []

    class Tracked(Console):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            made.append(self)

    yield Tracked
    for client in made:
        client.close()


def recent(**changes: Any) -> dict[str, Any]:
    """A call result of yesterday (inside the preview's default week)."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    return {**EVENT_DEFAULTS, "occurred_at": yesterday.isoformat(), **changes}


def store_calls(engine: Engine, rules: Rules) -> None:
    """Phone P1 busy (486) twice, P2 a 404, and one dead letter (an unknown plan)."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    payloads: list[object] = [
        recent(event_id="c1", phone_id="P1", occurred_at=yesterday.isoformat()),
        recent(
            event_id="c2",
            phone_id="P1",
            occurred_at=(yesterday + timedelta(hours=1)).isoformat(),
        ),
        recent(event_id="c3", phone_id="P2", lead_id="L2", sip_code=404),
        recent(event_id="n1", phone_id="PN", lead_id="LN", plan_id="no_such_plan"),
    ]
    with Session(engine) as session, session.begin():
        ingest(session, payloads, rules, datetime.now(UTC), task="test", skew_s=SKEW_S)
