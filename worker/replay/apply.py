"""An applied replay: the sorted history written through the worker's own persistence code.

Batches of events are applied on the simulated clock (``store.decisions.apply_events`` with no
wall clock); while it runs, the replay records itself with a heartbeat, so that ``recall status``
tells its held recalls from those of a replay that died.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update

from worker.domain.engine import phone_zone
from worker.domain.events import CallResult
from worker.domain.rules import Rules
from worker.replay.simulation import OnDecision, Summary
from worker.replay.sorting import Position
from worker.store.database import session_scope
from worker.store.decisions import apply_events
from worker.store.models import HEARTBEAT_S, RUNNING_WITHIN_S, ReplayRun

__all__ = ["APPLY_BATCH", "apply", "running_replay"]


# Events per transaction when applying: big enough for bulk statements to pay, small enough
# that a transaction never holds locks for long while a live worker runs beside it.
APPLY_BATCH = 5000


def apply(
    events: Iterable[tuple[Position, CallResult]],
    rules: Rules,
    until: datetime,
    *,
    on_decision: OnDecision | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Write ``events`` (in replay order) to the database through the worker's own code.

    Each batch is one transaction of ``apply_events`` on the simulated clock (each event decided
    as of its own time, recalls due before it, and not after ``until``, fired first). Returns the
    summary of what was decided.
    """
    summary = Summary()
    batch: list[tuple[Position, CallResult]] = []

    def flush() -> None:
        with session_scope() as session:
            applied = apply_events(session, [event for _, event in batch], rules, None, until=until)
        for (position, event), decision in zip(batch, applied.decisions, strict=True):
            summary.add(event, decision, phone_zone(rules, event))
            if on_decision is not None:
                on_decision(position, decision)
        summary.fired += applied.fired
        if on_progress is not None:
            on_progress(len(batch))
        batch.clear()

    for item in events:
        batch.append(item)
        if len(batch) >= APPLY_BATCH:
            flush()
    if batch:
        flush()
    return summary


@contextmanager
def running_replay() -> Iterator[None]:
    """Record an applied replay as running (host, pid, heartbeat) in the database while it runs.

    Its recalls are ``held`` until it ends; ``recall status`` tells held recalls of a running
    replay from those a replay left behind (interrupted), which only running it again releases.
    The record is in the database so that it works with several machines on one PostgreSQL.
    """
    now = datetime.now(UTC)
    with session_scope() as session:
        # Rows of replays that died without a word: nobody else removes them.
        gone = now - timedelta(seconds=RUNNING_WITHIN_S)
        session.execute(delete(ReplayRun).where(ReplayRun.heartbeat_at < gone))
        run = ReplayRun(
            host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now
        )
        session.add(run)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                with session_scope() as session:
                    session.execute(
                        update(ReplayRun)
                        .where(ReplayRun.id == run.id)
                        .values(heartbeat_at=datetime.now(UTC))
                    )
            except Exception:  # a missed beat is retried; the replay goes on
                continue

    thread = threading.Thread(target=beat, name="replay-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception), session_scope() as session:
            session.execute(delete(ReplayRun).where(ReplayRun.id == run.id))
