"""Replay: historical call results through the same rules, in event-time order, simulated clock.

Input is read and validated as it streams, sorted on disk when it is larger than one chunk (an
external merge sort), and fed in ``occurred_at`` order (ties by file, then line) either to an
in-memory simulation (``--dry-run``, ``--compare``) or to the same persistence code the worker
uses. Memory grows with the number of distinct phones, not with the number of events.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import os
import shutil
import socket
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import orjson

from worker.engine import Decision, phone_zone, timezone
from worker.events import NO_EXTRA, CallResult
from worker.pipeline import AheadOfClock, Rejected, accept, event_id_of, raw_text
from worker.rules import Rules
from worker.sources import UnreadableRow, iter_records
from worker.state import attempt_lookback
from worker.store import apply_events
from worker.timeline import Timeline

__all__ = [
    "CHUNK_EVENTS",
    "HEARTBEAT_S",
    "RUNNING_WITHIN_S",
    "Rejection",
    "Simulation",
    "Summary",
    "apply",
    "fewer_collections",
    "running_replay",
    "share_of",
    "simulate",
    "sorted_events",
]

# Runs merged at once: one open file each, well under the usual limit of 1,024.
MAX_OPEN_RUNS = 64
# Events sorted in memory before a run is spilled to disk: about 120 MB of Python objects.
CHUNK_EVENTS = 100_000
# Delay histogram resolution: one bucket per minute up to a day, then per hour (bounded memory).
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row that could not be replayed: where it was, why, and what it said."""

    file: str
    line: int
    reason: str
    detail: str
    payload: str
    event_id: str | None = None
    #: Where its file stands among the files replayed (orders rejections across processes).
    file_index: int = 0
    #: Refused for lying after the replay's --now (beyond the skew): not in the history replayed.
    after_now: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "file": self.file,
            "line": self.line,
            "reason": self.reason,
            "detail": self.detail,
            "payload": self.payload,
        }


#: Where an event stands in the replay order: (microseconds since the epoch, file index, line).
Position = tuple[int, int, int]


def share_of(raw: object, shares: int) -> int:
    """Which of ``shares`` processes replays a record: a stable hash of its lead id.

    A lead's phones stay together (rules may count every call to a lead). A record with no
    readable lead id goes to the first, which rejects it.
    """
    lead_id = raw.get("lead_id") if isinstance(raw, dict) else None
    if not isinstance(lead_id, str):
        return 0
    return zlib.crc32(lead_id.encode("utf-8", "surrogatepass")) % shares


def _sort_key(event: CallResult) -> int:
    # Microseconds since the epoch: exact, and cheap to compare and to store.
    return round(event.occurred_at.timestamp() * 1_000_000)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector rarely while the block runs.

    A replay keeps millions of long-lived objects (phone states, their attempts): with the default
    thresholds the collector re-scans them so often that it took half of a million-event replay.
    Replay makes no reference cycles per event, so collecting every 100,000 allocations is plenty.
    """
    thresholds = gc.get_threshold()
    gc.freeze()  # what exists already (modules, rules) is never collected again
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _row(key: int, file_index: int, number: int, event: CallResult) -> tuple[Any, ...]:
    # A spilled event: its sort position, then its fields, already validated.
    return (
        key, file_index, number, event.event_id, event.plan_id, event.lead_id, event.phone_id,
        event.sip_code, event.occurred_at.isoformat(), event.outcome_code, event.timezone,
        event.retry_after_s, event.call_id, dict(event.extra) or None,
    )  # fmt: skip


def _event(row: list[Any]) -> CallResult:
    # The event back from its spilled row, without validating again: it was validated on reading.
    extra = row[13]
    return CallResult(
        row[3], row[4], row[5], row[6], row[7], datetime.fromisoformat(row[8]),
        row[9], row[10], row[11], row[12],
        MappingProxyType(extra) if extra else NO_EXTRA,
    )  # fmt: skip


def _spill(run: list[tuple[int, int, int, CallResult]], directory: str) -> str:
    # (key, file, line) is unique, so tuples sort by it without a key function, at C speed.
    run.sort()
    handle, path = tempfile.mkstemp(prefix="recall-replay-", suffix=".jsonl", dir=directory)
    with os.fdopen(handle, "wb") as out:
        out.writelines(orjson.dumps(_row(*item), option=orjson.OPT_APPEND_NEWLINE) for item in run)
    run.clear()
    return path


def read_rows(path: str) -> Iterator[list[Any]]:
    """The rows of a file of JSON lines (a spilled run, a process's output), one list each."""
    with open(path, "rb") as handle:
        yield from map(orjson.loads, handle)


class SortedEvents:
    """Validated events of some files, in event-time order, sorted on disk when large.

    Reading happens when it is made; iterate it once. Use it as a context manager (or call
    ``close``): spilled runs are removed when it closes, whether or not it was read through.
    """

    def __init__(
        self,
        files: Iterable[Path],
        rules: Rules,
        on_reject: Callable[[Rejection], None],
        *,
        chunk: int = CHUNK_EVENTS,
        on_read: Callable[[int], None] | None = None,  # records read so far, every 10,000
        share: tuple[int, int] = (0, 1),
        on_accept: Callable[[CallResult], None] | None = None,
        now: datetime | None = None,
    ) -> None:
        self._share = share
        # The replay's --now: events further ahead of it than the skew are not in its history.
        self._now = now or datetime.now(UTC)
        self._on_accept = on_accept
        self._run: list[tuple[int, int, int, CallResult]] = []
        self._spilled: list[str] = []
        self._directory: str | None = None
        self.count = 0
        try:
            self._read(files, rules, on_reject, chunk, on_read)
        except BaseException:
            self.close()
            raise

    def _read(
        self,
        files: Iterable[Path],
        rules: Rules,
        on_reject: Callable[[Rejection], None],
        chunk: int,
        on_read: Callable[[int], None] | None,
    ) -> None:
        index, shares = self._share
        read = 0
        for file_index, path in enumerate(files):
            for number, raw in iter_records(path):
                read += 1
                if on_read is not None and read % 10_000 == 0:
                    on_read(read)
                if shares > 1 and share_of(raw, shares) != index:
                    continue
                if isinstance(raw, UnreadableRow):  # a quote left open: no record to validate
                    detail = f"event: {raw.detail}"
                    on_reject(
                        Rejection(str(path), number, "invalid_event", detail, raw.text, None,
                                  file_index)
                    )  # fmt: skip
                    continue
                try:
                    event = accept(raw, rules, self._now)
                except Rejected as error:
                    on_reject(
                        Rejection(
                            str(path), number, error.reason, error.detail, raw_text(raw),
                            event_id_of(raw), file_index, isinstance(error, AheadOfClock),
                        )
                    )  # fmt: skip
                    continue
                if self._on_accept is not None:
                    self._on_accept(event)
                self._run.append((_sort_key(event), file_index, number, event))
                self.count += 1
                if len(self._run) >= chunk:
                    self._spill()

    def _spill(self) -> None:
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="recall-replay-")
        self._spilled.append(_spill(self._run, self._directory))

    def __iter__(self) -> Iterator[CallResult]:
        for _, event in self.positioned():
            yield event

    def positioned(self) -> Iterator[tuple[Position, CallResult]]:
        """The events in order, each with its position: (time key, file index, line)."""
        if not self._spilled:
            self._run.sort()
            for key, file_index, number, event in self._run:
                yield (key, file_index, number), event
            return
        if self._run:
            self._spill()
        while len(self._spilled) > MAX_OPEN_RUNS:  # merge in passes: keep file handles bounded
            group, self._spilled = self._spilled[:MAX_OPEN_RUNS], self._spilled[MAX_OPEN_RUNS:]
            self._spilled.append(self._merge_to_file(group))
        streams = [read_rows(path) for path in self._spilled]
        for row in heapq.merge(*streams):
            yield (row[0], row[1], row[2]), _event(row)

    def _merge_to_file(self, paths: list[str]) -> str:
        assert self._directory is not None
        handle, merged = tempfile.mkstemp(prefix="recall-replay-", suffix=".jsonl",
                                          dir=self._directory)  # fmt: skip
        with os.fdopen(handle, "wb") as out:
            streams = [read_rows(path) for path in paths]
            merged_rows = heapq.merge(*streams)
            out.writelines(
                orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in merged_rows
            )
        for path in paths:
            Path(path).unlink(missing_ok=True)
        return merged

    def close(self) -> None:
        self._run.clear()
        for path in self._spilled:
            Path(path).unlink(missing_ok=True)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> SortedEvents:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def sorted_events(
    files: Iterable[Path],
    rules: Rules,
    on_reject: Callable[[Rejection], None],
    *,
    chunk: int = CHUNK_EVENTS,
    on_read: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> SortedEvents:
    """Validate every record of ``files``; the result iterates them in event-time order.

    Rejected records go to ``on_reject`` as they are read; ties are broken by file, then line.
    ``now`` is the replay's end (default: the wall clock): events further ahead of it than
    ``RECALL_CLOCK_SKEW_S`` are rejected (``worker.pipeline.check_clock``).
    """
    return SortedEvents(files, rules, on_reject, chunk=chunk, on_read=on_read, now=now)


@dataclass
class Summary:
    """Running counts over a replay, kept in bounded memory."""

    events: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    recalls_by_sip_class: Counter[str] = field(default_factory=Counter)
    recalls_by_local_hour: Counter[int] = field(default_factory=Counter)
    delay_minutes: Counter[int] = field(default_factory=Counter)
    fired: int = 0
    dead_letters: int = 0
    #: Of the dead letters, events that lay after the replay's --now (beyond the clock skew).
    after_now: int = 0

    def add(self, event: CallResult, decision: Decision, zone: str) -> None:
        self.events += 1
        self.actions[decision.action] += 1
        self.reasons[decision.reason] += 1
        if decision.source is not None:
            self.sources[decision.source] += 1
        if decision.action != "recall" or decision.due_at is None:
            return
        self.recalls_by_sip_class[f"{event.sip_code // 100}xx"] += 1
        # Reporting only, no schedule arithmetic: the standard library's C code is much faster.
        delay = (decision.due_at.timestamp() - event.occurred_at.timestamp()) / 60
        minutes = int(delay) if delay < _DAY_MINUTES else int(delay // 60) * 60
        self.delay_minutes[minutes] += 1
        self.recalls_by_local_hour[decision.due_at.astimezone(timezone(zone)).hour] += 1

    def merge(self, other: Summary) -> None:
        """Add ``other``'s counts (another process's share of the phones) to these."""
        self.events += other.events
        self.actions.update(other.actions)
        self.reasons.update(other.reasons)
        self.sources.update(other.sources)
        self.recalls_by_sip_class.update(other.recalls_by_sip_class)
        self.recalls_by_local_hour.update(other.recalls_by_local_hour)
        self.delay_minutes.update(other.delay_minutes)
        self.fired += other.fired
        self.dead_letters += other.dead_letters
        self.after_now += other.after_now

    def delay_percentile(self, fraction: float) -> float | None:
        """The recall delay at ``fraction`` (0.5 = median), in seconds, to a minute's accuracy."""
        total = sum(self.delay_minutes.values())
        if not total:
            return None
        target = fraction * (total - 1)
        seen = 0
        for minutes in sorted(self.delay_minutes):
            seen += self.delay_minutes[minutes]
            if seen > target:
                return float(minutes * 60)
        return float(max(self.delay_minutes) * 60)

    def to_json(self) -> dict[str, Any]:
        median, p95 = self.delay_percentile(0.5), self.delay_percentile(0.95)
        return {
            "events": self.events,
            "actions": dict(self.actions.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "sources": dict(self.sources.most_common()),
            "recalls_by_sip_class": dict(sorted(self.recalls_by_sip_class.items())),
            "recall_delay_s": {"median": median, "p95": p95},
            "recalls_fired": self.fired,
            "dead_letters": self.dead_letters,
            "events_after_now": self.after_now,
        }


class Simulation:
    """The timeline in memory on a simulated clock: recalls fire as the clock passes them."""

    def __init__(self, rules: Rules, until: datetime | None = None) -> None:
        self.rules = rules
        # The end of the simulation: the clock never passes it, even for an event within the
        # clock skew after it, so that no recall fires after --now.
        self.until = until
        self.timeline = Timeline(rules, until=until)
        self.phones = self.timeline.phones
        # (due timestamp, recall_id, phone_id, due_at): floats compare far faster than datetimes.
        self.due: list[tuple[float, str, str, datetime]] = []
        self.summary = Summary()
        self.lookback = attempt_lookback(rules) or timedelta(days=1)
        self._taken = 0
        self._next_compaction = 50_000

    def advance(self, until: datetime) -> None:
        """Fire every recall due at or before ``until``, at its due time."""
        limit = until.timestamp()
        while self.due and self.due[0][0] <= limit:
            _, recall_id, phone_id, due_at = heapq.heappop(self.due)
            state = self.phones[phone_id]
            pending = state.pending
            # Not superseded since, and not moved later by a late call.
            if state.pending_recall_id == recall_id and pending and pending.due_at == due_at:
                state.fire(due_at)
                self.summary.fired += 1

    def take(self, event: CallResult) -> Decision:
        end = self.until
        self.advance(event.occurred_at if end is None or event.occurred_at <= end else end)
        step = self.timeline.take(event, None)
        transition = step.transition
        if transition.rescheduled is not None:
            recall_id, due_at = transition.rescheduled
            heapq.heappush(self.due, (due_at.timestamp(), recall_id, event.phone_id, due_at))
        if transition.scheduled is not None:
            scheduled = transition.scheduled
            heapq.heappush(
                self.due,
                (
                    scheduled.due_at.timestamp(),
                    scheduled.recall_id,
                    scheduled.phone_id,
                    scheduled.due_at,
                ),
            )
        decision = step.decision
        self.summary.add(event, decision, phone_zone(self.rules, event))
        self._taken += 1
        # Compaction visits every phone: run it once per phone-count of events (at least 50,000)
        # so that its cost per event stays constant however many phones there are.
        if self._taken >= self._next_compaction:
            self._compact(event.occurred_at)
            self._next_compaction = self._taken + max(50_000, len(self.phones))
        return decision

    def _compact(self, now: datetime) -> None:
        # Keep memory proportional to phones: forget what no rule can look at any more, and drop
        # heap entries of superseded recalls.
        self.timeline.forget_before(now - self.lookback)
        if len(self.due) > 2 * len(self.phones):
            self.due = [
                item for item in self.due if self.phones[item[2]].pending_recall_id == item[1]
            ]
            heapq.heapify(self.due)


class JsonLinesWriter:
    """Decisions (or rejections) to a JSON Lines file; nothing when no path is given."""

    def __init__(self, stack: ExitStack, path: Path | None) -> None:
        self.handle: IO[bytes] | None = stack.enter_context(path.open("wb")) if path else None

    def write(self, data: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(orjson.dumps(data) + b"\n")


@dataclass
class Difference:
    """One event decided differently under the two rule sets (what-if)."""

    event_id: str
    phone_id: str
    base: dict[str, Any]
    other: dict[str, Any]
    #: Where the event stands in the replay (orders samples from several processes).
    position: Position = (0, 0, 0)

    def to_json(self) -> dict[str, Any]:
        keys = ("action", "due_at", "reason", "rule", "adjustments")
        return {
            "event_id": self.event_id,
            "phone_id": self.phone_id,
            "rules": {key: self.base[key] for key in keys},
            "compare": {key: self.other[key] for key in keys},
        }


@dataclass
class Comparison:
    """The second rule set's run beside the first, and how their decisions differ."""

    simulation: Simulation
    differing: int = 0
    pending: int = 0  # recalls still pending when the simulation ended
    sample: list[Difference] = field(default_factory=list)
    sample_size: int = 20

    def add(self, event: CallResult, base: Decision, position: Position = (0, 0, 0)) -> None:
        other = self.simulation.take(event)
        first, second = base.to_json(), other.to_json()
        if all(first[key] == second[key] for key in ("action", "due_at", "reason", "rule")):
            return
        self.differing += 1
        if len(self.sample) < self.sample_size:
            sample = Difference(event.event_id, event.phone_id, first, second, position)
            self.sample.append(sample)


def finish(simulation: Simulation, until: datetime) -> int:
    """End of the simulation: fire what is due by ``until``; return the recalls still pending."""
    simulation.advance(until)
    return sum(1 for state in simulation.phones.values() if state.pending_recall_id is not None)


OnDecision = Callable[[Position, Decision], None]


def simulate(
    events: Iterable[tuple[Position, CallResult]],
    rules: Rules,
    compare_rules: Rules | None,
    until: datetime,
    *,
    on_decision: OnDecision | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Summary, int, Comparison | None]:
    """Simulate ``events`` (in replay order) to ``until``, under ``compare_rules`` too if given.

    Returns the summary, the recalls still pending at the end, and the what-if beside it.
    """
    simulation = Simulation(rules, until)
    comparison = Comparison(Simulation(compare_rules, until)) if compare_rules is not None else None
    for position, event in events:
        decision = simulation.take(event)
        if on_decision is not None:
            on_decision(position, decision)
        if comparison is not None:
            comparison.add(event, decision, position)
        if on_progress is not None:
            on_progress(1)
    if comparison is not None:
        comparison.pending = finish(comparison.simulation, until)
    return simulation.summary, finish(simulation, until), comparison


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
    from worker.db import session_scope  # dry runs never load it

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


# An applied replay says it is alive this often (a row in replay_runs); one silent for
# RUNNING_WITHIN_S is taken as gone (killed, its machine lost), and its held recalls as orphaned.
HEARTBEAT_S = 10.0
RUNNING_WITHIN_S = 60.0


@contextmanager
def running_replay() -> Iterator[None]:
    """Record an applied replay as running (host, pid, heartbeat) in the database while it runs.

    Its recalls are ``held`` until it ends; ``recall status`` tells held recalls of a running
    replay from those a replay left behind (interrupted), which only running it again releases.
    The record is in the database so that it works with several machines on one PostgreSQL.
    """
    from sqlalchemy import delete, update

    from worker.db import session_scope
    from worker.models import ReplayRun

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
