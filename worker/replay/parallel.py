"""Replays split by lead across processes (``recall replay --jobs N``).

Leads never change each other: the parent reads every file once and deals each record to the
process of its share of the leads (a stable hash of ``lead_id``, ``worker.replay.reader``), which
decodes, validates and sorts them, and decides them exactly as a single process would, in memory
(dry) or into the database (applied). Only the event id crosses leads (a copy sent for another
phone is a duplicate), so once every process has taken its share, each hands over a sorted list
of hashes of the event ids it took; if two took the same id, or an event reached the process of
another share (a lead id the reader misread), the split would not be exact: nothing is decided,
and the caller replays in one process. Decisions and rejections are merged back into the single
process's order: decisions as the JSON lines the processes wrote, copied in the order of their
positions, never decoded again.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import shutil
import struct
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from worker import ending
from worker.domain.engine import Decision
from worker.domain.rules import Rules
from worker.replay.reader import Dealer, ShareGone, received
from worker.replay.simulation import (
    LINES_BUFFER,
    Comparison,
    Difference,
    Simulation,
    Summary,
    simulate,
)
from worker.replay.sorting import CHUNK_EVENTS, Position, Rejection, SortedEvents, read_rows

__all__ = ["ShareFailed", "Shared", "default_shares", "replay_in_shares"]

# Event-id hashes read back at a time when checking that no id crossed processes.
_ID_BLOCK = 65_536
_GO, _STOP = "go", "stop"
# How long to wait for the last word of a process that stopped taking its records.
_LAST_WORD_S = 5
# A decision's position (Position) and the share that decided it, as each process writes it
# beside its decisions' JSON lines: the parent merges the positions and copies the lines as
# they are, without decoding them.
_POSITION = struct.Struct("<qIIH")


class ShareFailed(RuntimeError):
    """A replay process failed or died; the message says how, in one line."""


@dataclass
class Shared:
    """The processes' results merged, shaped as a single-process replay's."""

    summary: Summary
    pending: int = 0  # recalls still pending at the end (dry runs)
    comparison: Comparison | None = None


@dataclass(frozen=True)
class _Job:
    """What every process is asked to do (inherited through fork, never pickled)."""

    files: Sequence[Path]
    rules: Rules
    compare_rules: Rules | None
    until: datetime
    skew_s: int
    applied: bool
    with_decisions: bool
    chunk: int
    directory: str


@dataclass
class _Part:
    """What one process sends back: counts only (its files stay in the shared directory)."""

    summary: Summary
    pending: int = 0
    compare_summary: Summary | None = None
    compare_pending: int = 0
    differing: int = 0
    sample: list[Difference] = field(default_factory=list)


class _IdHashes:
    """Hashes of the event ids a process took, kept as one sorted, distinct file on disk."""

    def __init__(self, path: str, chunk: int) -> None:
        self.path, self.chunk = path, chunk
        self._pending: list[int] = []
        self._runs: list[str] = []

    def add(self, event_id: str) -> None:
        # Python's string hash is the same in every process forked from one parent.
        self._pending.append(hash(event_id))
        if len(self._pending) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        self._runs.append(f"{self.path}.{len(self._runs)}")
        with open(self._runs[-1], "wb") as out:
            array("q", sorted(set(self._pending))).tofile(out)
        self._pending.clear()

    def finish(self) -> None:
        self._spill()
        merged = (value for value, _ in itertools.groupby(
            heapq.merge(*(_read_ids(path) for path in self._runs))
        ))  # fmt: skip
        with open(self.path, "wb") as out:
            while block := array("q", itertools.islice(merged, _ID_BLOCK)):
                block.tofile(out)
        for path in self._runs:
            os.unlink(path)


def _read_ids(path: str) -> Iterator[int]:
    with open(path, "rb") as handle:
        while block := handle.read(_ID_BLOCK * 8):
            yield from array("q", block)


def _ids_cross(paths: Sequence[str]) -> bool:
    """Whether any hash is in two of the files (each sorted and distinct)."""
    merged = heapq.merge(*(_read_ids(path) for path in paths))
    return any(first == second for first, second in itertools.pairwise(merged))


def _run_share(
    job: _Job, index: int, shares: int, done: Any, parent: Any, inlet: int
) -> _Part | None:
    base = os.path.join(job.directory, str(index))
    ids = _IdHashes(f"{base}.ids", job.chunk)
    with (
        open(f"{base}.rejects", "wb") as rejects,
        open(f"{base}.decisions", "wb", buffering=LINES_BUFFER) as decisions,
        open(f"{base}.positions", "wb") as positions,
    ):

        def on_reject(rejection: Rejection) -> None:
            row = (rejection.file_index, rejection.line, rejection.to_json(), rejection.after_now)
            rejects.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

        def on_decision(position: Position, decision: Decision) -> None:
            positions.write(_POSITION.pack(*position, index))
            # What JsonLinesWriter writes.
            decisions.write(decision.json_line())

        def on_progress(count: int) -> None:
            done.value += count

        with SortedEvents(
            job.files, job.rules, on_reject, chunk=job.chunk, records=received(inlet),
            share=(index, shares), on_accept=lambda event: ids.add(event.event_id),
            now=job.until, skew_s=job.skew_s,
        ) as events:  # fmt: skip
            ids.finish()
            parent.send((ids.path, events.count, events.strays))
            if parent.recv() != _GO:
                return None
            keep = on_decision if job.with_decisions else None
            if job.applied:
                # Dry runs never load SQLAlchemy.
                from worker.replay.apply import apply
                from worker.store.database import get_engine

                get_engine().dispose(close=False)  # the parent's pooled connections stay its own
                summary = apply(
                    events.positioned(), job.rules, job.until,
                    on_decision=keep, on_progress=on_progress,
                )  # fmt: skip
                return _Part(summary)
            summary, pending, comparison = simulate(
                events.positioned(), job.rules, job.compare_rules, job.until,
                on_decision=keep, on_progress=on_progress,
            )  # fmt: skip
    part = _Part(summary, pending)
    if comparison is not None:  # its counts only: the phones (and the rules) stay here
        part.compare_summary = comparison.simulation.summary
        part.compare_pending, part.differing = comparison.pending, comparison.differing
        part.sample = comparison.sample
    return part


def _child(
    job: _Job, index: int, shares: int, done: Any, parent: Any, inlet: int, writers: list[int]
) -> None:
    # The reader's ends of the pipes made so far, this one's too: closed here, so that a pipe
    # breaks when its process goes, and its process sees the end if the reader goes.
    for fd in writers:
        os.close(fd)
    # Spilled runs too go under the shared directory, which the parent removes however this ends.
    tempfile.tempdir = job.directory
    # A forked process ends with os._exit (multiprocessing's fork start method): what it decided
    # with need not be freed before it hands over its part.
    ending.ends_at_once()
    ending.start_holding()
    try:
        parent.send(_run_share(job, index, shares, done, parent, inlet))
    except BaseException as error:  # the parent reports it; a traceback would be lost
        parent.send(ShareFailed(f"replay process failed: {type(error).__name__}: {error}"))
    finally:
        parent.close()


def replay_in_shares(
    files: Sequence[Path],
    rules: Rules,
    compare_rules: Rules | None,
    until: datetime,
    shares: int,
    *,
    skew_s: int,
    applied: bool = False,
    on_reject: Callable[[Rejection], None],
    on_decision: Callable[[bytes], None] | None = None,
    on_read: Callable[[int], None] | None = None,
    on_replay: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK_EVENTS,
) -> Shared | None:
    """Replay ``files`` in ``shares`` processes; None when it must run in one process instead.

    Rejections and decisions are handed to the callbacks in the single process's order, once
    every process has finished; a decision as its JSON line (``JsonLinesWriter.write_line``).
    Applied, the processes write to the database as they go and the caller finishes the replay
    (fires or releases the held recalls, files the dead letters). Progress as it goes:
    ``on_read`` gets the records read, ``on_replay`` the events to replay once they are known,
    then ``on_progress`` those done so far. A file that cannot be read raises ``SourceError``;
    a process that fails, ``ShareFailed``.
    """
    context = multiprocessing.get_context("fork")
    directory = tempfile.mkdtemp(prefix="recall-replay-")
    # The processes together hold one chunk's worth of events in memory, as one process would.
    job = _Job(
        files, rules, compare_rules, until, skew_s, applied, on_decision is not None,
        max(1, chunk // shares), directory,
    )  # fmt: skip
    # Per process: events replayed.
    counters = [context.Value("q", 0, lock=False) for _ in range(shares)]
    pipes, processes, writers = [], [], []
    dealer = None
    try:
        for index in range(shares):
            mine, theirs = context.Pipe()
            inlet, writer = os.pipe()  # the records, from the reader (here)
            writers.append(writer)
            process = context.Process(
                target=_child,
                args=(job, index, shares, counters[index], theirs, inlet, writers[:]),
            )
            process.start()
            theirs.close()
            os.close(inlet)
            pipes.append(mine)
            processes.append(process)

        def died(index: int) -> ShareFailed:
            processes[index].join(timeout=_LAST_WORD_S)
            code = processes[index].exitcode
            return ShareFailed(f"replay process died (exit code {code})")

        def gather(report: Callable[[], None]) -> list[Any]:
            results: list[Any] = [None] * shares
            waiting = set(range(shares))

            while waiting:
                for index in list(waiting):
                    if pipes[index].poll(0.2):
                        try:
                            results[index] = pipes[index].recv()
                        except EOFError:  # it exited without a word
                            results[index] = died(index)
                        waiting.discard(index)
                    elif not processes[index].is_alive():
                        results[index] = died(index)
                        waiting.discard(index)
                report()
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

        def last_word(index: int) -> BaseException:
            """Why a process stopped taking its records: what it said, or how it died."""
            try:
                if pipes[index].poll(_LAST_WORD_S):
                    said = pipes[index].recv()
                    if isinstance(said, BaseException):
                        return said
            except EOFError:
                pass
            return died(index)

        def replaying() -> None:
            if on_progress is not None:
                on_progress(sum(done.value for done in counters))

        dealer = Dealer(writers, lambda index: processes[index].is_alive())
        try:
            dealer.deal(files, on_read)
        except ShareGone as gone:
            raise last_word(gone.index) from None
        read = gather(lambda: None)
        exact = not any(strays for _, _, strays in read) and not _ids_cross(
            [path for path, _, _ in read]
        )
        for pipe in pipes:
            pipe.send(_GO if exact else _STOP)
        if exact and on_replay is not None:
            on_replay(sum(count for _, count, _ in read))
        results = gather(replaying)
        if not exact:
            return None
        return _merge(results, directory, compare_rules, on_reject, on_decision)
    finally:
        if dealer is not None:
            dealer.close()
        else:
            for writer in writers:
                os.close(writer)
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        shutil.rmtree(directory, ignore_errors=True)


def _merge(
    results: list[_Part],
    directory: str,
    compare_rules: Rules | None,
    on_reject: Callable[[Rejection], None],
    on_decision: Callable[[bytes], None] | None,
) -> Shared:
    paths = [os.path.join(directory, str(index)) for index in range(len(results))]
    by_line = heapq.merge(*(read_rows(f"{path}.rejects") for path in paths), key=lambda r: r[:2])
    for _, _, data, after_now in by_line:
        on_reject(Rejection(**data, after_now=after_now))
    if on_decision is not None:
        with ExitStack() as stack:
            lines = [
                stack.enter_context(
                    open(f"{path}.decisions", "rb", buffering=LINES_BUFFER)
                ).readline
                for path in paths
            ]
            # Positions are distinct: the share (last) never decides the order.
            for position in heapq.merge(*(_positions(f"{path}.positions") for path in paths)):
                on_decision(lines[position[3]]())
    merged = Shared(Summary(), sum(part.pending for part in results))
    for part in results:
        merged.summary.merge(part.summary)
    if compare_rules is not None:
        comparison = merged.comparison = Comparison(Simulation(compare_rules))
        for part in results:
            assert part.compare_summary is not None
            comparison.simulation.summary.merge(part.compare_summary)
            comparison.pending += part.compare_pending
            comparison.differing += part.differing
        samples = heapq.merge(*(part.sample for part in results), key=lambda d: d.position)
        comparison.sample = list(itertools.islice(samples, comparison.sample_size))
    return merged


def _positions(path: str) -> Iterator[tuple[int, int, int, int]]:
    with open(path, "rb") as handle:
        while block := handle.read(_POSITION.size * _ID_BLOCK):
            yield from _POSITION.iter_unpack(block)


def default_shares() -> int:
    """One process per core this process may use."""
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
