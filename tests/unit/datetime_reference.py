"""The engine's local-time arithmetic as it was on aware datetimes: the reference for the zones.

Until issue 16 the engine asked pendulum's zones for every offset, midnight and opening; it now
reads integer tables (``worker.domain.zones``). These are the datetime functions it used, kept
word for word (``engine.next_opening``, ``engine._open_spans``, ``engine._offsets`` and
``engine.local_midnight`` at commit 94f1b90), so that ``test_zones`` compares the tables with
pendulum's own arithmetic rather than with themselves.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

import pendulum

from worker.domain.engine import timezone
from worker.domain.rules import CallingHours

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: Instants of one local date lie within this of its midnight read as UTC (offsets -12 to +14 h).
_DAY_REACH = 15 * 3600


def next_opening(moment: datetime, hours: CallingHours) -> datetime:
    """The first instant at or after ``moment`` inside the calling hours, in moment's zone.

    The semantics, DST gaps and overlaps included, are ``engine.next_opening``'s docstring.
    """
    assert isinstance(moment.tzinfo, pendulum.Timezone), "calling hours need a named zone"
    zone = moment.tzinfo.key
    at = moment.timestamp()  # instants compare by timestamp: datetimes of one zone by wall clock
    first = moment.date().toordinal()
    # The day before too (in an overlap at midnight an instant of the earlier date follows one of
    # the later date), and two weeks: an open day's only range may lie in a gap one week.
    for ordinal in range(first - 1, first + 15):
        for opens, closes, opening in _open_spans(ordinal, hours.days[(ordinal - 1) % 7], zone):
            if at < closes:
                return moment if at >= opens else opening
    raise ValueError("calling hours have no open day")  # validated away when rules load


@lru_cache(maxsize=65536)
def _open_spans(
    ordinal: int, ranges: tuple[tuple[int, int], ...], zone: str
) -> tuple[tuple[int, int, datetime], ...]:
    """The instants of local date ``ordinal`` whose wall clock reads inside ``ranges``.

    As (opens, closes, opening) spans in time order: epoch seconds, closes excluded, and the
    opening instant as a datetime in the zone.
    """
    tz = timezone(zone)
    midnight = (ordinal - _EPOCH_ORDINAL) * 86_400  # the date's wall-clock midnight, as if UTC
    spans: list[tuple[int, int]] = []
    for low, high, offset in _offsets(midnight - _DAY_REACH, midnight + 86_400 + _DAY_REACH, tz):
        # While the offset holds, wall-clock time is the instant plus the offset.
        for start, end in ranges:
            opens = max(low, midnight + start * 60 - offset)
            closes = min(high, midnight + end * 60 - offset)
            if opens < closes:
                spans.append((opens, closes))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for opens, closes in spans:  # pieces that touch across an offset change are one span
        if merged and opens <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
        else:
            merged.append((opens, closes))
    return tuple((opens, closes, datetime.fromtimestamp(opens, tz)) for opens, closes in merged)


def _offsets(low: int, high: int, tz: pendulum.Timezone) -> list[tuple[int, int, int]]:
    """``[low, high)`` cut where the zone's UTC offset changes: (from, to, offset) in seconds."""

    def offset(moment: int) -> int:
        return int(datetime.fromtimestamp(moment, tz).utcoffset().total_seconds())  # type: ignore[union-attr]

    pieces: list[tuple[int, int, int]] = []
    start, current = low, offset(low)
    # Offsets change at most once an hour (in practice twice a year): probe hourly, then find
    # each change to the second by bisection.
    previous = low
    for probe in [*range(low + 3600, high, 3600), high]:
        if offset(probe) != current:
            before, after = previous, probe
            while after - before > 1:
                middle = (before + after) // 2
                if offset(middle) == current:
                    before = middle
                else:
                    after = middle
            pieces.append((start, after, current))
            start, current = after, offset(after)
        previous = probe
    pieces.append((start, high, current))
    return pieces


@lru_cache(maxsize=65_536)
def local_midnight(ordinal: int, zone: pendulum.Timezone) -> datetime:
    """The first instant of local date ``ordinal`` in ``zone``.

    Midnight itself, or, where the clocks skip midnight that day, the end of the gap; where
    midnight is read twice, its first occurrence.
    """
    wall = datetime.fromordinal(ordinal)
    first: datetime = zone.convert(wall.replace(fold=0))
    if first.replace(tzinfo=None) != wall:  # in a gap: the first instant after it
        first = zone.convert(wall.replace(fold=1))
    return first
