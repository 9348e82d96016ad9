"""Every performance figure in one run: ``make bench`` (full) and ``make bench-quick`` (smoke).

Starts a throwaway Redis and PostgreSQL (or uses RECALL_TEST_REDIS_URL / RECALL_TEST_POSTGRES_DSN,
as the tests do) and real ``recall worker`` processes (prefork, concurrency 2), measures each
figure, prints a table beside its target and writes ``bench/results.json`` (``--out``).

How each figure is taken (see docs/PERFORMANCE.md):
- ``celery_noop_per_s``, ``ingest_single_per_s``, ``ingest_batch_per_s``: the messages are
  published first, then a worker starts; the rate is the messages (events) taken from the moment
  it is ready until the queue is drained (stored, for events), over that time. The three workers
  run with the very same settings (``ingest_worker`` in the results: pool, concurrency, prefetch
  multiplier, flush count and interval), read from the environment as in production.
- ``replay_dry_per_s``, ``replay_apply_per_s``: ``recall replay`` over a generated history, wall
  time of the whole command (reading and sorting included); applied into PostgreSQL.
- ``pending_1m_worker_rss_mb``, ``pending_1m_redis_mb``: recalls pending days ahead are written to
  the database, a worker with its dispatcher runs 20 s; the memory of the worker's processes
  (main and pool: the sum of their PSS, which counts pages they share once) and Redis
  ``used_memory``.
- ``burst_100k_all_eligible_s``: recalls due spread over one minute; the last firing time minus
  the last due time (from the database).
- ``fire_lateness_p99_s``: recalls due at a steady 200 a second; p99 of fired minus due.
- ``engine_decide_us``: ``bench/engine.py``'s median cost of one decision.
- ``sql_claim_phones_per_s``, ``sql_claim_p99_ms``: ``bench/claims.py``: eligible phones written
  in bulk, then 8 processes, each with its own connection, running ``claim_phones`` 10 phones at a
  time until all are leased; phones leased per second (from a common start to the last empty
  claim) and the p99 latency of one claim.
- ``api_claim_phones_per_s``, ``api_claim_p99_ms``, ``api_claim_x_sql``: the same load (8
  processes, 10 phones a claim, as many fresh phones) through ``POST /v1/plans/{plan_id}/claims``
  of two ``recall serve`` processes (the clients spread over them); its phones per second over the
  SQL figure of the same run.
- ``cli_decide_x_python``: the median wall time of ``recall decide`` on one event over the median
  of ``python -c "import pendulum, orjson, tomllib, click"``, 5 of each, interleaved, same run
  (the command's start-up against the interpreter's with the libraries it cannot do without).
- ``replay_dry_x_before``, ``engine_decide_x_before``, ``replay_apply_x_before``,
  ``replay_jobs2_x_jobs1``, ``replay_dry_x_parse`` (issue 16): ``bench/ab.py``: this code against
  the commit before the issue (``bench/before.py``, ``--before REV`` for another), both checked
  out side by side, runs interleaved A B A B, medians; the dry and applied replays on the 200k
  history, ``--jobs 2`` over ``--jobs 1`` on the replay figures' history.

``--only PART`` (repeatable: ingestion, recalls, claims, replay, engine, cli, ab) takes some of
them; ``make bench-ingest`` is ``--only ingestion``, ``make bench-ab`` ``--only ab``.

Speed is reported, never asserted: the quick run fails only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.ab import measure as measure_ab  # noqa: E402
from bench.before import BASE  # noqa: E402
from bench.claims import measure as measure_claims  # noqa: E402
from bench.replay import measure, tree_memory_kib  # noqa: E402
from config.settings import Settings  # noqa: E402
from tests.servers import PostgresServer, redis_for_tests  # noqa: E402
from tests.workers import WorkerProcess  # noqa: E402
from worker.app import app, celery_config  # noqa: E402
from worker.client import RecallClient  # noqa: E402
from worker.names import CALL_RESULTS_QUEUE  # noqa: E402
from worker.store.bulk import insert_rows  # noqa: E402
from worker.store.database import make_engine, session_scope, upgrade  # noqa: E402
from worker.store.models import Phone, ProcessedEvent, Recall  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    noop: int
    single: int
    batch: int
    replay: int
    pending: int
    burst: int
    steady_s: int
    claims: int
    ab: int  # the history of the A/B replays (the jobs ratio takes the replay's)
    ab_pairs: int  # rounds of A B


FULL = Sizes(20_000, 5_000, 100_000, 1_000_000, 1_000_000, 100_000, 60, 100_000, 200_000, 3)
QUICK = Sizes(1_000, 300, 5_000, 20_000, 20_000, 2_000, 10, 2_000, 20_000, 2)
# (key, target text, check on the value and the results) — checks report, they never fail.
TARGETS: list[tuple[str, str, Callable[[float, dict[str, Any]], bool] | None]] = [
    ("celery_noop_per_s", "(baseline)", None),
    ("ingest_single_per_s", ">= 0.6 x baseline", lambda v, r: v >= 0.6 * r["celery_noop_per_s"]),
    ("ingest_batch_per_s", ">= 10 x baseline", lambda v, r: v >= 10 * r["celery_noop_per_s"]),
    ("replay_dry_per_s", ">= 100,000", lambda v, r: v >= 100_000),
    ("replay_apply_per_s", ">= 30,000", lambda v, r: v >= 30_000),
    ("pending_1m_worker_rss_mb", "<= 200", lambda v, r: v <= 200),
    ("pending_1m_redis_mb", "<= 64", lambda v, r: v <= 64),
    ("burst_100k_all_eligible_s", "<= 30", lambda v, r: v <= 30),
    ("fire_lateness_p99_s", "<= 2", lambda v, r: v <= 2),
    ("sql_claim_phones_per_s", "(report)", None),
    ("sql_claim_p99_ms", "(report)", None),
    ("api_claim_phones_per_s", "(report)", None),
    ("api_claim_p99_ms", "(report)", None),
    ("api_claim_x_sql", ">= 0.5", lambda v, r: v >= 0.5),
    ("engine_decide_us", "(report)", None),
    ("cli_decide_x_python", "<= 3", lambda v, r: v <= 3),
    ("replay_dry_x_before", ">= 2.0", lambda v, r: v >= 2.0),
    ("engine_decide_x_before", "<= 0.5", lambda v, r: v <= 0.5),
    ("replay_apply_x_before", ">= 1.0", lambda v, r: v >= 1.0),
    ("replay_jobs2_x_jobs1", ">= 1.8", lambda v, r: v >= 1.8),
    ("replay_dry_x_parse", "(report)", None),
]
# An always-open plan without caps: every 486 is a recall 15 minutes after the call.
RULES = '[[plans]]\nid = "open"\ntimezone = "UTC"\n'


class Bench:
    """The servers of one run, fresh databases and workers on demand."""

    def __init__(self, tmp: Path, broker: str, postgres: PostgresServer) -> None:
        self.tmp, self.broker, self.postgres = tmp, broker, postgres
        self.rules = tmp / "rules.toml"
        self.rules.write_text(RULES, encoding="utf-8")
        self.redis = redis.Redis.from_url(broker)

    @contextmanager
    def database(self) -> Iterator[str]:
        url = self.postgres.create_database()
        try:
            upgrade(url)
            yield url
        finally:
            self.postgres.drop_database(url)

    @contextmanager
    def worker(
        self, url: str, *args: str, before: Callable[[], object] | None = None
    ) -> Iterator[WorkerProcess]:
        """A worker on an empty broker; ``before`` runs first (to queue messages up for it)."""
        self.redis.flushall()
        if before is not None:
            before()
        env = {"RECALL_BROKER_URL": self.broker, "RECALL_DATABASE_URL": url,
               "RECALL_RULES": str(self.rules), "RECALL_HOME": str(self.tmp / "home")}  # fmt: skip
        process = WorkerProcess(env, self.tmp / f"worker-{time.monotonic_ns()}.log", args)
        try:
            yield process
        finally:
            process.stop()


def drain(worker: WorkerProcess, done: Callable[[], int], total: int, timeout: float) -> float:
    """Items per second from the worker's readiness until ``done()`` reaches ``total``."""
    worker.wait_ready()
    start, before = time.perf_counter(), done()
    deadline = time.monotonic() + timeout
    while (count := done()) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{count} of {total} done after {timeout}s:\n{worker.text()[-2000:]}"
            )
        time.sleep(0.02)
    return (total - before) / (time.perf_counter() - start)


def event(prefix: str, n: int, occurred: datetime) -> dict[str, Any]:
    return {
        "event_id": f"{prefix}-{n}",
        "plan_id": "open",
        "lead_id": f"L{n}",
        "phone_id": f"{prefix}-P{n}",
        "sip_code": 486,
        "occurred_at": occurred.isoformat(),
    }


def stored(url: str) -> Callable[[], int]:
    engine = make_engine(url)

    def count() -> int:
        with session_scope(engine) as session:
            return session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0

    return count


def ingestion(bench: Bench, sizes: Sizes, results: dict[str, Any]) -> None:
    queue = bench.redis

    def noops() -> None:
        for _ in range(sizes.noop):
            app.send_task("bench.noop", queue=CALL_RESULTS_QUEUE)

    with (
        bench.database() as url,
        bench.worker(url, "--no-beat", "--include", "bench.noop", before=noops) as worker,
    ):

        def taken() -> int:
            return sizes.noop - queue.llen(CALL_RESULTS_QUEUE) - queue.hlen("unacked")

        results["celery_noop_per_s"] = round(drain(worker, taken, sizes.noop, 600))
    past = datetime.now(UTC) - timedelta(hours=1)
    client = RecallClient(bench.broker)
    for key, count, batch in (("ingest_single_per_s", sizes.single, None),
                              ("ingest_batch_per_s", sizes.batch, 500)):  # fmt: skip
        events = [event(key, n, past) for n in range(count)]

        def publish(events: list[dict[str, Any]] = events, batch: int | None = batch) -> None:
            if batch is None:
                for item in events:
                    client.publish(item)
            else:
                client.publish_many(events, batch=batch)

        with bench.database() as url, bench.worker(url, "--no-beat", before=publish) as worker:
            results[key] = round(drain(worker, stored(url), count, 1800))
    baseline = results["celery_noop_per_s"]
    results["ingest_single_x_baseline"] = round(results["ingest_single_per_s"] / baseline, 2)
    results["ingest_batch_x_baseline"] = round(results["ingest_batch_per_s"] / baseline, 2)
    settings = Settings.from_env()
    results["ingest_worker"] = {
        "pool": "prefork",
        "concurrency": 2,
        "prefetch_multiplier": celery_config(settings)["worker_prefetch_multiplier"],
        "flush_count": settings.ingest_flush_count,
        "flush_ms": settings.ingest_flush_ms,
    }


def replay(sizes: Sizes, results: dict[str, Any]) -> None:
    measured = measure(sizes.replay)
    results.update({key: value for key, value in measured.items() if key != "events_file"})


def insert_dicts(session: Any, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """The rows (dicts with the same keys) through the store's bulk insert."""
    insert_rows(session, model, list(rows[0]), [tuple(row.values()) for row in rows])


def write_recalls(url: str, prefix: str, dues: list[datetime]) -> None:
    """Phones each waiting for one pending recall, as ingestion would have left them."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    step = 50_000
    try:
        for start in range(0, len(dues), step):
            part = range(start, min(start + step, len(dues)))
            with session_scope(engine) as session:
                insert_dicts(session, Phone, [
                    {"phone_id": f"{prefix}-P{n}", "lead_id": f"L{n}", "plan_id": "open",
                     "eligible": False, "eligible_at": None, "generation": 1,
                     "pending_recall_id": f"{prefix}-{n}", "last_result_at": now,
                     "last_event_id": f"{prefix}-{n}", "last_decision": None,
                     "system_recalls": 1, "updated_at": now}
                    for n in part
                ])  # fmt: skip
                insert_dicts(session, Recall, [
                    {"recall_id": f"{prefix}-{n}", "phone_id": f"{prefix}-P{n}",
                     "lead_id": f"L{n}", "plan_id": "open", "generation": 1, "due_at": dues[n],
                     "source": "sip_code", "rule": "sip:486", "reason": "sip_recall",
                     "state": "pending", "created_at": now, "dispatched_at": None,
                     "fired_at": None}
                    for n in part
                ])  # fmt: skip
    finally:
        engine.dispose()


def firings(url: str) -> list[tuple[datetime, datetime]]:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            query = select(Recall.due_at, Recall.fired_at).where(Recall.state == "fired")
            return [(due, fired) for due, fired in session.execute(query)]
    finally:
        engine.dispose()


def wait_fired(url: str, total: int, timeout: float) -> list[tuple[datetime, datetime]]:
    deadline = time.monotonic() + timeout
    while len(fired := firings(url)) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(fired)} of {total} recalls fired after {timeout}s")
        time.sleep(1)
    return fired


def recalls(bench: Bench, sizes: Sizes, results: dict[str, Any]) -> None:
    with bench.database() as url:
        ahead = datetime.now(UTC) + timedelta(days=2)
        spread = timedelta(days=7) / sizes.pending
        write_recalls(url, "p", [ahead + n * spread for n in range(sizes.pending)])
        with bench.worker(url) as worker:
            worker.wait_ready()
            time.sleep(20)  # twenty dispatcher ticks over a million rows
            pid = worker.process.pid if worker.process else 0
            results["pending_1m_worker_rss_mb"] = round(tree_memory_kib(pid) / 1024)
            results["pending_1m_worker_rss_sum_mb"] = round(tree_memory_kib(pid, "Rss") / 1024)
            results["pending_1m_redis_mb"] = round(
                int(bench.redis.info("memory")["used_memory"]) / 2**20, 1
            )
        results["pending_recalls"] = sizes.pending
    for name, count, span in (("burst", sizes.burst, 60.0),
                              ("steady", 200 * sizes.steady_s, float(sizes.steady_s))):  # fmt: skip
        with bench.database() as url, bench.worker(url) as worker:
            worker.wait_ready()
            first = datetime.now(UTC) + timedelta(seconds=40)
            write_recalls(url, name, [first + timedelta(seconds=span * n / count)
                                      for n in range(count)])  # fmt: skip
            fired = wait_fired(url, count, span + 600)
        if name == "burst":
            last_due = max(due for due, _ in fired)
            last_fired = max(at for _, at in fired)
            results["burst_100k_all_eligible_s"] = round((last_fired - last_due).total_seconds(), 2)
            results["burst_recalls"] = count
        else:
            lateness = sorted((at - due).total_seconds() for due, at in fired)
            results["fire_lateness_p99_s"] = round(lateness[int(0.99 * (len(lateness) - 1))], 3)
            results["fire_lateness_median_s"] = round(statistics.median(lateness), 3)
            results["steady_recalls"] = count


def claims(bench: Bench, sizes: Sizes, results: dict[str, Any]) -> None:
    with bench.database() as url:
        results.update(measure_claims(url, sizes.claims))


def engine_args(quick: bool) -> list[str]:
    return ["--leads", "300"] if quick else []


def engine(quick: bool, results: dict[str, Any]) -> None:
    args = engine_args(quick)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "engine.py"), *args],
                          check=True, capture_output=True, text=True)  # fmt: skip
    last = done.stdout.strip().splitlines()[-1].split()
    results["engine_decide_us"] = float(last[-1])


def table(results: dict[str, Any]) -> str:
    lines = [f"{'figure':<28}{'value':>14}  {'target':<20}met"]
    for key, target, check in TARGETS:
        if key not in results:  # a part left out with --only
            continue
        value = results[key]
        met = "-" if check is None else ("yes" if check(value, results) else "NO")
        lines.append(f"{key:<28}{value:>14,}  {target:<20}{met}")
    return "\n".join(lines)


def cli(results: dict[str, Any]) -> None:
    event = (
        '{"event_id":"e1","plan_id":"default","lead_id":"L1","phone_id":"P1","sip_code":486,'
        '"occurred_at":"2026-03-28T20:50:00+00:00"}'
    )
    recall = str(Path(sys.executable).with_name("recall"))
    commands = {
        "decide": [recall, "decide", "-"],
        "python": [sys.executable, "-c", "import pendulum, orjson, tomllib, click"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(5):  # interleaved: the machine's noise falls on both alike
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, input=event, text=True, capture_output=True, check=True)
            times[name].append(time.perf_counter() - started)
    decide_s, python_s = (statistics.median(times[name]) for name in ("decide", "python"))
    results["cli_decide_s"] = round(decide_s, 4)
    results["cli_python_s"] = round(python_s, 4)
    results["cli_decide_x_python"] = round(decide_s / python_s, 2)


def ab(sizes: Sizes, quick: bool, rev: str, results: dict[str, Any]) -> None:
    results.update(measure_ab(sizes.ab, sizes.replay, sizes.ab_pairs, engine_args(quick), rev))


PARTS = ("ingestion", "recalls", "claims", "replay", "engine", "cli", "ab")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", action="append", choices=PARTS, help="these parts (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--before", default=BASE, metavar="REV",
                        help=f"the commit the ab part compares with (default {BASE})")  # fmt: skip
    args = parser.parse_args()
    parts = set(args.only or PARTS)
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {}
    started = time.monotonic()
    if parts & {"ingestion", "recalls", "claims"}:
        tmp = Path(tempfile.mkdtemp(prefix="recall-bench-"))
        postgres = PostgresServer()
        try:
            with redis_for_tests(tmp) as broker:
                bench = Bench(tmp, broker, postgres)
                os.environ["RECALL_BROKER_URL"] = broker  # app.send_task publishes there
                app.conf.broker_url = broker
                if "ingestion" in parts:
                    ingestion(bench, sizes, results)
                if "recalls" in parts:
                    recalls(bench, sizes, results)
                if "claims" in parts:
                    claims(bench, sizes, results)
        finally:
            postgres.stop()
    if "replay" in parts:
        replay(sizes, results)
    if "engine" in parts:
        engine(args.quick, results)
    if "cli" in parts:
        cli(results)
    if "ab" in parts:
        ab(sizes, args.quick, args.before, results)
    results["run"] = {
        "quick": args.quick,
        "parts": [part for part in PARTS if part in parts],
        "sizes": asdict(sizes),
        "seconds": round(time.monotonic() - started),
        "cores": len(os.sched_getaffinity(0)),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(table(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
