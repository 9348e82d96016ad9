"""The engine's time arithmetic on integer epoch microseconds, one offset table per zone (issue 16).

A decision asks the same few questions of a zone many times: the UTC offset at an instant, the
local date, a local midnight, an instant plus calendar days, the next opening of the calling
hours. Asked of aware datetimes, each answer builds datetimes and calls into the zone; here
instants are plain ``int`` microseconds since the epoch (events may carry microseconds, and
decisions must stay byte-identical), and each zone's offset changes are found once per block of
time and then read with ``bisect`` on plain lists. Datetimes are made only at the edges
(``epoch_us`` in, ``ZoneTable.to_datetime`` out).

pendulum stays the reference: every answer is the one the datetime-based engine gave before
these tables (its functions are kept in ``tests/unit/datetime_reference.py``) and
``Duration.add_to`` gives, DST gaps and overlaps included; ``tests/unit/test_zones.py`` checks
them against each other.

zoneinfo does not expose a zone's transitions, so they are found by probing ``utcoffset`` hourly
and bisecting each change to the second, as the datetime engine's ``_offsets`` did; beyond a
zone's last explicit transition zoneinfo applies its POSIX TZ rule, which probing reads like any
other year.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache

import pendulum

from worker.domain.rules import CallingHours, Duration

__all__ = ["DAY", "EPOCH", "MINUTE", "SECOND", "ZoneTable", "epoch_us", "zone_table"]

#: One second, one minute, one day, in microseconds.
SECOND = 1_000_000
MINUTE = 60 * SECOND
DAY = 86_400 * SECOND
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# A zone's offsets are probed a block of instants at a time, built the first time one of them is
# asked about: events span years 1970-9000, so nothing is built up front. A block's fixed length
# (not the calendar year) makes finding it one integer division.
_BLOCK = 365 * DAY
# Each block also lists the changes within this much of its ends, so that a wall-clock time of
# the block finds every change that decides its offset in the block itself: a wall time lies
# within 15 hours of its instants (offsets run from -12 to +14 hours) and changes are hours long.
_MARGIN = 2 * DAY
# Below every wall time and instant: the first entry of a block's wall lists.
_FOREVER = -(1 << 62)
# As the datetime engine's _DAY_REACH: the instants of one local date lie within this of its
# midnight read as UTC, and the calling hours' pieces are cut over the same stretch.
_DAY_REACH = 15 * 3600 * SECOND
# Offsets change at most once an hour (in practice twice a year), as the datetime engine's
# _offsets assumed.
_PROBE_STEP = 3600
_PROBE_DELTA = timedelta(seconds=_PROBE_STEP)
# Local midnights and open spans repeat for every phone of a zone on a day; these bound each
# zone's memo (a few MB at most) while covering years of days.
_MIDNIGHTS_KEPT = 16_384
_SPANS_KEPT = 16_384

#: A block: (instants of the changes, their wall times read before / after the change in
#: zoneinfo's sense, the offsets in µs), each list led by an entry for the offset in force before
#: the block's first change.
_Block = tuple[list[int], list[int], list[int], list[int]]


def epoch_us(moment: datetime) -> int:
    """The instant of the aware ``moment`` in epoch microseconds, exactly (no float rounding)."""
    return (moment - EPOCH) // _MICROSECOND


class ZoneTable:
    """One zone's offsets as integer tables, and the engine's local-time arithmetic on them.

    Use ``zone_table(name)``: one table per zone, whose memos every caller then shares.
    """

    __slots__ = ("_blocks", "_fortnight", "_probe_base", "midnight", "name", "open_spans", "tz")

    def __init__(self, name: str) -> None:
        self.name = name
        #: The pendulum zone, for the datetimes made at the edges.
        self.tz: pendulum.Timezone = pendulum.timezone(name)
        self._blocks: dict[int, _Block] = {}
        # 1970-01-01 00:00 UTC as a wall time labelled with the zone, as tz.fromutc wants it.
        self._probe_base = datetime(1970, 1, 1, tzinfo=self.tz)
        #: ``midnight(ordinal)``: the first instant (µs) of local date ``ordinal``, with the
        #: datetime engine's ``local_midnight`` semantics (memoised per table: every phone asks).
        self.midnight: Callable[[int], int] = lru_cache(maxsize=_MIDNIGHTS_KEPT)(self._midnight)
        #: ``open_spans(ordinal, ranges)``: the (opens, closes) instants (µs, closes excluded) of
        #: local date ``ordinal`` whose wall clock reads inside ``ranges`` (memoised per table).
        self.open_spans: Callable[[int, tuple[tuple[int, int], ...]], tuple[tuple[int, int], ...]]
        self.open_spans = lru_cache(maxsize=_SPANS_KEPT)(self._open_spans)
        # next_opening's two weeks of spans per (local date, calling hours' days): one lookup a
        # call rather than one per day.
        self._fortnight: Callable[
            [int, tuple[tuple[tuple[int, int], ...], ...]], tuple[tuple[int, int], ...]
        ] = lru_cache(maxsize=_SPANS_KEPT)(self._spans_from)

    def __repr__(self) -> str:
        return f"ZoneTable({self.name!r})"

    # --- instants -----------------------------------------------------------------------------

    def offset(self, at: int) -> int:
        """The zone's UTC offset, in seconds, at instant ``at`` (µs)."""
        block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
        return block[3][bisect_right(block[0], at) - 1] // SECOND

    def ordinal(self, at: int) -> int:
        """The proleptic ordinal (``date.toordinal()``) of the local date at instant ``at``."""
        # The offset lookup is written out in each method asked per decision: a call costs as
        # much as the lookup.
        block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
        return (at + block[3][bisect_right(block[0], at) - 1]) // DAY + _EPOCH_ORDINAL

    def weekday(self, at: int) -> int:
        """The local weekday at instant ``at``, Monday 0 (``date.weekday()``)."""
        return (self.ordinal(at) + 6) % 7

    def day_bounds(self, at: int) -> tuple[int, int]:
        """The first instants of ``at``'s local date and of the next: the date is [start, end)."""
        block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
        ordinal = (at + block[3][bisect_right(block[0], at) - 1]) // DAY + _EPOCH_ORDINAL
        return self.midnight(ordinal), self.midnight(ordinal + 1)

    def to_datetime(self, at: int) -> datetime:
        """Instant ``at`` as an aware datetime in the pendulum zone, as ``fromtimestamp`` makes it.

        The wall clock, offset and fold are zoneinfo's own (the second reading of a repeated hour
        has fold 1), so the datetime is the one the datetime-based engine would hold.
        """
        # fromtimestamp asks the zone's fromutc as astimezone does, from a whole second: a third
        # of the cost of building the UTC datetime first.
        seconds, micro = divmod(at, SECOND)
        moment = datetime.fromtimestamp(seconds, self.tz)
        return moment.replace(microsecond=micro) if micro else moment

    # --- wall-clock arithmetic ----------------------------------------------------------------

    def add(self, at: int, duration: Duration) -> int:
        """``at`` plus ``duration`` with ``Duration.add_to``'s semantics: days local, hours elapsed.

        Days move the wall clock, resolved as pendulum's ``Timezone.convert`` resolves a wall
        time with fold 1: one in a DST gap moves forward by the gap, one read twice is taken at its
        second reading (after the change). Hours and minutes are added to the instant.
        """
        if duration.days:
            block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
            wall = at + block[3][bisect_right(block[0], at) - 1] + duration.days * DAY
            at = self._convert(wall)
        return at + (duration.hours * 60 + duration.minutes) * MINUTE

    def _midnight(self, ordinal: int) -> int:
        # The datetime engine's local_midnight: midnight read with fold 0 (its first reading,
        # where it is read twice); where it falls in a gap, convert's fold-1 answer (the gap's
        # length later).
        wall = (ordinal - _EPOCH_ORDINAL) * DAY
        _, early, late, offsets = self._block(wall // _BLOCK)
        before = offsets[bisect_right(early, wall) - 1]
        if offsets[bisect_right(late, wall) - 1] > before:
            return self._convert(wall)
        return wall - before

    def _convert(self, wall: int) -> int:
        """The instant of local wall time ``wall`` (µs, as if UTC) as ``convert(fold=1)`` reads it.

        pendulum's ``Timezone.convert`` compares the offsets zoneinfo gives the wall time with
        fold 0 and fold 1: in a gap (the fold-1 offset is larger) it moves the wall time forward by
        the difference and reads it with fold 1; elsewhere it reads it with fold 1, the later
        instant of a repeated time.
        """
        _, early, late, offsets = self._blocks.get(wall // _BLOCK) or self._block(wall // _BLOCK)
        before = offsets[bisect_right(early, wall) - 1]
        after = offsets[bisect_right(late, wall) - 1]
        if after > before:
            wall += after - before
            _, _, late, offsets = self._block(wall // _BLOCK)
            after = offsets[bisect_right(late, wall) - 1]
        return wall - after

    # --- calling hours ------------------------------------------------------------------------

    def next_opening(self, at: int, hours: CallingHours) -> int:
        """The first instant at or after ``at`` inside the calling hours (``engine.next_opening``).

        Its docstring says how a DST change decides a range that starts, ends or lies in a gap
        or an overlap; the spans here are the same, as integers.
        """
        block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
        first = (at + block[3][bisect_right(block[0], at) - 1]) // DAY + _EPOCH_ORDINAL
        for opens, closes in self._fortnight(first, hours.days):
            if at < closes:
                return at if at >= opens else opens
        raise ValueError("calling hours have no open day")  # validated away when rules load

    def _spans_from(
        self, first: int, days: tuple[tuple[tuple[int, int], ...], ...]
    ) -> tuple[tuple[int, int], ...]:
        # The spans next_opening reads for an instant of local date `first`, in the order it
        # reads them: the day before too (in an overlap at midnight an instant of the earlier
        # date follows one of the later date), and two weeks (an open day's only range may lie in
        # a gap one week). Not sorted by closing: across an overlap at midnight they need not be.
        return tuple(
            span
            for ordinal in range(first - 1, first + 15)
            for span in self.open_spans(ordinal, days[(ordinal - 1) % 7])
        )

    def _open_spans(
        self, ordinal: int, ranges: tuple[tuple[int, int], ...]
    ) -> tuple[tuple[int, int], ...]:
        # The datetime engine's _open_spans on integers: while an offset holds, the wall clock is
        # the instant plus the offset, so each range maps to one piece per offset; pieces that
        # touch across an offset change are one span.
        if not ranges:
            return ()
        midnight = (ordinal - _EPOCH_ORDINAL) * DAY  # the date's wall-clock midnight, as if UTC
        spans: list[tuple[int, int]] = []
        for low, high, offset in self._pieces(midnight - _DAY_REACH, midnight + DAY + _DAY_REACH):
            for start, end in ranges:
                opens = max(low, midnight + start * MINUTE - offset)
                closes = min(high, midnight + end * MINUTE - offset)
                if opens < closes:
                    spans.append((opens, closes))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for opens, closes in spans:
            if merged and opens <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
            else:
                merged.append((opens, closes))
        return tuple(merged)

    def _pieces(self, low: int, high: int) -> list[tuple[int, int, int]]:
        """``[low, high)`` cut where the offset changes: (from, to, offset), all in µs."""
        pieces: list[tuple[int, int, int]] = []
        start, current = low, self._offset_us(low)
        for index in range(low // _BLOCK, (high - 1) // _BLOCK + 1):
            changes, _, _, offsets = self._block(index)
            # Only the block's own stretch (its margins are its neighbours' changes), and only
            # changes after `low`: one at `low` itself is already in force there.
            begin, last = index * _BLOCK, min(high, (index + 1) * _BLOCK)
            first = bisect_right(changes, low) if low >= begin else bisect_left(changes, begin)
            for position in range(first, len(changes)):
                change = changes[position]
                if change >= last:
                    break
                pieces.append((start, change, current))
                start, current = change, offsets[position]
        pieces.append((start, high, current))
        return pieces

    # --- the tables ---------------------------------------------------------------------------

    def _offset_us(self, at: int) -> int:
        block = self._blocks.get(at // _BLOCK) or self._block(at // _BLOCK)
        return block[3][bisect_right(block[0], at) - 1]

    def _block(self, index: int) -> _Block:
        """Block ``index``: the offset changes of its instants and of its margins, built once."""
        block = self._blocks.get(index)
        if block is None:
            block = self._blocks[index] = self._probe_block(index)
        return block

    def _probe_block(self, index: int) -> _Block:
        # The wall lists are zoneinfo's own reading of a wall time: a change from offset `prev`
        # to `new` at instant t applies, for a wall time read with fold 0, from wall time
        # t + max(prev, new), and with fold 1 from t + min(prev, new) (zoneinfo's
        # _ts_to_local). So in a gap fold 0 reads the offset before and fold 1 the one after,
        # and a repeated time is read first with fold 0 and second with fold 1.
        low = (index * _BLOCK - _MARGIN) // SECOND
        high = ((index + 1) * _BLOCK + _MARGIN) // SECOND
        # The probes compare zoneinfo's timedeltas and step one datetime along: the block's ~9000
        # probes are its whole cost, and making each datetime afresh would double it. The block
        # and its margins are whole days, so the last probe is `high` itself.
        fromutc = self.tz.fromutc
        stepping = self._utc_wall(low)
        current = fromutc(stepping).utcoffset()
        changes, early, late = [low * SECOND], [_FOREVER], [_FOREVER]
        offsets = [_microseconds(current)]
        previous = low
        for probe in range(low + _PROBE_STEP, high + 1, _PROBE_STEP):
            stepping += _PROBE_DELTA
            if fromutc(stepping).utcoffset() != current:
                before, after = previous, probe
                while after - before > 1:  # bisect to the first second of the new offset
                    middle = (before + after) // 2
                    if fromutc(self._utc_wall(middle)).utcoffset() == current:
                        before = middle
                    else:
                        after = middle
                old = offsets[-1]
                current = fromutc(self._utc_wall(after)).utcoffset()
                new = _microseconds(current)
                changes.append(after * SECOND)
                early.append(after * SECOND + max(old, new))
                late.append(after * SECOND + min(old, new))
                offsets.append(new)
            previous = probe
        return changes, early, late, offsets

    def _utc_wall(self, second: int) -> datetime:
        """Instant ``second`` as the UTC wall time that ``tz.fromutc`` takes (tzinfo the zone)."""
        return self._probe_base + timedelta(seconds=second)


def _microseconds(offset: timedelta | None) -> int:
    assert offset is not None  # a named zone always has an offset
    return offset // _MICROSECOND


@cache
def zone_table(name: str) -> ZoneTable:
    """The table of zone ``name``, one per zone (its offsets and memos are built as asked for)."""
    return ZoneTable(name)
