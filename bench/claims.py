"""Claims through SQL alone: 8 database connections claiming 10 phones at a time until none is left.

``python bench/claims.py [--phones N]`` starts a throwaway PostgreSQL (or uses
RECALL_TEST_POSTGRES_DSN, as the tests do), writes N eligible phones in bulk (a tenth of them
callbacks) beside 4 N phones waiting for a recall, then runs ``store.claims.claim_phones`` from
CLIENTS processes, each with its own connection, until every phone is leased. Prints phones
claimed per second and the p99 latency of one claim; ``make bench`` takes the same figures
(``sql_claim_phones_per_s``, ``sql_claim_p99_ms``) through ``run_sql_claims``.

Processes, not threads: a claim spends a good part of its time in Python (building the statement,
reading the rows back), and 8 threads would queue for the GIL: the figure would be the
interpreter's, not the database's. The API benchmark drives the same load through HTTP and reuses
``write_eligible_phones``, ``ClaimRun`` and ``check_each_once``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer  # noqa: E402  (path set just above)
from worker.store.bulk import insert_rows  # noqa: E402
from worker.store.claims import claim_phones  # noqa: E402
from worker.store.database import make_engine, session_scope, upgrade  # noqa: E402
from worker.store.models import Phone  # noqa: E402

#: The load of the figures: 8 dialers at once, each taking 10 phones a claim.
CLIENTS = 8
LIMIT = 10
#: Long enough that no lease runs out during a run: each phone is handed out exactly once.
LEASE_S = 3600
PLAN = "open"
#: Phones waiting for a recall (not eligible) per eligible phone: the partial index skips them.
WAITING_PER_ELIGIBLE = 4


def write_eligible_phones(url: str, count: int, *, plan_id: str = PLAN, prefix: str = "c") -> None:
    """``count`` eligible phones of ``plan_id``, as firing leaves them (a tenth are callbacks).

    Beside them ``WAITING_PER_ELIGIBLE`` times as many phones of the plan wait for a recall, as in
    a live table. Written in bulk (binary COPY), 50,000 rows a transaction.
    """
    engine = make_engine(url)
    now = datetime.now(UTC)
    names = ("phone_id", "lead_id", "plan_id", "eligible", "eligible_at", "eligible_reason",
             "eligible_agent", "generation", "system_recalls", "updated_at")  # fmt: skip
    total = count * (1 + WAITING_PER_ELIGIBLE)
    step = 50_000
    try:
        for start in range(0, total, step):
            rows = []
            for n in range(start, min(start + step, total)):
                eligible = n < count
                callback = eligible and n % 10 == 0
                rows.append((
                    f"{prefix}-P{n:08d}", f"L{n}", plan_id, eligible,
                    now - timedelta(seconds=n % 86_400) if eligible else None,
                    ("callback" if callback else "sip_recall") if eligible else None,
                    f"agent-{n % 50}" if callback and n % 20 == 0 else None,
                    1, 1, now,
                ))  # fmt: skip
            with session_scope(engine) as session:
                insert_rows(session, Phone, names, rows)
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE phones")
            connection.commit()
    finally:
        engine.dispose()


@dataclass(frozen=True, slots=True)
class ClaimRun:
    """What a claim load did: every claim's latency and the phone ids handed out, over a time."""

    latencies_s: list[float]
    phone_ids: list[str]
    seconds: float

    @property
    def phones_per_s(self) -> float:
        return len(self.phone_ids) / self.seconds

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[int(0.99 * (len(ordered) - 1))]

    def figures(self, prefix: str) -> dict[str, Any]:
        """``{prefix}_phones_per_s``, ``{prefix}_p99_ms`` and the counts behind them."""
        return {
            f"{prefix}_phones_per_s": round(self.phones_per_s),
            f"{prefix}_p99_ms": round(self.p99_ms, 2),
            f"{prefix}_claims": len(self.latencies_s),
            f"{prefix}_phones": len(self.phone_ids),
        }


def check_each_once(run: ClaimRun, expected: int) -> None:
    """Raise unless every one of ``expected`` phones was handed out, and none twice."""
    handed = len(run.phone_ids)
    distinct = len(set(run.phone_ids))
    if handed != distinct or distinct != expected:
        raise AssertionError(
            f"{handed} phones handed out, {distinct} distinct; {expected} eligible"
        )


def _claimer(url: str, plan_id: str, ready: Any) -> tuple[list[float], list[str], float, float]:
    """One dialer: claim until nothing is left; its latencies, phones, start and end times."""
    engine = make_engine(url)
    latencies: list[float] = []
    handed: list[str] = []
    claimant = f"bench:{os.getpid()}"
    try:
        with session_scope(engine) as session:  # connect before the start, not on the clock
            session.connection()
        ready.wait()  # every process imported and connected: all start together
        started_at = time.time()
        while True:
            started = time.perf_counter()
            with session_scope(engine) as session:
                claimed = claim_phones(session, plan_id, limit=LIMIT, lease_s=LEASE_S,
                                       now=datetime.now(UTC), claimant=claimant)  # fmt: skip
            latencies.append(time.perf_counter() - started)
            if not claimed:
                return latencies, handed, started_at, time.time()
            handed.extend(claim.phone_id for claim in claimed)
    finally:
        engine.dispose()


def run_sql_claims(url: str, *, plan_id: str = PLAN, clients: int = CLIENTS) -> ClaimRun:
    """``clients`` processes claiming ``LIMIT`` phones at a time from ``url`` until none is left.

    The time runs from the first client's start (all start together) to the last client's empty
    claim; each client's final, empty claim counts among the latencies (a dialer pays for it too).
    """
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(clients, mp_context=context) as pool:
        ready = manager.Barrier(clients)
        futures = [pool.submit(_claimer, url, plan_id, ready) for _ in range(clients)]
        results = [future.result() for future in futures]
    latencies = [latency for result in results for latency in result[0]]
    phone_ids = [phone_id for result in results for phone_id in result[1]]
    seconds = max(result[3] for result in results) - min(result[2] for result in results)
    return ClaimRun(latencies, phone_ids, seconds)


def measure(url: str, phones: int) -> dict[str, Any]:
    """The SQL claim figures over ``phones`` eligible phones written into ``url`` (migrated)."""
    write_eligible_phones(url, phones)
    run = run_sql_claims(url)
    check_each_once(run, phones)
    return run.figures("sql_claim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phones", type=int, default=100_000, help="eligible phones to claim")
    args = parser.parse_args()
    postgres = PostgresServer()
    try:
        url = postgres.create_database()
        upgrade(url)
        results = measure(url, args.phones)
        postgres.drop_database(url)
    finally:
        postgres.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
