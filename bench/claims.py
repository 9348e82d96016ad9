"""Claims through SQL alone, then through the HTTP API: 8 dialers claiming 10 phones at a time.

``python bench/claims.py [--phones N]`` starts a throwaway PostgreSQL (or uses
RECALL_TEST_POSTGRES_DSN, as the tests do), writes N eligible phones in bulk (a tenth of them
callbacks) beside 4 N phones waiting for a recall, then runs ``store.claims.claim_phones`` from
CLIENTS processes, each with its own connection, until every phone is leased. Then it writes N
fresh eligible phones and runs the same load through ``POST /v1/plans/{plan_id}/claims`` of
API_PROCESSES ``recall serve`` processes (the clients spread over them, as dialers behind a load
balancer would be), CLIENTS processes with one HTTP connection each. Prints, and ``make bench``
takes: ``sql_claim_phones_per_s``, ``sql_claim_p99_ms``, ``api_claim_phones_per_s``,
``api_claim_p99_ms`` and ``api_claim_x_sql``, the API's phones per second over SQL's, same run.

Processes, not threads: a claim spends a good part of its time in Python (building the statement,
reading the rows back), and 8 threads would queue for the GIL: the figure would be the
interpreter's, not the database's. Two API processes: one per core of the machine the figures
are taken on (the API's own work is Python, one core per process).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer, free_port  # noqa: E402  (path set just above)
from worker.api.tokens import token_entry  # noqa: E402
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


def _claimer(
    url: str, plan_id: str, ready: Any, _number: int
) -> tuple[list[float], list[str], float, float]:
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


def _run(
    clients: int, claimer: Callable[..., tuple[list[float], list[str], float, float]], *args: Any
) -> ClaimRun:
    """``clients`` spawned processes running ``claimer(*args, ready, number)``, started together."""
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(clients, mp_context=context) as pool:
        ready = manager.Barrier(clients)
        futures = [pool.submit(claimer, *args, ready, n) for n in range(clients)]
        results = [future.result() for future in futures]
    latencies = [latency for result in results for latency in result[0]]
    phone_ids = [phone_id for result in results for phone_id in result[1]]
    seconds = max(result[3] for result in results) - min(result[2] for result in results)
    return ClaimRun(latencies, phone_ids, seconds)


def run_sql_claims(url: str, *, plan_id: str = PLAN, clients: int = CLIENTS) -> ClaimRun:
    """``clients`` processes claiming ``LIMIT`` phones at a time from ``url`` until none is left.

    The time runs from the first client's start (all start together) to the last client's empty
    claim; each client's final, empty claim counts among the latencies (a dialer pays for it too).
    """
    return _run(clients, _claimer, url, plan_id)


#: ``recall serve`` processes the API load is spread over.
API_PROCESSES = 2
_TOKEN = "bench-dialer-token-0123456789abcdefghijklmnopqrstuvwxyz"


def _api_claimer(
    urls: list[str], plan_id: str, ready: Any, number: int
) -> tuple[list[float], list[str], float, float]:
    """One dialer on one of the services: claim through HTTP until nothing is left."""
    import httpx

    url = f"{urls[number % len(urls)]}/v1/plans/{plan_id}/claims"
    body = {"limit": LIMIT, "lease_s": LEASE_S}
    latencies: list[float] = []
    handed: list[str] = []
    headers = {"Authorization": f"Bearer {_TOKEN}"}
    with httpx.Client(headers=headers, timeout=60) as client:
        client.get(urls[number % len(urls)] + "/healthz")  # connected before the start
        ready.wait()
        started_at = time.time()
        while True:
            started = time.perf_counter()
            answer = client.post(url, json=body)
            latencies.append(time.perf_counter() - started)
            answer.raise_for_status()
            claimed = answer.json()
            if not claimed:
                return latencies, handed, started_at, time.time()
            handed.extend(each["phone_id"] for each in claimed)


@contextmanager
def api_services(url: str, plan_id: str, count: int = API_PROCESSES) -> Iterator[list[str]]:
    """``count`` ``recall serve`` processes on database ``url``, with a dialer token and rules
    that have ``plan_id``; their base URLs. Stopped when the block ends."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-api-") as home:
        tokens = Path(home) / "tokens.toml"
        tokens.write_text(token_entry("bench", "dialer", _TOKEN), encoding="utf-8")
        rules = Path(home) / "rules.toml"
        rules.write_text(f'[[plans]]\nid = "{plan_id}"\ntimezone = "UTC"\n', encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if not key.startswith("RECALL_")}
        env.update(
            RECALL_HOME=home,
            RECALL_DATABASE_URL=url,
            RECALL_API_TOKENS=str(tokens),
            RECALL_RULES=str(rules),
            RECALL_BROKER_URL="redis://127.0.0.1:1/0",
            RECALL_SECRET_KEY=secrets.token_hex(32),  # the console's: one for every process
        )
        processes: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        try:
            for _ in range(count):
                port = free_port()
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "worker", "serve", "--port", str(port)], cwd=ROOT,
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                ))  # fmt: skip
                urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            for base, process in zip(urls, processes, strict=True):
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"recall serve exited ({process.returncode})")
                    try:
                        if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError("recall serve not ready after 60 s")
                    time.sleep(0.1)
            yield urls
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=30)


def run_api_claims(urls: list[str], *, plan_id: str = PLAN, clients: int = CLIENTS) -> ClaimRun:
    """``clients`` processes claiming ``LIMIT`` phones at a time through the services at ``urls``
    until none is left (timed as ``run_sql_claims``)."""
    return _run(clients, _api_claimer, urls, plan_id)


def measure(url: str, phones: int) -> dict[str, Any]:
    """The claim figures over ``phones`` eligible phones written into ``url`` (migrated): through
    SQL alone, then through the API on as many fresh phones, and their ratio."""
    write_eligible_phones(url, phones)
    sql = run_sql_claims(url)
    check_each_once(sql, phones)
    write_eligible_phones(url, phones, prefix="a")
    with api_services(url, PLAN) as urls:
        api = run_api_claims(urls)
    check_each_once(api, phones)
    return {
        **sql.figures("sql_claim"),
        **api.figures("api_claim"),
        "api_claim_x_sql": round(api.phones_per_s / sql.phones_per_s, 2),
    }


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
