"""An edit through the API reaches a running worker within seconds (issue 15, DESIGN.md section 9).

A real ``recall serve`` and a real ``recall worker`` on the same database and broker: the editor
PUTs a rules file, the next call results the worker decides name the new version, and the history
shows the edit with the token's name as its author.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.api.conftest import Server
from tests.helpers import EVENT_DEFAULTS
from tests.workers import WorkerProcess, decision_of
from worker.client import RecallClient
from worker.store.database import make_engine

LATER = "[[sip_codes]]\ncode = 486\nrecall_after = { minutes = 40 }\n"


def test_an_edit_through_the_api_reaches_a_running_worker(
    api: Server,
    database_url: str,
    broker_url: str,
    tmp_path: Path,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    env = {
        "RECALL_BROKER_URL": broker_url, "RECALL_DATABASE_URL": database_url,
        "RECALL_HOME": str(tmp_path / "worker-home"), "RECALL_METRICS_PORT": "0",
    }  # fmt: skip
    worker = worker_process(env, "--concurrency", "1", name="edited")
    client = RecallClient(broker_url)
    engine = make_engine(database_url)

    def decided(number: int) -> dict[str, Any]:
        call = {**EVENT_DEFAULTS, "event_id": f"w{number}", "phone_id": f"P{number}"}
        return decision_of(client, engine, call, worker)

    try:
        before = decided(1)
        assert before["rules_version"] == api.get("/v1/rules").json()["version"]
        saved = api.put("/v1/rules", json={"rules": LATER, "comment": "busy lines later"})
        assert saved.status_code == 200, saved.text
        edited, edited_at = saved.json()["version"], time.monotonic()
        number = 2
        while (decision := decided(number))["rules_version"] != edited:
            assert time.monotonic() - edited_at < 10, worker.text()[-3000:]
            number += 1
            time.sleep(0.2)
        assert "40m" in decision["explanation"]
        history = api.get("/v1/rules/versions").json()
        assert (history[0]["version"], history[0]["author"], history[0]["source"]) == (
            edited,
            "editor",
            "api",
        )
        assert history[0]["comment"] == "busy lines later"
    finally:
        client.app.close()
        engine.dispose()
    print(f"\nan edit through the API reached the worker in {time.monotonic() - edited_at:.1f}s")
