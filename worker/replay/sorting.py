"""Replay's input: records read, validated and fed in event-time order, sorted on disk if large.

Input is read and validated as it streams, sorted on disk when it is larger than one chunk (an
external merge sort), and iterated in ``occurred_at`` order (ties by file, then line). Memory
grows with one chunk, not with the input. The records may also come from elsewhere, already
read: a replay process is handed its share of them by the reader (``worker.replay.reader``).
"""

from __future__ import annotations

import gc
import heapq
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import orjson

from worker.domain.events import NO_EXTRA, CallResult
from worker.domain.intake import (
    AheadOfClock,
    Rejected,
    accept,
    accept_line,
    event_id_of,
    raw_text,
)
from worker.domain.rules import Rules
from worker.domain.zones import epoch_us
from worker.replay.sources import DecodedText, UnreadableRow, iter_records, json_record

__all__ = [
    "CHUNK_EVENTS",
    "MAX_OPEN_RUNS",
    "Position",
    "Record",
    "Rejection",
    "SortedEvents",
    "fewer_collections",
    "read_records",
    "read_rows",
    "read_run",
    "share_of",
    "share_of_lead",
    "sorted_events",
]


# Runs merged at once: one open file each, well under the usual limit of 1,024.
MAX_OPEN_RUNS = 64


# Events sorted in memory before a run is spilled to disk: about 120 MB of Python objects.
CHUNK_EVENTS = 100_000
# Bytes buffered per spilled run written or read: a line is ~300 bytes.
_RUN_BUFFER = 1 << 20


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


#: Where an event stands in the replay order: (its time in microseconds since the epoch, exactly
#: as ``worker.domain.zones.epoch_us`` gives it, file index, line).
Position = tuple[int, int, int]

#: A record where it was read: (file index, line number, the record as ``iter_records`` gives
#: it with ``undecoded``): a ``str`` is a JSON line's text, to decode; anything else is decoded
#: already (a CSV row in an event's JSON form, a ``DecodedText``, what the replay's reader
#: decoded to route it) or an ``UnreadableRow``.
Record = tuple[int, int, object]


def read_records(files: Iterable[Path]) -> Iterator[Record]:
    """Every record of ``files``, file after file, with where it was (JSON lines undecoded)."""
    for file_index, path in enumerate(files):
        for number, raw in iter_records(path, undecoded=True):
            yield file_index, number, raw


def share_of(raw: object, shares: int) -> int:
    """Which of ``shares`` processes replays a record: a stable hash of its lead id.

    A lead's phones stay together (rules may count every call to a lead). A record with no
    readable lead id goes to the first, which rejects it.
    """
    lead_id = raw.get("lead_id") if isinstance(raw, dict) else None
    if not isinstance(lead_id, str):
        return 0
    return share_of_lead(lead_id, shares)


def share_of_lead(lead_id: str, shares: int) -> int:
    """Which of ``shares`` processes replays the lead ``lead_id`` (see ``share_of``)."""
    return zlib.crc32(lead_id.encode("utf-8", "surrogatepass")) % shares


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


#: A sorted item: (time key, file index, line, event); the first three are unique, so items sort
#: and merge as tuples without ever comparing two events.
Item = tuple[int, int, int, CallResult]


def _plain(value: object) -> object:
    # msgspec's hook for what it cannot write itself: an event's extra fields, a read-only dict.
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise NotImplementedError(f"cannot spill a {type(value).__name__}")


# A run is spilled as JSON lines written by msgspec straight from the items, [key, file, line,
# {event}] (C code: a sixth of the cost of building a row of text fields and encoding it), and
# read back into the same items, the events' datetimes included, without validating again.
_encode_items = msgspec.json.Encoder(enc_hook=_plain).encode_lines
_decode_item = msgspec.json.Decoder(Item).decode
# msgspec writes a UTC offset to the minute; Python also reads offsets with seconds (ISO 8601 has
# none), so a run holding one is spilled as rows of text fields instead (_row), read by _event.
_ROWS_SUFFIX = ".rows.jsonl"


def _to_the_minute(offset: timedelta | None) -> bool:
    return offset is None or not (offset.seconds % 60 or offset.microseconds)


def _moment_to_the_minute(moment: datetime | None) -> bool:
    return _to_the_minute(moment.utcoffset() if moment is not None else None)


def _row(key: int, file_index: int, number: int, event: CallResult) -> tuple[Any, ...]:
    # A spilled event as text fields: its sort position, then its fields, already validated.
    return (
        key, file_index, number, event.event_id, event.plan_id, event.lead_id, event.phone_id,
        event.sip_code, event.occurred_at.isoformat(), event.outcome_code, event.timezone,
        event.retry_after_s, event.call_id, dict(event.extra) or None,
        event.callback_at.isoformat() if event.callback_at is not None else None,
        event.callback_agent,
    )  # fmt: skip


def _event(row: list[Any]) -> CallResult:
    # The event back from its row of text fields, without validating again.
    extra, callback_at = row[13], row[14]
    return CallResult(
        row[3], row[4], row[5], row[6], row[7], datetime.fromisoformat(row[8]),
        row[9], row[10], row[11], row[12],
        datetime.fromisoformat(callback_at) if callback_at is not None else None, row[15],
        MappingProxyType(extra) if extra else NO_EXTRA,
    )  # fmt: skip


def _write_run(items: Iterable[Item], directory: str, as_rows: bool) -> str:
    handle, path = tempfile.mkstemp(
        prefix="recall-replay-", suffix=_ROWS_SUFFIX if as_rows else ".jsonl", dir=directory
    )
    with os.fdopen(handle, "wb", buffering=_RUN_BUFFER) as out:
        if as_rows:
            out.writelines(orjson.dumps(_row(*item), option=orjson.OPT_APPEND_NEWLINE)
                           for item in items)  # fmt: skip
        else:
            # A list at a time: encode_lines wants a sequence, and a whole run is a chunk.
            batch: list[Item] = []
            for item in items:
                batch.append(item)
                if len(batch) == 10_000:
                    out.write(_encode_items(batch))
                    batch.clear()
            out.write(_encode_items(batch))
    return path


def _spill(run: list[Item], directory: str) -> str:
    # (key, file, line) is unique, so tuples sort by it without a key function, at C speed.
    run.sort()
    # Events read from text carry fixed offsets (datetime.timezone), few of them: each asked once.
    zones = {item[3].occurred_at.tzinfo for item in run}
    zones.update(item[3].callback_at.tzinfo for item in run if item[3].callback_at is not None)
    if all(type(zone) is timezone for zone in zones):
        as_rows = not all(_to_the_minute(zone.utcoffset(None)) for zone in zones)  # type: ignore[union-attr]
    else:
        as_rows = not all(
            _moment_to_the_minute(item[3].occurred_at)
            and _moment_to_the_minute(item[3].callback_at)
            for item in run
        )
    path = _write_run(run, directory, as_rows)
    run.clear()
    return path


def _drained(items: list[Item]) -> Iterator[Item]:
    # A list sorted in reverse, from its end: each item is let go as it is taken.
    while items:
        yield items.pop()


def read_run(path: str) -> Iterator[Item]:
    """The items of a spilled run, in its order."""
    with open(path, "rb", buffering=_RUN_BUFFER) as handle:
        if path.endswith(_ROWS_SUFFIX):
            for row in map(orjson.loads, handle):
                yield row[0], row[1], row[2], _event(row)
            return
        for item in map(_decode_item, handle):
            event = item[3]
            if event.extra is not NO_EXTRA:  # read back as a dict: read-only again
                extra = MappingProxyType(event.extra) if event.extra else NO_EXTRA
                item = item[0], item[1], item[2], msgspec.structs.replace(event, extra=extra)
            yield item


def read_rows(path: str) -> Iterator[list[Any]]:
    """The rows of a file of JSON lines (a spilled run, a process's output), one list each."""
    with open(path, "rb") as handle:
        yield from map(orjson.loads, handle)


class SortedEvents:
    """Validated events of some files, in event-time order, sorted on disk when large.

    Reading happens when it is made; iterate it once. Use it as a context manager (or call
    ``close``): spilled runs are removed when it closes, whether or not it was read through.

    ``records``, when given, are the records of ``files`` read elsewhere (``files`` then only
    name them in rejections). ``share`` (index, shares) says they are that share of the records
    (``share_of``): ``strays`` counts the events accepted that belong to another share.
    """

    def __init__(
        self,
        files: Sequence[Path],
        rules: Rules,
        on_reject: Callable[[Rejection], None],
        *,
        chunk: int = CHUNK_EVENTS,
        on_read: Callable[[int], None] | None = None,  # records read: every 10,000, and at the end
        records: Iterable[Record] | None = None,
        share: tuple[int, int] = (0, 1),
        on_accept: Callable[[CallResult], None] | None = None,
        now: datetime,
        skew_s: int,
    ) -> None:
        self._share = share
        # The replay's --now: events further ahead of it than the skew are not in its history.
        self._now, self._skew_s = now, skew_s
        self._on_accept = on_accept
        self._run: list[Item] = []
        self._spilled: list[str] = []
        self._directory: str | None = None
        self.count = 0
        self.strays = 0
        try:
            names = [str(path) for path in files]
            if records is None:
                records = read_records(files)
            self._read(records, names, rules, on_reject, chunk, on_read)
        except BaseException:
            self.close()
            raise

    def _read(
        self,
        records: Iterable[Record],
        names: Sequence[str],
        rules: Rules,
        on_reject: Callable[[Rejection], None],
        chunk: int,
        on_read: Callable[[int], None] | None,
    ) -> None:
        index, shares = self._share
        now, skew_s, on_accept, run = self._now, self._skew_s, self._on_accept, self._run
        read = 0
        for file_index, number, raw in records:
            read += 1
            if on_read is not None and read % 10_000 == 0:
                on_read(read)
            if type(raw) is str:  # a JSON line's text
                event = accept_line(raw, rules, now, skew_s)
                if event is not None:  # a plainly valid event, nearly every line
                    if shares > 1 and share_of_lead(event.lead_id, shares) != index:
                        self.strays += 1
                    if on_accept is not None:
                        on_accept(event)
                    run.append((epoch_us(event.occurred_at), file_index, number, event))
                    self.count += 1
                    if len(run) >= chunk:
                        self._spill()
                    continue
                # Anything else is decoded, and accepted or refused with its reason, below.
                raw = json_record(raw)
            elif type(raw) is DecodedText:  # a JSON string, decoded by the reader
                raw = str(raw)
            if isinstance(raw, UnreadableRow):  # a quote left open: no record to validate
                detail = f"event: {raw.detail}"
                on_reject(
                    Rejection(names[file_index], number, "invalid_event", detail, raw.text, None,
                              file_index)
                )  # fmt: skip
                continue
            try:
                event = accept(raw, rules, now, skew_s)
            except Rejected as error:
                on_reject(
                    Rejection(
                        names[file_index], number, error.reason, error.detail, raw_text(raw),
                        event_id_of(raw), file_index, isinstance(error, AheadOfClock),
                    )
                )  # fmt: skip
                continue
            # A rejection is the same in any process; an event must be in its lead's.
            if shares > 1 and share_of(raw, shares) != index:
                self.strays += 1
            if on_accept is not None:
                on_accept(event)
            run.append((epoch_us(event.occurred_at), file_index, number, event))
            self.count += 1
            if len(run) >= chunk:
                self._spill()
        if on_read is not None:
            on_read(read)

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
        # The events read after the last spill are merged from memory, not written and read
        # back: taken from the end of the reversed run as the merge reaches them, so that they
        # are freed as the replay goes.
        last = self._run
        last.sort(reverse=True)
        while len(self._spilled) > MAX_OPEN_RUNS:  # merge in passes: keep file handles bounded
            group, self._spilled = self._spilled[:MAX_OPEN_RUNS], self._spilled[MAX_OPEN_RUNS:]
            self._spilled.append(self._merge_to_file(group))
        runs = [*map(read_run, self._spilled), _drained(last)]
        for key, file_index, number, event in heapq.merge(*runs):
            yield (key, file_index, number), event

    def _merge_to_file(self, paths: list[str]) -> str:
        assert self._directory is not None
        # Rows of text fields if any run holds them (an offset msgspec cannot write).
        as_rows = any(path.endswith(_ROWS_SUFFIX) for path in paths)
        merged = _write_run(heapq.merge(*map(read_run, paths)), self._directory, as_rows)
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
    files: Sequence[Path],
    rules: Rules,
    on_reject: Callable[[Rejection], None],
    *,
    chunk: int = CHUNK_EVENTS,
    on_read: Callable[[int], None] | None = None,
    now: datetime,
    skew_s: int,
) -> SortedEvents:
    """Validate every record of ``files``; the result iterates them in event-time order.

    Rejected records go to ``on_reject`` as they are read; ties are broken by file, then line.
    ``now`` is the replay's end: events further ahead of it than ``skew_s`` seconds
    (``RECALL_CLOCK_SKEW_S``) are rejected (``worker.domain.intake.check_clock``).
    """
    return SortedEvents(
        files, rules, on_reject, chunk=chunk, on_read=on_read, now=now, skew_s=skew_s
    )
