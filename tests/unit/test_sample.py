"""Tests for worker.sample, the seeded generator of call-result histories."""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from worker.replay.sample import generate, iter_generate, write_csv, write_jsonl

START = datetime(2026, 3, 1, tzinfo=UTC)  # the range spans the US (Mar 8) and EU (Mar 29) DST
DAYS = 35

REQUIRED: dict[str, type] = {
    "event_id": str,
    "plan_id": str,
    "lead_id": str,
    "phone_id": str,
    "sip_code": int,
    "occurred_at": str,
}
OPTIONAL: dict[str, type] = {
    "outcome_code": str,
    "timezone": str,
    "retry_after_s": int,
    "call_id": str,
}
COLUMNS = [
    "event_id",
    "plan_id",
    "lead_id",
    "phone_id",
    "sip_code",
    "occurred_at",
    "outcome_code",
    "timezone",
    "retry_after_s",
    "call_id",
]
PLAN_ZONE = {
    "default": "Europe/London",
    "us_tcpa": "America/New_York",
    "eu_sales": "Europe/Berlin",
    "manual": "Europe/London",
}
PLAN_PHONE_ZONES = {
    "default": {"Europe/London"},
    "manual": {"Europe/London"},
    "us_tcpa": {"America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"},
    "eu_sales": {"Europe/Berlin", "Europe/Paris", "Europe/Madrid"},
}
_UK = {d: (time(8), time(21)) for d in range(5)} | {5: (time(9), time(17))}
HOURS: dict[str, dict[int, tuple[time, time]]] = {  # weekday (Mon=0) -> [open, close)
    "default": _UK,
    "manual": _UK,
    "us_tcpa": {d: (time(8), time(21)) for d in range(7)},
    "eu_sales": {d: (time(9), time(20)) for d in range(5)},
}
# The specified per-attempt SIP mix, in percent.
SIP_MIX = {486: 22, 480: 14, 487: 12, 408: 8, 200: 25, 404: 4, 503: 4, 603: 3}
OTHER_SIP = {410, 484, 500, 502, 504, 600, 604, 607, 608, 488}
FINAL_SIP = {404, 410, 484, 603, 604, 607, 608}
OFFSET_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00$")


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    return generate(seed=42, leads=2000, start=START, days=DAYS)


def _at(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["occurred_at"]))


def test_same_seed_same_events() -> None:
    a = generate(seed=7, leads=300, start=START, days=DAYS)
    b = generate(seed=7, leads=300, start=START, days=DAYS)
    assert a == b
    assert a  # not trivially equal


def test_different_seed_different_events() -> None:
    a = generate(seed=7, leads=300, start=START, days=DAYS)
    b = generate(seed=8, leads=300, start=START, days=DAYS)
    strip = [{k: v for k, v in e.items() if k != "event_id"} for e in a]
    assert strip != [{k: v for k, v in e.items() if k != "event_id"} for e in b]


def test_unaffected_by_global_random() -> None:
    import random

    random.seed(1)
    a = generate(seed=3, leads=50, start=START, days=7)
    random.seed(2)
    random.random()
    assert generate(seed=3, leads=50, start=START, days=7) == a


def test_required_fields_types_and_offset(events: list[dict[str, object]]) -> None:
    assert len(events) > 3000
    for e in events:
        for key, typ in REQUIRED.items():
            assert type(e[key]) is typ, (key, e)
        for key, value in e.items():
            assert key in REQUIRED or key in OPTIONAL, key
            assert value is not None, (key, e)
            assert type(value) is (REQUIRED | OPTIONAL)[key], (key, e)
        assert list(e) == [c for c in COLUMNS if c in e]  # contract order
        assert 100 <= int(str(e["sip_code"])) <= 699
        assert e["plan_id"] in PLAN_ZONE
        assert OFFSET_TS.match(str(e["occurred_at"])), e["occurred_at"]
        assert _at(e).utcoffset() == timedelta(0)
        assert re.fullmatch(r"L\d+", str(e["lead_id"]))
        assert re.fullmatch(rf"{e['lead_id']}-P[123]", str(e["phone_id"]))
        assert str(e["event_id"]).startswith("ev-42-")
        assert e["call_id"]
        if "retry_after_s" in e:
            assert e["sip_code"] == 503
            assert 0 <= int(str(e["retry_after_s"])) <= 1800


def test_event_and_call_ids_unique(events: list[dict[str, object]]) -> None:
    assert len({e["event_id"] for e in events}) == len(events)
    assert len({e["call_id"] for e in events}) == len(events)


def test_sorted_and_within_range(events: list[dict[str, object]]) -> None:
    keys = [(_at(e), str(e["event_id"])) for e in events]
    assert keys == sorted(keys)
    end = START + timedelta(days=DAYS)
    assert all(START <= at < end for at, _ in keys)


def test_sip_mix_roughly_as_specified() -> None:
    evs = generate(seed=2026, leads=1200, start=START, days=DAYS)
    n = len(evs)
    assert n >= 4000
    counts = Counter(e["sip_code"] for e in evs)
    assert set(counts) <= set(SIP_MIX) | OTHER_SIP
    for code, pct in SIP_MIX.items():
        p = pct / 100
        tolerance = 5 * math.sqrt(p * (1 - p) / n) + 0.005
        assert abs(counts[code] / n - p) < tolerance, (code, counts[code] / n)
    other = sum(counts[c] for c in OTHER_SIP) / n
    assert 0.04 < other < 0.12
    assert len(set(counts) & OTHER_SIP) >= 8  # the small shares do occur


def test_outcomes_match_sip(events: list[dict[str, object]]) -> None:
    agent = {"CALLBACK", "NOTNOW", "SALE", "DNC", "WRONGNUM", "NI", "ANSWER"}
    allowed: dict[int, set[str]] = defaultdict(set)
    allowed[200] = {"SYSANSMACH", "SYSDROP"} | agent
    for code in (480, 487, 408):
        allowed[code] = {"SYSNOANS", "MAXTO", "NOCPA"}
    allowed[486] = {"SYSBUSY", "NOCPA"}
    allowed[503] = {"NOCARRIER"}
    allowed[404] = {"SYSOI"}
    seen: Counter[object] = Counter()
    for e in events:
        code = int(str(e["sip_code"]))
        if code == 200:
            assert "outcome_code" in e
        if "outcome_code" in e:
            assert e["outcome_code"] in allowed[code], e
            seen[e["outcome_code"]] += 1
    answered = sum(1 for e in events if e["sip_code"] == 200)
    assert 0.2 < seen["SYSANSMACH"] / answered < 0.4
    assert set(seen) >= {"SYSANSMACH", "SYSDROP", "SYSNOANS", "SYSBUSY", "SYSOI"} | agent


def test_timezone_share_and_per_phone_consistency(events: list[dict[str, object]]) -> None:
    share = sum("timezone" in e for e in events) / len(events)
    assert 0.5 < share < 0.7
    by_phone: dict[object, set[object]] = defaultdict(set)
    for e in events:
        by_phone[e["phone_id"]].add(e.get("timezone"))
        if "timezone" in e:
            assert e["timezone"] in PLAN_PHONE_ZONES[str(e["plan_id"])]
    assert all(len(zones) == 1 for zones in by_phone.values())


def test_phone_sequences(events: list[dict[str, object]]) -> None:
    by_phone: dict[object, list[dict[str, object]]] = defaultdict(list)
    lead_plan: dict[object, object] = {}
    for e in events:
        by_phone[e["phone_id"]].append(e)
        assert lead_plan.setdefault(e["lead_id"], e["plan_id"]) == e["plan_id"]
    lengths = Counter(len(seq) for seq in by_phone.values())
    assert max(lengths) <= 8
    assert lengths[1] > 0
    assert lengths[8] > 0
    for seq in by_phone.values():
        for prev, nxt in itertools.pairwise(seq):
            # nothing after a final SIP response or an agent's final disposition
            assert prev["sip_code"] not in FINAL_SIP
            assert prev.get("outcome_code") not in {"SALE", "DNC", "WRONGNUM", "NI", "ANSWER"}
            gap = _at(nxt) - _at(prev)
            if prev["sip_code"] == 486:
                assert gap >= timedelta(minutes=15)
            elif prev["sip_code"] in (480, 487, 408):
                assert gap >= timedelta(hours=1)
            elif prev.get("outcome_code") == "SYSANSMACH":
                assert gap >= timedelta(hours=4)
            elif prev["sip_code"] in (500, 502, 503, 504):
                assert gap >= timedelta(minutes=30)
                assert gap >= timedelta(seconds=int(str(prev.get("retry_after_s", 0))))
            else:
                assert gap > timedelta(0)


def _in_calling_hours(event: dict[str, object]) -> bool:
    plan = str(event["plan_id"])
    zone = ZoneInfo(str(event.get("timezone", PLAN_ZONE[plan])))
    local = _at(event).astimezone(zone)
    window = HOURS[plan].get(local.weekday())
    return window is not None and window[0] <= local.time() < window[1]


def test_attempts_within_local_calling_hours(events: list[dict[str, object]]) -> None:
    outside = [e for e in events if not _in_calling_hours(e)]
    assert outside == []
    assert {e["plan_id"] for e in events} == set(PLAN_ZONE)


def test_start_not_on_a_boundary_and_short_range() -> None:
    start = datetime(2026, 7, 4, 19, 30, 15, 500_000, tzinfo=ZoneInfo("America/New_York"))
    evs = generate(seed=5, leads=300, start=start, days=1)
    assert evs
    for e in evs:
        assert start <= _at(e) < start + timedelta(days=1)
        assert _in_calling_hours(e)


def test_non_utc_start_accepted() -> None:
    start = datetime(2026, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert generate(seed=1, leads=20, start=start, days=3) == generate(
        seed=1, leads=20, start=start.astimezone(UTC), days=3
    )


def test_iter_generate_lead_by_lead() -> None:
    streamed = list(iter_generate(seed=11, leads=200, start=START, days=DAYS))
    leads = [e["lead_id"] for e in streamed]
    assert [k for k, _ in itertools.groupby(leads)] == list(dict.fromkeys(leads))  # contiguous
    assert sorted(streamed, key=lambda e: (str(e["occurred_at"]), str(e["event_id"]))) == (
        generate(seed=11, leads=200, start=START, days=DAYS)
    )


def test_zero_leads() -> None:
    assert generate(seed=1, leads=0, start=START, days=1) == []


def _read_csv(path: Path) -> list[dict[str, object]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows: list[dict[str, object]] = []
        for row in reader:
            event: dict[str, object] = {}
            for key in COLUMNS:
                if row[key] != "":
                    is_int = key in ("sip_code", "retry_after_s")
                    event[key] = int(row[key]) if is_int else row[key]
            rows.append(event)
        return rows


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return [orjson.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_jsonl_round_trip(tmp_path: Path, events: list[dict[str, object]], suffix: str) -> None:
    path = tmp_path / f"events.jsonl{suffix}"
    assert write_jsonl(events, path) == len(events)
    assert _read_jsonl(path) == events


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_csv_round_trip(tmp_path: Path, events: list[dict[str, object]], suffix: str) -> None:
    path = tmp_path / f"events.csv{suffix}"
    assert write_csv(events, path) == len(events)
    assert _read_csv(path) == events


def test_gz_is_really_gzip_and_reproducible(tmp_path: Path) -> None:
    evs = generate(seed=9, leads=50, start=START, days=7)
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_jsonl(evs, a)
    write_jsonl(evs, b)
    assert a.read_bytes()[:2] == b"\x1f\x8b"
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.csv.gz"
    write_csv(evs, c)
    with gzip.open(c, "rt", encoding="utf-8") as fh:
        assert fh.readline().strip() == ",".join(COLUMNS)


def test_writers_stream_a_generator(tmp_path: Path) -> None:
    it = iter_generate(seed=4, leads=100, start=START, days=DAYS)
    n = write_jsonl(it, tmp_path / "s.jsonl")
    assert n == len(list(iter_generate(seed=4, leads=100, start=START, days=DAYS)))
    assert write_csv(iter([]), tmp_path / "empty.csv") == 0
    assert (tmp_path / "empty.csv").read_text() == ",".join(COLUMNS) + "\n"


def test_naive_start_raises() -> None:
    naive = datetime(2026, 3, 1)  # noqa: DTZ001 - deliberately naive
    with pytest.raises(ValueError, match="aware"):
        generate(seed=1, leads=1, start=naive, days=1)
    with pytest.raises(ValueError, match="aware"):
        iter_generate(seed=1, leads=1, start=naive, days=1)  # raised at call, not on next()


@pytest.mark.parametrize(("leads", "days"), [(-1, 1), (1, 0)])
def test_bad_sizes_raise(leads: int, days: int) -> None:
    with pytest.raises(ValueError, match=">="):
        generate(seed=1, leads=leads, start=START, days=days)


# --- booked callbacks ----------------------------------------------------------------------------


def test_callbacks_book_times_and_leave_every_other_field_alone() -> None:
    plain = generate(seed=42, leads=2000, start=START, days=DAYS)
    booked = generate(seed=42, leads=2000, start=START, days=DAYS, callbacks=True)
    callback_fields = ("callback_at", "callback_agent")
    assert [{k: v for k, v in e.items() if k not in callback_fields} for e in booked] == plain
    assert not any(field in e for e in plain for field in callback_fields)

    callbacks = [e for e in booked if e.get("outcome_code") == "CALLBACK"]
    with_time = [e for e in callbacks if "callback_at" in e]
    personal = [e for e in with_time if "callback_agent" in e]
    assert len(callbacks) > 100
    assert 0.8 < len(with_time) / len(callbacks) < 0.97  # most book a time, some none
    assert 0.25 < len(personal) / len(with_time) < 0.55
    assert all("callback_at" in e for e in booked if "callback_agent" in e)
    assert all(e.get("outcome_code") == "CALLBACK" for e in booked if "callback_at" in e)
    for event in with_time:
        booked_at = datetime.fromisoformat(str(event["callback_at"]))
        assert OFFSET_TS.match(str(event["callback_at"]))
        assert (
            timedelta(hours=2) - timedelta(minutes=1) <= booked_at - _at(event) <= timedelta(days=2)
        )
        assert booked_at.second == _at(event).second  # whole minutes after the call

    # The next attempt of a phone after a booked callback is made at the booked time (moved into
    # the calling hours when it falls outside them).
    by_phone: dict[str, list[dict[str, object]]] = defaultdict(list)
    for event in booked:
        by_phone[str(event["phone_id"])].append(event)
    followed = 0
    for calls in by_phone.values():
        for call, after in itertools.pairwise(calls):
            if "callback_at" in call:
                followed += 1
                assert _at(after) >= datetime.fromisoformat(str(call["callback_at"]))
    assert followed > 50


def test_a_history_with_callbacks_is_valid_and_round_trips_through_csv(tmp_path: Path) -> None:
    from worker.domain.events import parse_event
    from worker.replay.sample import CALLBACK_CSV_COLUMNS

    booked = generate(seed=5, leads=800, start=START, days=DAYS, callbacks=True)
    assert sum(1 for e in booked if "callback_at" in e) > 20
    for event in booked:
        parse_event(event)  # raises on anything the contract refuses
    path = tmp_path / "events.csv"
    assert write_csv(booked, path, CALLBACK_CSV_COLUMNS) == len(booked)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CALLBACK_CSV_COLUMNS)
    assert [row["callback_at"] or None for row in rows] == [e.get("callback_at") for e in booked]
    with pytest.raises(ValueError, match="callback_a"):
        write_csv(booked, tmp_path / "plain.csv")  # the callback columns are not in CSV_COLUMNS
