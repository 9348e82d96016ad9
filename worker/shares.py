"""Dry replays split by phone across processes (``recall replay --jobs N``).

Phones never change each other: each process reads every file but keeps only the records of its
share of the phones (a stable hash of ``phone_id``), then validates, sorts, decides and simulates
them exactly as a single process would. Only the event id crosses phones (a copy sent for another
phone is a duplicate), so each process keeps a sorted list of hashes of the event ids it took; if
two processes took the same id, the split is not exact and the caller replays in one process.
Decisions and rejections are merged back into the single process's order.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from worker.replay import (
    CHUNK_EVENTS,
    Comparison,
    Difference,
    Position,
    Rejection,
    Simulation,
    SortedEvents,
    Summary,
    finish,
)
from worker.rules import Rules
from worker.sources import SourceError

__all__ = ["Shared", "default_shares", "replay_in_shares"]

# Event-id hashes read back at a time when checking that no id crossed processes.
_ID_BLOCK = 65_536


@dataclass
class _Share:
    """What one process sends back (its files stay in the shared temporary directory)."""

    summary: Summary
    pending: int
    compare_summary: Summary | None = None
    compare_pending: int = 0
    differing: int = 0
    sample: list[tuple[Position, Difference]] = field(default_factory=list)


@dataclass
class Shared:
    """The merged result of every share, shaped as a single-process dry run's."""

    summary: Summary
    pending: int
    comparison: Comparison | None


def _write_ids(ids: list[int], path: str) -> None:
    with open(path, "wb") as out:
        array("q", sorted(set(ids))).tofile(out)
    ids.clear()


def _read_ids(path: str) -> Iterator[int]:
    with open(path, "rb") as handle:
        while block := handle.read(_ID_BLOCK * 8):
            yield from array("q", block)


def _distinct(values: Iterator[int]) -> Iterator[int]:
    last = None
    for value in values:
        if value != last:
            yield value
            last = value


def _run_share(
    index: int,
    shares: int,
    files: Sequence[Path],
    rules: Rules,
    compare_rules: Rules | None,
    until: datetime,
    chunk: int,
    directory: str,
    with_decisions: bool,
    counter: Any,
) -> _Share:
    base = os.path.join(directory, str(index))
    simulation = Simulation(rules)
    comparison = Comparison(Simulation(compare_rules)) if compare_rules is not None else None
    sample: list[tuple[Position, Difference]] = []
    ids: list[int] = []
    id_files: list[str] = []
    with (
        open(f"{base}.rejects", "wb") as rejects,
        open(f"{base}.decisions", "wb") as decisions,
    ):

        def on_reject(rejection: Rejection) -> None:
            row = (rejection.file_index, rejection.line, rejection.to_json())
            rejects.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

        with SortedEvents(files, rules, on_reject, chunk=chunk, share=(index, shares)) as events:
            done = 0
            for position, event in events.positioned():
                decision = simulation.take(event)
                if with_decisions:
                    row = (*position, decision.to_json())
                    decisions.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                if comparison is not None:
                    before = len(comparison.sample)
                    comparison.add(event, decision)
                    if len(comparison.sample) > before:
                        sample.append((position, comparison.sample[-1]))
                # Python's string hash is the same in every process forked from one parent.
                ids.append(hash(event.event_id))
                if len(ids) >= chunk:
                    id_files.append(f"{base}.ids{len(id_files)}")
                    _write_ids(ids, id_files[-1])
                done += 1
                if done % 1000 == 0:
                    counter.value = done
            counter.value = done
    id_files.append(f"{base}.ids{len(id_files)}")
    _write_ids(ids, id_files[-1])
    # One sorted, distinct list of this share's event-id hashes.
    with open(f"{base}.ids", "wb") as out:
        merged = _distinct(heapq.merge(*(_read_ids(path) for path in id_files)))
        while block := array("q", itertools.islice(merged, _ID_BLOCK)):
            block.tofile(out)
    share = _Share(simulation.summary, finish(simulation, until))
    if comparison is not None:
        share.compare_summary = comparison.simulation.summary
        share.compare_pending = finish(comparison.simulation, until)
        share.differing = comparison.differing
        share.sample = sample
    return share


def _child(connection: Any, *args: Any) -> None:
    try:
        connection.send(_run_share(*args))
    except SourceError as error:
        connection.send(error)
    except BaseException as error:  # the parent reports it; a traceback would be lost
        connection.send(RuntimeError(f"replay process failed: {type(error).__name__}: {error}"))
    finally:
        connection.close()


def _ids_cross(directory: str, shares: int) -> bool:
    """Whether any event id was taken by two processes (each list is sorted and distinct)."""
    paths = [os.path.join(directory, f"{index}.ids") for index in range(shares)]
    last = None
    for value in heapq.merge(*(_read_ids(path) for path in paths)):
        if value == last:
            return True
        last = value
    return False


def replay_in_shares(
    files: Sequence[Path],
    rules: Rules,
    compare_rules: Rules | None,
    until: datetime,
    shares: int,
    *,
    on_reject: Callable[[Rejection], None],
    on_decision: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK_EVENTS,
) -> Shared | None:
    """A dry run of ``files`` in ``shares`` processes; None when it must run in one instead.

    Rejections and decisions are handed to the callbacks in the single process's order, and only
    once every process has finished and the split is known to be exact.
    """
    context = multiprocessing.get_context("fork")
    chunk = max(1, chunk // shares)  # the processes together hold one chunk's worth of events
    directory = tempfile.mkdtemp(prefix="recall-replay-")
    try:
        counters = [context.Value("q", 0, lock=False) for _ in range(shares)]
        pipes, processes = [], []
        for index in range(shares):
            receive, send = context.Pipe(duplex=False)
            args = (index, shares, files, rules, compare_rules, until, chunk, directory,
                    on_decision is not None)  # fmt: skip
            process = context.Process(target=_child, args=(send, *args, counters[index]))
            process.start()
            send.close()
            pipes.append(receive)
            processes.append(process)
        results: list[Any] = [None] * shares
        waiting = set(range(shares))
        while waiting:
            for index in list(waiting):
                if pipes[index].poll(0.2):
                    results[index] = pipes[index].recv()
                    waiting.discard(index)
                elif not processes[index].is_alive():
                    code = processes[index].exitcode
                    results[index] = RuntimeError(f"replay process died (exit code {code})")
                    waiting.discard(index)
            if on_progress is not None:
                on_progress(sum(counter.value for counter in counters))
        for process in processes:
            process.join()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if _ids_cross(directory, shares):
            return None
        return _merge(results, directory, rules, compare_rules, on_reject, on_decision)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _rows(path: str) -> Iterator[list[Any]]:
    with open(path, "rb") as handle:
        yield from map(orjson.loads, handle)


def _merge(
    results: list[_Share],
    directory: str,
    rules: Rules,
    compare_rules: Rules | None,
    on_reject: Callable[[Rejection], None],
    on_decision: Callable[[dict[str, Any]], None] | None,
) -> Shared:
    shares = range(len(results))
    for _, _, data in heapq.merge(
        *(_rows(os.path.join(directory, f"{index}.rejects")) for index in shares),
        key=lambda row: (row[0], row[1]),
    ):
        on_reject(Rejection(**data))
    if on_decision is not None:
        for row in heapq.merge(
            *(_rows(os.path.join(directory, f"{index}.decisions")) for index in shares),
            key=lambda row: (row[0], row[1], row[2]),
        ):
            on_decision(row[3])
    summary = Summary()
    for share in results:
        summary.merge(share.summary)
    comparison = None
    if compare_rules is not None:
        comparison = Comparison(Simulation(compare_rules))
        for share in results:
            assert share.compare_summary is not None
            comparison.simulation.summary.merge(share.compare_summary)
            comparison.pending += share.compare_pending
            comparison.differing += share.differing
        ordered = heapq.merge(*(share.sample for share in results), key=lambda item: item[0])
        comparison.sample = [difference for _, difference in ordered][: comparison.sample_size]
    return Shared(summary, sum(share.pending for share in results), comparison)


def default_shares() -> int:
    """One process per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)))
