"""Tests of ``worker.domain.zones``: the integer-time arithmetic is the datetime engine's, exactly.

The reference is the engine's arithmetic on aware datetimes in pendulum's zones as it was
before the tables (``datetime_reference.next_opening`` and ``local_midnight``), with
``Duration.add_to`` and zoneinfo's offsets and dates: the property tests draw instants in many
zones, half of them within hours of an offset change, and compare every answer to the
microsecond. The examples name DST cases one by one,
their instants worked out by hand and written as UTC literals.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.datetime_reference import local_midnight, next_opening
from worker.domain.engine import timezone
from worker.domain.rules import CallingHours, Duration
from worker.domain.zones import EPOCH, SECOND, epoch_us, zone_table

ZONES = (
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",  # DST of 30 minutes
    "Asia/Kathmandu",  # +5:45
    "Australia/Eucla",  # +8:45
    "Asia/Kolkata",
    "Pacific/Chatham",  # +12:45 / +13:45, changing at 02:45
    "America/St_Johns",  # -3:30; until 2011 it changed at 00:01, so midnight was read twice
    "Pacific/Apia",  # skipped 2011-12-30 whole
    "UTC",
    "Etc/GMT-14",
    "America/Sao_Paulo",  # changed at midnight: its midnights fell in gaps
)
HOUR = 3600 * SECOND
DAY = 24 * HOUR
FIRST_YEAR, LAST_YEAR = 1970, 2100
FIRST = epoch_us(datetime(FIRST_YEAR, 1, 1, tzinfo=UTC))
LAST = epoch_us(datetime(LAST_YEAR, 1, 1, tzinfo=UTC))
# Minutes past midnight where the drawn zones change their clocks, or near them: calling hours
# built from these start, end or lie in gaps and repeated hours.
MARKS = (0, 1, 30, 45, 60, 90, 120, 150, 165, 180, 225, 240, 1380, 1410, 1425, 1439, 1440)
PROPERTIES = settings(max_examples=150, deadline=None)


def _utc(at: int) -> str:
    return (EPOCH + timedelta(microseconds=at)).isoformat()


def _us(text: str) -> int:
    return epoch_us(datetime.fromisoformat(text))


def _reference(zone: str, at: int) -> datetime:
    """Instant ``at`` in ``zone`` as the engine holds it: zoneinfo's own wall clock and fold."""
    return datetime.fromtimestamp(at // SECOND, timezone(zone)).replace(microsecond=at % SECOND)


@cache
def _changes(zone: str, year: int) -> tuple[int, ...]:
    """The instants (µs) in UTC ``year`` at which zoneinfo changes ``zone``'s offset.

    Found from zoneinfo directly (a daily scan, each change bisected to the second), not from the
    tables under test, so a change the tables missed is still drawn.
    """
    tz = timezone(zone)

    def offset(second: int) -> timedelta | None:
        return datetime.fromtimestamp(second, tz).utcoffset()

    start = epoch_us(datetime(year, 1, 1, tzinfo=UTC)) // SECOND
    end = epoch_us(datetime(year + 1, 1, 1, tzinfo=UTC)) // SECOND
    found = []
    for day in range(start, end, 86_400):
        before, after = day, day + 86_400
        if offset(before) != offset(after):
            while after - before > 1:
                middle = (before + after) // 2
                if offset(middle) == offset(before):
                    before = middle
                else:
                    after = middle
            found.append(after * SECOND)
    return tuple(found)


@st.composite
def moments(draw: st.DrawFn) -> tuple[str, int]:
    """A zone and an instant (µs): uniform over 1970-2100, or near one of the zone's changes.

    Near a change means within a few hours (the gap or repeated hour itself, to the microsecond)
    or a few days (a calendar day or a day's calling hours away). Changes are also drawn from
    the POSIX-rule years up to 9000, at whole seconds there: beyond about 2500 a float timestamp
    is coarser than a microsecond, and the engine compares calling hours on floats.
    """
    zone = draw(st.sampled_from(ZONES))
    kind = draw(st.sampled_from(("uniform", "near", "near", "far")))
    if kind == "uniform":
        return zone, draw(st.integers(FIRST, LAST - 1))
    far = kind == "far"
    year = draw(st.integers(2100, 9000) if far else st.integers(FIRST_YEAR, LAST_YEAR - 1))
    changes = _changes(zone, year)
    if not changes:  # a zone without DST that year: anywhere in it
        base = epoch_us(datetime(year, 1, 1, tzinfo=UTC)) + draw(st.integers(0, 364 * DAY))
    else:
        base = draw(st.sampled_from(changes))
    shift = draw(
        st.sampled_from((0, -1, 1))
        | st.integers(-3 * HOUR, 3 * HOUR)
        | st.integers(-3 * DAY, 3 * DAY)
    )
    at = base + shift
    return zone, at - at % SECOND if far else at


def durations() -> st.SearchStrategy[Duration]:
    return st.builds(
        Duration,
        days=st.sampled_from((0, 1, 2, 7)) | st.integers(0, 400),
        hours=st.sampled_from((0, 1, 24)) | st.integers(0, 72),
        minutes=st.sampled_from((0, 30)) | st.integers(0, 59),
    )


@st.composite
def day_ranges(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    """One day's ranges as the rules allow them: in order, none empty, touching allowed."""
    minute = st.sampled_from(MARKS) | st.integers(0, 1440)
    cuts = sorted(set(draw(st.lists(minute, max_size=6))))
    ranges = list(zip(cuts[::2], cuts[1::2], strict=False))
    if len(cuts) >= 3 and draw(st.booleans()):  # a second range starting where the first ends
        ranges = [(cuts[0], cuts[1]), (cuts[1], cuts[2])]
    return tuple(ranges)


def calling_hours() -> st.SearchStrategy[CallingHours]:
    every_day = day_ranges().map(lambda ranges: (ranges,) * 7)
    per_day = st.tuples(*[day_ranges()] * 7)
    return (every_day | per_day).filter(any).map(CallingHours)


# --- properties ---------------------------------------------------------------------------------


@PROPERTIES
@given(moment=moments())
def test_offset_date_and_datetime_are_zoneinfos(moment: tuple[str, int]) -> None:
    zone, at = moment
    table, reference = zone_table(zone), _reference(zone, at)
    assert timedelta(seconds=table.offset(at)) == reference.utcoffset()
    assert table.ordinal(at) == reference.toordinal()
    assert table.weekday(at) == reference.weekday()
    got = table.to_datetime(at)
    assert got.tzinfo is reference.tzinfo
    assert (got.replace(tzinfo=None), got.fold, got.utcoffset()) == (
        reference.replace(tzinfo=None),
        reference.fold,
        reference.utcoffset(),
    )
    assert epoch_us(got) == epoch_us(reference) == at


@PROPERTIES
@given(moment=moments())
def test_midnight_and_day_bounds_are_local_midnight(moment: tuple[str, int]) -> None:
    zone, at = moment
    table, tz = zone_table(zone), timezone(zone)
    ordinal = _reference(zone, at).toordinal()
    for day in (ordinal - 1, ordinal, ordinal + 1):
        assert _utc(table.midnight(day)) == local_midnight(day, tz).astimezone(UTC).isoformat()
    assert table.day_bounds(at) == (table.midnight(ordinal), table.midnight(ordinal + 1))


@PROPERTIES
@given(moment=moments(), duration=durations())
def test_add_is_duration_add_to(moment: tuple[str, int], duration: Duration) -> None:
    zone, at = moment
    expected = duration.add_to(_reference(zone, at))
    assert _utc(zone_table(zone).add(at, duration)) == expected.astimezone(UTC).isoformat()


@PROPERTIES
@given(moment=moments(), hours=calling_hours())
def test_next_opening_is_the_engines(moment: tuple[str, int], hours: CallingHours) -> None:
    zone, at = moment
    expected = next_opening(_reference(zone, at), hours)
    assert _utc(zone_table(zone).next_opening(at, hours)) == expected.astimezone(UTC).isoformat()


@PROPERTIES
@given(
    instant=st.datetimes(datetime(1970, 1, 1), datetime(9000, 12, 31)),  # noqa: DTZ001 - made aware below
    zone=st.sampled_from(ZONES),
    fold=st.integers(0, 1),
)
def test_epoch_us_is_exact(instant: datetime, zone: str, fold: int) -> None:
    # Any aware datetime, fold and microseconds included: its instant, to the microsecond.
    moment = instant.replace(tzinfo=timezone(zone), fold=fold)
    assert epoch_us(moment) == (moment - EPOCH) // timedelta(microseconds=1)
    assert _reference(zone, epoch_us(moment)) == moment.astimezone(timezone(zone))


# --- examples -----------------------------------------------------------------------------------

SUNDAY_ONLY = CallingHours(((),) * 6 + (((30, 150),),))  # 00:30-02:30
FRIDAY_ONLY = CallingHours(((),) * 4 + (((540, 1020),),) + ((),) * 2)  # 09:00-17:00


@pytest.mark.parametrize(
    ("zone", "at", "expected"),
    [
        # London springs forward at 01:00 GMT on 2026-03-29: 00:30-02:30 opens at 00:30 GMT and,
        # its pieces either side of the gap touching, closes at 02:30 BST (01:30 UTC).
        ("Europe/London", "2026-03-29T00:45:00+00:00", "2026-03-29T00:45:00+00:00"),
        ("Europe/London", "2026-03-29T01:29:59.999999+00:00", "2026-03-29T01:29:59.999999+00:00"),
        ("Europe/London", "2026-03-29T01:30:00+00:00", "2026-04-04T23:30:00+00:00"),
        # New York falls back at 02:00 EDT on 2026-11-01: 00:30-02:30 opens at 00:30 EDT, is open
        # through both readings of 01:00-02:00 and closes at 02:30 EST (07:30 UTC).
        ("America/New_York", "2026-11-01T06:59:00+00:00", "2026-11-01T06:59:00+00:00"),
        ("America/New_York", "2026-11-01T07:30:00+00:00", "2026-11-08T05:30:00+00:00"),
    ],
)
def test_calling_hours_across_a_dst_change(zone: str, at: str, expected: str) -> None:
    got = zone_table(zone).next_opening(_us(at), SUNDAY_ONLY)
    assert _utc(got) == expected
    assert (
        _utc(got)
        == next_opening(_reference(zone, _us(at)), SUNDAY_ONLY).astimezone(UTC).isoformat()
    )


def test_a_range_ending_in_the_repeated_hour_opens_again_at_its_second_reading() -> None:
    # 01:30-01:45 on New York's fall-back Sunday: open 01:30-01:45 EDT (05:30-05:45 UTC), closed
    # for the first 30 minutes of the second reading, open again 01:30-01:45 EST (06:30 UTC).
    hours = CallingHours(((),) * 6 + (((90, 105),),))
    table = zone_table("America/New_York")
    assert _utc(table.next_opening(_us("2026-11-01T05:50:00+00:00"), hours)) == (
        "2026-11-01T06:30:00+00:00"
    )


def test_a_range_wholly_in_a_gap_is_closed_that_day() -> None:
    # 01:10-01:50 on London's spring-forward Sunday is never read on the clock: the next one is
    # the following Sunday's, 01:10 BST.
    hours = CallingHours(((),) * 6 + (((70, 110),),))
    table = zone_table("Europe/London")
    assert _utc(table.next_opening(_us("2026-03-28T12:00:00+00:00"), hours)) == (
        "2026-04-05T00:10:00+00:00"
    )


@pytest.mark.parametrize(
    ("zone", "start", "days", "expected"),
    [
        # A day into London's gap: 01:30 does not exist on 2026-03-29, so 02:30 BST.
        ("Europe/London", "2026-03-28T01:30:00+00:00", 1, "2026-03-29T01:30:00+00:00"),
        # A day into New York's repeated hour: its second reading, 01:30 EST.
        ("America/New_York", "2026-10-31T05:30:00+00:00", 1, "2026-11-01T06:30:00+00:00"),
        # Lord Howe springs forward 30 minutes at 02:00 on 2026-10-04: 02:15 is 02:45 (+11).
        ("Australia/Lord_Howe", "2026-10-02T15:45:00+00:00", 1, "2026-10-03T15:45:00+00:00"),
        # Chatham springs forward at 02:45 on 2026-09-27: 03:00 is 04:00 (+13:45).
        ("Pacific/Chatham", "2026-09-25T14:15:00+00:00", 1, "2026-09-26T14:15:00+00:00"),
        # Apia skipped 2011-12-30: a day after 2011-12-29 12:00 (-10) is 2011-12-31 12:00 (+14).
        ("Pacific/Apia", "2011-12-29T22:00:00+00:00", 1, "2011-12-30T22:00:00+00:00"),
        # London in 8000, under its POSIX rule: a week across the March change keeps 12:00.
        ("Europe/London", "8000-03-20T12:00:00+00:00", 7, "8000-03-27T11:00:00+00:00"),
    ],
)
def test_calendar_days_across_a_dst_change(zone: str, start: str, days: int, expected: str) -> None:
    table = zone_table(zone)
    assert _utc(table.add(_us(start), Duration(days=days))) == expected
    assert _utc(table.add(_us(start), Duration(days=days, hours=1, minutes=30))) == _utc(
        _us(expected) + 90 * 60 * SECOND
    )


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        ("UTC", "2026-01-01", "2026-01-01T00:00:00+00:00"),
        ("Etc/GMT-14", "2026-01-01", "2025-12-31T10:00:00+00:00"),
        ("Asia/Kathmandu", "2026-01-01", "2025-12-31T18:15:00+00:00"),
        # Sao Paulo sprang forward at midnight on 2018-11-04: the day began at 01:00 (-02).
        ("America/Sao_Paulo", "2018-11-04", "2018-11-04T03:00:00+00:00"),
        # Apia's skipped 2011-12-30 begins and ends where 2011-12-31 begins: an empty day.
        ("Pacific/Apia", "2011-12-30", "2011-12-30T10:00:00+00:00"),
        ("Pacific/Apia", "2011-12-31", "2011-12-30T10:00:00+00:00"),
        # St John's fell back at 00:01 on 1997-10-26, reading midnight twice: its first reading.
        ("America/St_Johns", "1997-10-26", "1997-10-26T02:30:00+00:00"),
    ],
)
def test_local_midnight(zone: str, day: str, expected: str) -> None:
    ordinal = datetime.fromisoformat(day).toordinal()
    assert _utc(zone_table(zone).midnight(ordinal)) == expected


def test_a_day_read_again_after_the_next_begins() -> None:
    # The engine's semantics, reproduced though surprising: after St John's fell back at 00:01
    # NDT on 1997-10-26, 23:01-24:00 NST of 10-25 was read a second time, after 10-26 had begun.
    # An instant then is on 10-25, but its date's bounds end (at 10-26's first midnight) before
    # it: a per-day cap moving a due time "to the next day" moves it back 30 minutes.
    table = zone_table("America/St_Johns")
    at = _us("1997-10-26T03:00:00+00:00")  # 23:30 NST, the second reading
    assert table.to_datetime(at).isoformat() == "1997-10-25T23:30:00-03:30"
    assert table.day_bounds(at) == (
        _us("1997-10-25T02:30:00+00:00"),
        _us("1997-10-26T02:30:00+00:00"),
    )


def test_the_day_before_opens_again_after_midnight_read_twice() -> None:
    # St John's, 1997-10-26 00:00:30 NDT: already Sunday, but at 00:01 NDT the clocks go back
    # to Saturday 23:01 NST, so Saturday's 23:00-24:00 opens again (at 02:31 UTC), after it.
    hours = CallingHours(((),) * 5 + (((1380, 1440),),) + ((),))
    table = zone_table("America/St_Johns")
    at = _us("1997-10-26T02:30:30+00:00")
    assert table.to_datetime(at).isoformat() == "1997-10-26T00:00:30-02:30"
    assert _utc(table.next_opening(at, hours)) == "1997-10-26T02:31:00+00:00"


def test_a_skipped_friday_is_closed() -> None:
    # Apia's calling hours on Fridays only: 2011-12-30, a Friday, never happened.
    table = zone_table("Pacific/Apia")
    assert _utc(table.next_opening(_us("2011-12-29T22:00:00+00:00"), FRIDAY_ONLY)) == (
        "2012-01-05T19:00:00+00:00"
    )


def test_far_future_instants_are_exact_to_the_microsecond() -> None:
    # In 8000 a float timestamp is about 30 µs coarse: the engine, comparing floats, finds a
    # microsecond before the close already closed. The integers keep it open.
    table = zone_table("Europe/London")
    hours = CallingHours((((540, 1020),),) * 7)
    close = _us("8000-01-05T17:00:00+00:00")
    assert table.next_opening(close - 1, hours) == close - 1
    assert _utc(table.next_opening(close, hours)) == "8000-01-06T09:00:00+00:00"
    assert table.offset(_us("8000-07-01T12:00:00+00:00")) == 3600
    # The last microsecond of 9000: one before 9001-01-01, which a float timestamp rounds to.
    last = datetime(9000, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    days = date(9001, 1, 1).toordinal() - date(1970, 1, 1).toordinal()
    assert epoch_us(last) == days * 86_400 * SECOND - 1
    assert round(last.timestamp() * SECOND) == days * 86_400 * SECOND
    assert _utc(epoch_us(last)) == last.isoformat()
