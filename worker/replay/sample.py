"""Deterministic generator of realistic dialer call-result histories.

Each lead gets a plan and 1-3 phones; every phone gets a simulated attempt sequence:
the first attempt falls at a random moment inside the plan's local calling hours, each
further attempt follows after a delay typical of the previous result and is moved into
local calling hours, and the sequence ends on an agent's final disposition, a final SIP
response, the phone's attempt budget (1-8) or the end of the requested date range.

Calling hours are evaluated in the phone's *effective* zone: the ``timezone`` field of its
events when present, otherwise the plan's zone. A phone whose zone is not known to the
dialer (no ``timezone`` field) is therefore dialled by the plan's clock.

With ``callbacks``, an agent's CALLBACK books its time: ``callback_at`` is when the next
attempt was agreed (most of them; the rest book none), and some are personal (``callback_agent``).
Without, the events carry neither field (a CALLBACK then recalls after its ``recall_after``).

Everything is drawn from ``random.Random(seed)`` (the callbacks' details from a second generator
seeded from it, so that the other fields are the same with or without them): the same arguments
always give the same events, independent of the clock and of the global ``random`` state.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import orjson

from worker.domain.events import EVENT_FIELDS

__all__ = [
    "CALLBACK_CSV_COLUMNS",
    "CSV_COLUMNS",
    "FINAL_AGENT_OUTCOMES",
    "FINAL_SIP_CODES",
    "PLANS",
    "SIP_WEIGHTS",
    "generate",
    "iter_generate",
    "write_csv",
    "write_jsonl",
]

#: CSV column order (the event contract order), without the callback columns (empty unless the
#: calls book callbacks: ``CALLBACK_CSV_COLUMNS``).
CSV_COLUMNS: tuple[str, ...] = tuple(
    name for name in EVENT_FIELDS if name not in ("callback_at", "callback_agent")
)
#: CSV column order of a history with booked callbacks: every field of the contract.
CALLBACK_CSV_COLUMNS: tuple[str, ...] = tuple(EVENT_FIELDS)

# A day's calling window as (open, close); the close is exclusive. None: no calls that day.
_Window = tuple[time, time] | None
_Week = tuple[_Window, ...]  # Monday .. Sunday

_UK_WEEK: _Week = (
    (time(8), time(21)),
    (time(8), time(21)),
    (time(8), time(21)),
    (time(8), time(21)),
    (time(8), time(21)),
    (time(9), time(17)),
    None,
)
_US_WEEK: _Week = ((time(8), time(21)),) * 7
_EU_WEEK: _Week = (
    (time(9), time(20)),
    (time(9), time(20)),
    (time(9), time(20)),
    (time(9), time(20)),
    (time(9), time(20)),
    None,
    None,
)


@dataclass(frozen=True, slots=True)
class _Plan:
    plan_id: str
    zone: str
    week: _Week
    # Zones a phone on this plan may carry, with weights (used when the zone is known).
    phone_zones: tuple[tuple[str, int], ...]


#: Plans by id: zone, weekly calling windows and the zones their phones may carry.
PLANS: dict[str, _Plan] = {
    "default": _Plan("default", "Europe/London", _UK_WEEK, (("Europe/London", 1),)),
    "us_tcpa": _Plan(
        "us_tcpa",
        "America/New_York",
        _US_WEEK,
        (
            ("America/New_York", 45),
            ("America/Chicago", 25),
            ("America/Denver", 10),
            ("America/Los_Angeles", 20),
        ),
    ),
    "eu_sales": _Plan(
        "eu_sales",
        "Europe/Berlin",
        _EU_WEEK,
        (("Europe/Berlin", 60), ("Europe/Paris", 25), ("Europe/Madrid", 15)),
    ),
    # Manual dialling follows the default plan's (UK) hours.
    "manual": _Plan("manual", "Europe/London", _UK_WEEK, (("Europe/London", 1),)),
}

_PLAN_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("default", 45),
    ("us_tcpa", 30),
    ("eu_sales", 20),
    ("manual", 5),
)

#: Per-attempt SIP response mix, in percent (sums to 100).
SIP_WEIGHTS: tuple[tuple[int, float], ...] = (
    (486, 22.0),
    (480, 14.0),
    (487, 12.0),
    (408, 8.0),
    (200, 25.0),
    (404, 4.0),
    (503, 4.0),
    (603, 3.0),
    (410, 1.0),
    (484, 0.8),
    (500, 0.8),
    (502, 0.8),
    (504, 0.8),
    (600, 0.6),
    (604, 0.6),
    (607, 0.8),
    (608, 0.6),
    (488, 1.2),
)

#: SIP responses after which the phone is not dialled again.
FINAL_SIP_CODES = frozenset({404, 410, 484, 603, 604, 607, 608})

_AGENT_OUTCOMES: tuple[tuple[str, int], ...] = (
    ("NI", 30),
    ("CALLBACK", 20),
    ("NOTNOW", 15),
    ("ANSWER", 15),
    ("SALE", 10),
    ("WRONGNUM", 5),
    ("DNC", 5),
)
#: Agent dispositions that close the phone's sequence (CALLBACK / NOTNOW ask for a recall).
FINAL_AGENT_OUTCOMES = frozenset({"NI", "ANSWER", "SALE", "WRONGNUM", "DNC"})

_TIMEZONE_SHARE = 0.6  # share of phones whose events carry ``timezone``
_BOOKED_SHARE = 0.9  # share of CALLBACK outcomes that book a time (``callback_at``)
_PERSONAL_SHARE = 0.4  # share of booked callbacks kept for the agent who booked them
_AGENTS = 25
_RETRY_AFTER_SHARE = 0.3  # share of 503 responses carrying Retry-After
_MINUTE = 60
_HOUR = 3600
_DAY = 86400


def _cum(weights: Iterable[tuple[object, float]]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for _, w in weights:
        total += w
        out.append(total)
    return out


_SIP_CODES = [code for code, _ in SIP_WEIGHTS]
_SIP_CUM = _cum(SIP_WEIGHTS)
_PLAN_IDS = [p for p, _ in _PLAN_WEIGHTS]
_PLAN_CUM = _cum(_PLAN_WEIGHTS)
_AGENT_CODES = [c for c, _ in _AGENT_OUTCOMES]
_AGENT_CUM = _cum(_AGENT_OUTCOMES)
_ZONE_CACHE: dict[str, ZoneInfo] = {}


def _zone(name: str) -> ZoneInfo:
    zi = _ZONE_CACHE.get(name)
    if zi is None:
        zi = _ZONE_CACHE[name] = ZoneInfo(name)
    return zi


def _open_at_or_after(t: datetime, zone: ZoneInfo, week: _Week) -> tuple[datetime, bool]:
    """First instant >= ``t`` (UTC) inside the calling hours; flag: whether ``t`` was moved."""
    local = t.astimezone(zone)
    day: date = local.date()
    for _ in range(8):
        window = week[day.weekday()]
        if window is not None:
            opens = datetime.combine(day, window[0], tzinfo=zone)
            closes = datetime.combine(day, window[1], tzinfo=zone)
            if t < opens:
                return opens.astimezone(UTC), True
            if t < closes:
                return t, False
        day += timedelta(days=1)
    raise ValueError("plan has no calling hours")  # pragma: no cover - every plan has some


def _in_hours(t: datetime, zone: ZoneInfo, week: _Week) -> bool:
    return not _open_at_or_after(t, zone, week)[1]


def _into_hours(rng: random.Random, t: datetime, zone: ZoneInfo, week: _Week) -> datetime:
    """Move ``t`` into calling hours; a moved attempt gets 0-20 min of dialer jitter."""
    moved_to, moved = _open_at_or_after(t, zone, week)
    if moved:
        # Every window is at least 8 h long, so the jitter never leaves it.
        moved_to += timedelta(seconds=rng.randrange(20 * _MINUTE))
    return moved_to


def _outcome(rng: random.Random, sip: int) -> str | None:
    """Outcome code for an attempt's SIP response (None: the dialer recorded none)."""
    r = rng.random()
    if sip == 200:
        if r < 0.30:
            return "SYSANSMACH"
        if r < 0.40:
            return "SYSDROP"
        return rng.choices(_AGENT_CODES, cum_weights=_AGENT_CUM)[0]
    if sip in (480, 487, 408):
        if r < 0.35:
            return "SYSNOANS"
        if r < 0.45 and sip != 480:
            return "MAXTO"
        if r < 0.50:
            return "NOCPA"
        return None
    if sip == 486:
        if r < 0.40:
            return "SYSBUSY"
        return "NOCPA" if r < 0.43 else None
    if sip == 503:
        return "NOCARRIER" if r < 0.40 else None
    if sip == 404:
        return "SYSOI" if r < 0.35 else None
    return None


def _delay_s(rng: random.Random, sip: int, outcome: str | None, retry_after: int | None) -> int:
    """Seconds the dialer waits before the next attempt, typical of the last result."""
    if sip == 200:
        if outcome == "SYSANSMACH":
            return rng.randint(4 * _HOUR, 6 * _HOUR)
        if outcome == "SYSDROP":
            return rng.randint(30 * _MINUTE, 60 * _MINUTE)
        if outcome == "CALLBACK":  # the time agreed with the customer
            return rng.randint(2 * _HOUR, 2 * _DAY)
        return rng.randint(1 * _DAY, 3 * _DAY)  # NOTNOW
    if sip in (486, 600):
        return rng.randint(15 * _MINUTE, 30 * _MINUTE)
    if sip in (480, 487, 408):
        return rng.randint(1 * _HOUR, 4 * _HOUR)
    # 5xx and 488: network / media trouble; honour Retry-After when present.
    return max(rng.randint(30 * _MINUTE, 60 * _MINUTE), retry_after or 0)


def _first_attempt(
    rng: random.Random, lo: datetime, hi: datetime, zone: ZoneInfo, week: _Week
) -> datetime | None:
    """Uniform instant in [lo, hi) inside the calling hours, or None if there is none."""
    span = int((hi - lo).total_seconds())
    for _ in range(200):
        t = lo + timedelta(seconds=rng.randrange(span))
        if _in_hours(t, zone, week):
            return t
    t, _ = _open_at_or_after(lo, zone, week)  # pragma: no cover - vanishingly unlikely
    return t if t < hi else None  # pragma: no cover


@dataclass(slots=True)
class _Attempt:
    at: datetime
    phone: int
    sip: int
    outcome: str | None
    retry_after: int | None
    callback_at: datetime | None = None
    callback_agent: str | None = None


def _book(attempt: _Attempt, booked: random.Random, delay_s: int | None) -> None:
    """A CALLBACK's booking: the agreed time (``delay_s`` after the call, the time the next
    attempt is made; drawn when there is none), or none; sometimes for the booking agent."""
    if booked.random() >= _BOOKED_SHARE:
        return
    if delay_s is None:
        delay_s = booked.randint(2 * _HOUR, 2 * _DAY)
    attempt.callback_at = attempt.at + timedelta(seconds=delay_s // _MINUTE * _MINUTE)
    if booked.random() < _PERSONAL_SHARE:
        attempt.callback_agent = f"agent-{booked.randrange(_AGENTS) + 1}"


def _simulate_phone(
    rng: random.Random,
    phone: int,
    first: datetime,
    hi: datetime,
    zone: ZoneInfo,
    week: _Week,
    booked: random.Random | None,
) -> list[_Attempt]:
    attempts: list[_Attempt] = []
    budget = rng.randint(1, 8)
    t = first
    while True:
        sip = rng.choices(_SIP_CODES, cum_weights=_SIP_CUM)[0]
        outcome = _outcome(rng, sip)
        retry_after = None
        if sip == 503 and rng.random() < _RETRY_AFTER_SHARE:
            retry_after = rng.randint(60, 1800)
        attempt = _Attempt(t, phone, sip, outcome, retry_after)
        attempts.append(attempt)
        booking = booked if outcome == "CALLBACK" else None
        if (
            len(attempts) >= budget
            or sip in FINAL_SIP_CODES
            or (outcome is not None and outcome in FINAL_AGENT_OUTCOMES)
        ):
            if booking is not None:
                _book(attempt, booking, None)
            return attempts
        delay_s = _delay_s(rng, sip, outcome, retry_after)
        if booking is not None:
            _book(attempt, booking, delay_s)
        t += timedelta(seconds=delay_s)
        t = _into_hours(rng, t, zone, week)
        if t >= hi:
            return attempts


def _check_args(leads: int, start: datetime, days: int) -> tuple[datetime, datetime]:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be an aware datetime (with a UTC offset)")
    if leads < 0:
        raise ValueError("leads must be >= 0")
    if days < 1:
        raise ValueError("days must be >= 1")
    lo = start.astimezone(UTC)
    if lo.microsecond:  # events have seconds precision and must not precede start
        lo = lo.replace(microsecond=0) + timedelta(seconds=1)
    hi = start.astimezone(UTC) + timedelta(days=days)
    return lo, hi


def iter_generate(
    *, seed: int, leads: int, start: datetime, days: int, callbacks: bool = False
) -> Iterator[dict[str, object]]:
    """Yield the events of ``leads`` leads, lead by lead (each lead's events in time order).

    Events fall in ``[start, start + days days)``. Event ids are numbered in yield order.
    ``callbacks``: CALLBACK outcomes book times (``callback_at``, ``callback_agent``); the other
    fields are the same either way. Raises ValueError at call time for a naive ``start``,
    ``leads < 0`` or ``days < 1``.
    """
    lo, hi = _check_args(leads, start, days)
    return _events(seed, leads, lo, hi, callbacks)


def _events(
    seed: int, leads: int, lo: datetime, hi: datetime, callbacks: bool
) -> Iterator[dict[str, object]]:
    rng = random.Random(seed)
    booked = random.Random(f"callbacks-{seed}") if callbacks else None
    n = 0
    for i in range(leads):
        lead_id = f"L{i + 1}"
        plan = PLANS[rng.choices(_PLAN_IDS, cum_weights=_PLAN_CUM)[0]]
        zone_names = [z for z, _ in plan.phone_zones]
        zone_cum = _cum(plan.phone_zones)
        lead_zone = rng.choices(zone_names, cum_weights=zone_cum)[0]
        n_phones = rng.choices((1, 2, 3), weights=(55, 30, 15))[0]

        attempts: list[_Attempt] = []
        phone_tz: list[str | None] = []
        previous_first: datetime | None = None
        for k in range(n_phones):
            tz_name: str | None = None
            if rng.random() < _TIMEZONE_SHARE:
                tz_name = lead_zone
                if rng.random() < 0.15:  # e.g. a mobile registered elsewhere
                    tz_name = rng.choices(zone_names, cum_weights=zone_cum)[0]
            phone_tz.append(tz_name)
            zone = _zone(tz_name or plan.zone)
            first: datetime | None
            if previous_first is None:
                first = _first_attempt(rng, lo, hi, zone, plan.week)
            else:
                # The dialer works through a lead's phones a few minutes apart.
                gap = timedelta(seconds=rng.randint(2 * _MINUTE, 20 * _MINUTE))
                first = _into_hours(rng, previous_first + gap, zone, plan.week)
                if first >= hi:
                    first = None
            if first is None:
                continue
            previous_first = first
            attempts.extend(_simulate_phone(rng, k, first, hi, zone, plan.week, booked))

        attempts.sort(key=lambda a: (a.at, a.phone))
        for a in attempts:
            n += 1
            event: dict[str, object] = {
                "event_id": f"ev-{seed}-{n}",
                "plan_id": plan.plan_id,
                "lead_id": lead_id,
                "phone_id": f"{lead_id}-P{a.phone + 1}",
                "sip_code": a.sip,
                "occurred_at": a.at.isoformat(timespec="seconds"),
            }
            if a.outcome is not None:
                event["outcome_code"] = a.outcome
            tz_name = phone_tz[a.phone]
            if tz_name is not None:
                event["timezone"] = tz_name
            if a.retry_after is not None:
                event["retry_after_s"] = a.retry_after
            if a.callback_at is not None:
                event["callback_at"] = a.callback_at.isoformat(timespec="seconds")
            if a.callback_agent is not None:
                event["callback_agent"] = a.callback_agent
            event["call_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            yield event


def generate(
    *, seed: int, leads: int, start: datetime, days: int, callbacks: bool = False
) -> list[dict[str, object]]:
    """All events of :func:`iter_generate`, sorted by ``occurred_at`` (ties by ``event_id``).

    ``occurred_at`` is always UTC with ``+00:00`` and seconds precision, so the string
    order is the chronological order.
    """
    events = list(
        iter_generate(seed=seed, leads=leads, start=start, days=days, callbacks=callbacks)
    )
    events.sort(key=lambda e: (str(e["occurred_at"]), str(e["event_id"])))
    return events


class _ByteSink(Protocol):
    def write(self, data: bytes, /) -> int: ...


@contextmanager
def _open_binary(path: Path) -> Iterator[_ByteSink]:
    """Open ``path`` for writing; gzip (reproducible: no name, mtime 0) if it ends in .gz."""
    with open(path, "wb") as raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                yield gz
        else:
            yield raw


def write_jsonl(events: Iterable[dict[str, object]], path: Path) -> int:
    """Write one JSON object per line (gzip-compressed for a ``.gz`` path); return the count."""
    count = 0
    with _open_binary(Path(path)) as out:
        for event in events:
            out.write(orjson.dumps(event) + b"\n")
            count += 1
    return count


def write_csv(
    events: Iterable[dict[str, object]], path: Path, columns: Sequence[str] = CSV_COLUMNS
) -> int:
    """Write a UTF-8 CSV with a header row of ``columns`` (contract order); an absent field is an
    empty cell.

    Gzip-compressed for a ``.gz`` path. Fields not in ``columns`` raise ValueError. Returns the
    count.
    """
    count = 0
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=columns, restval="", extrasaction="raise", lineterminator="\n"
    )
    writer.writeheader()
    with _open_binary(Path(path)) as out:
        for event in events:
            writer.writerow(event)
            count += 1
            if count % 4096 == 0:  # stream: never hold more than a few thousand rows
                out.write(buf.getvalue().encode("utf-8"))
                buf.seek(0)
                buf.truncate()
        out.write(buf.getvalue().encode("utf-8"))
    return count
