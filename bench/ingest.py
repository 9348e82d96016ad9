"""Ingestion throughput and fire lateness on Redis + PostgreSQL (``make bench-ingest``).

Starts a throwaway Redis and PostgreSQL (or uses RECALL_TEST_REDIS_URL / RECALL_TEST_POSTGRES_DSN
as the tests do) and one real ``recall worker`` (prefork, concurrency 2), then measures:
- events/s through ``recall.process_call_result`` (one event per message);
- events/s through ``recall.process_call_results`` (500 events per message);
- fire lateness (fired_at - due_at) of recalls falling due during the run.
Each rate is from the first message published to the last event stored.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from tests.servers import PostgresServer, redis_for_tests  # noqa: E402
from tests.workers import WorkerProcess  # noqa: E402
from worker.client import RecallClient  # noqa: E402
from worker.db import make_engine, session_scope, upgrade  # noqa: E402
from worker.models import ProcessedEvent, Recall  # noqa: E402


def events(prefix: str, count: int, occurred: datetime, phones: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{n}",
            "plan_id": "manual-open",
            "lead_id": f"L{n % phones}",
            "phone_id": f"{prefix}-P{n % phones}",
            "sip_code": 486,
            "occurred_at": occurred.isoformat(),
        }
        for n in range(count)
    ]


def wait_for_events(engine: Any, total: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            done = session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0
        if done >= total:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"only {done} of {total} events stored after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--recalls", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recall-bench-"))
    rules = tmp / "rules.toml"
    # An always-open plan without caps, so every 486 becomes a recall 15 minutes after the call.
    rules.write_text('[[plans]]\nid = "manual-open"\ntimezone = "UTC"\n', encoding="utf-8")
    server = PostgresServer()
    url = server.create_database()
    upgrade(url)
    engine = make_engine(url)
    results: dict[str, Any] = {}
    with redis_for_tests(tmp) as broker:
        env = {"RECALL_BROKER_URL": broker, "RECALL_DATABASE_URL": url,
               "RECALL_RULES": str(rules), "RECALL_HOME": str(tmp / "home")}  # fmt: skip
        worker = WorkerProcess(env, tmp / "worker.log", ())
        try:
            worker.wait_ready()
            client = RecallClient(broker)
            past = datetime.now(UTC) - timedelta(hours=1)

            single = events("s", args.single, past, args.single)
            start = time.perf_counter()
            for event in single:
                client.publish(event)
            end = wait_for_events(engine, args.single, 600)
            results["ingest_single_per_s"] = round(args.single / (end - start))

            batch = events("b", args.batch, past, args.batch // 4)
            start = time.perf_counter()
            client.publish_many(batch, batch=500)
            end = wait_for_events(engine, args.single + args.batch, 600)
            results["ingest_batch_per_s"] = round(args.batch / (end - start))

            # Recalls due 5-25 s from now: calls 15 minutes (SIP 486's recall time) earlier.
            now = datetime.now(UTC)
            due = [
                {**event, "occurred_at": (now - timedelta(minutes=15) + timedelta(
                    seconds=5 + 20 * n / args.recalls)).isoformat()}
                for n, event in enumerate(events("f", args.recalls, now, args.recalls))
            ]  # fmt: skip
            client.publish_many(due, batch=500)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with session_scope(engine) as session:
                    late = session.execute(
                        select(Recall.fired_at, Recall.due_at).where(
                            Recall.recall_id.like("f-%"), Recall.state == "fired"
                        )
                    ).all()
                if len(late) >= args.recalls:
                    break
                time.sleep(0.5)
            lateness = sorted((fired - due).total_seconds() for fired, due in late)
            results["fired"] = len(lateness)
            results["fire_lateness_median_s"] = round(statistics.median(lateness), 3)
            results["fire_lateness_p99_s"] = round(lateness[int(0.99 * (len(lateness) - 1))], 3)
            results["fire_lateness_max_s"] = round(lateness[-1], 3)
        finally:
            worker.stop()
            engine.dispose()
            server.drop_database(url)
            server.stop()
    for key, value in results.items():
        print(f"{key:<26} {value}")
    (ROOT / "bench" / "results-ingest.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
