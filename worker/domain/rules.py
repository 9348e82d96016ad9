"""The operator's rules: SIP codes, outcome codes and plans, as immutable typed objects.

Rules come from TOML (DESIGN.md section 6). The shipped defaults in ``config/default_rules.toml``
are always loaded first and the operator's file is merged over them, entry by entry (a SIP row by
its code, an outcome by its code, a plan by its id, field by field). A file with any error is
refused whole, with one line naming the file, the entry and the field.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pendulum
import tomli_w

__all__ = [
    "DEFAULT_RULES_PATH",
    "EXPORT_HEADER",
    "WEEKDAYS",
    "AttemptCap",
    "CallingHours",
    "Duration",
    "Outcome",
    "Plan",
    "Rules",
    "RulesError",
    "SipRule",
    "is_valid_timezone",
    "load_rules",
    "rules_from_export",
    "rules_from_text",
]

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "config" / "default_rules.toml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SIP_CLASSES = {"4xx": 4, "5xx": 5, "6xx": 6}
#: The first line of ``recall rules export``: part of the text a rules version is the hash of.
EXPORT_HEADER = "# Effective recall rules, exported by `recall rules export`.\n"
# Outcome codes and plan ids end up in a decision's rule ("outcome:CODE", "plan:ID"), stored in a
# column of 80 characters.
MAX_NAME_LENGTH = 64

OutcomeKind = Literal["system", "user"]
RecallPolicy = Literal["after", "never", "inherit", "callback"]
#: The policies that recall after ``recall_after`` (a callback does when the event has no time).
TIMED_POLICIES = ("after", "callback")


class RulesError(ValueError):
    """A rules file that cannot be used; the message is one line naming file, entry and field."""

    def __init__(self, message: str) -> None:
        # Names come from the file and may hold line breaks; the message stays one line.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


@dataclass(frozen=True, slots=True)
class Duration:
    """A recall delay as the dialer screen shows it: calendar days, then elapsed hours/minutes."""

    days: int = 0
    hours: int = 0
    minutes: int = 0
    #: Worked out once, every decision asks: the most elapsed time this duration can span (a
    #: calendar day may last 25 hours), and its text.
    longest_seconds: float = field(init=False, repr=False, compare=False)
    longest_us: int = field(init=False, repr=False, compare=False)
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slack = timedelta(hours=1) if self.days else timedelta(0)
        longest = timedelta(days=self.days, hours=self.hours, minutes=self.minutes) + slack
        object.__setattr__(self, "longest_seconds", longest.total_seconds())
        object.__setattr__(self, "longest_us", longest // timedelta(microseconds=1))
        parts = [
            f"{value}{unit}"
            for value, unit in ((self.days, "d"), (self.hours, "h"), (self.minutes, "m"))
            if value
        ]
        object.__setattr__(self, "text", " ".join(parts) or "0m")

    def add_to(self, moment: datetime) -> datetime:
        """Return ``moment`` plus this duration: days on the local calendar, hours elapsed.

        ``moment`` is an instant in its phone's zone (tzinfo a pendulum ``Timezone``). This is
        pendulum's ``DateTime.add``: days move the wall clock and pendulum's zone resolves it
        (``Timezone.convert``, a wall time in a DST gap moves forward by the gap, a repeated one
        is taken after the change); hours and minutes are added to the UTC instant. It works on
        the standard datetime rather than pendulum's subclass, whose Python-level methods cost
        ten times as much (``tests/test_engine_properties.py`` checks the two agree).
        """
        if self.days:
            wall = moment.replace(tzinfo=None) + timedelta(days=self.days)
            zone = moment.tzinfo
            assert isinstance(zone, pendulum.Timezone), "calendar days need a named zone"
            moment = zone.convert(wall.replace(fold=1))
        if self.hours or self.minutes:
            elapsed = timedelta(hours=self.hours, minutes=self.minutes)
            moment = (moment.astimezone(UTC) + elapsed).astimezone(moment.tzinfo)
        return moment

    def to_table(self) -> dict[str, int]:
        return {
            name: value
            for name, value in (
                ("days", self.days),
                ("hours", self.hours),
                ("minutes", self.minutes),
            )
            if value
        } or {"minutes": 0}

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class SipRule:
    """One row of the SIP table: a code (or a class fallback such as ``4xx``) and its recall."""

    code: int | str
    description: str
    active: bool
    recall: bool
    recall_after: Duration | None
    builtin: bool

    @property
    def rule(self) -> str:
        return f"sip:{self.code}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One outcome code set by the dialer (``system``) or by the agent (``user``)."""

    code: str
    kind: OutcomeKind
    description: str
    recall: RecallPolicy
    recall_after: Duration | None
    #: Whatever rule sets the recall's time, it never falls on the call's local date.
    not_same_day: bool = False


@dataclass(frozen=True, slots=True)
class AttemptCap:
    """At most ``count`` attempts in any rolling window ``within``, or per local calendar day.

    Exactly one of ``within`` and ``per`` is set (``per`` is ``"day"``: the phone's zone).
    """

    count: int
    within: Duration | None = None
    per: Literal["day"] | None = None
    #: How explanations name it (``str()``), written once: every cap that moves a recall says it.
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.within is not None:
            text = f"{self.count} attempts in {self.within}"
        else:
            text = f"{self.count} attempts per {self.per}"
        object.__setattr__(self, "_text", text)

    def to_table(self) -> dict[str, Any]:
        if self.within is not None:
            return {"count": self.count, "within": self.within.to_table()}
        return {"count": self.count, "per": self.per}

    def __str__(self) -> str:
        return self._text


@dataclass(frozen=True, slots=True)
class CallingHours:
    """Local opening hours per weekday (Monday first), as (start, end) minutes past midnight."""

    days: tuple[tuple[tuple[int, int], ...], ...]

    def describe(self) -> dict[str, str]:
        return {
            WEEKDAYS[index]: ",".join(f"{_hhmm(start)}-{_hhmm(end)}" for start, end in ranges)
            for index, ranges in enumerate(self.days)
            if ranges
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """A campaign dialling plan: its System Recalls section."""

    id: str
    can_recall: bool
    timezone: str
    system_recalls: Mapping[str, Duration]
    calling_hours: CallingHours | None
    max_attempts: tuple[AttemptCap, ...]
    max_recalls: int | None
    #: Caps counting the attempts on every phone of the lead.
    lead_max_attempts: tuple[AttemptCap, ...] = ()
    #: Local dates on which the plan does not call at all.
    closed_dates: frozenset[date] = frozenset()
    #: Whether the engine's limits may need more than one pass to settle (per-day or lead caps,
    #: closed dates): worked out once, every decision asks.
    settles_slowly: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slow = bool(self.lead_max_attempts or self.closed_dates) or any(
            cap.per is not None for cap in self.max_attempts
        )
        object.__setattr__(self, "settles_slowly", slow)

    @property
    def rule(self) -> str:
        return f"plan:{self.id}"


@dataclass(frozen=True, slots=True)
class Rules:
    """The merged, validated rules the engine decides with."""

    default_timezone: str
    sip_codes: Mapping[int, SipRule]
    sip_classes: Mapping[int, SipRule]
    outcomes: Mapping[str, Outcome]
    plans: Mapping[str, Plan]
    sources: tuple[str, ...] = field(default=())
    #: The engine's memo of what the precedence rules say per (plan, outcome, SIP code): rules
    #: never change once loaded, so each answer is worked out once (a few hundred entries).
    verdicts: dict[tuple[str, str | None, int], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: ``export_text`` and ``version``, worked out the first time they are asked for.
    _export: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def version(self) -> str:
        """The rules version (DESIGN.md section 9): the first 12 hex digits of the SHA-256 of
        ``export_text()``, so the same rules have the same version however their files are
        written. Every decision asks: worked out once."""
        return self._export[1] if self._export else self._exported()[1]

    def export_text(self) -> str:
        """The complete rules as one TOML file: exactly what ``recall rules export`` prints."""
        return self._exported()[0]

    def _exported(self) -> list[str]:
        if not self._export:
            text = EXPORT_HEADER + tomli_w.dumps(self.to_toml_data())
            # One assignment: threads that race here compute the same pair.
            self._export[:] = (text, hashlib.sha256(text.encode("utf-8")).hexdigest()[:12])
        return self._export

    def sip_rule_for(self, code: int) -> SipRule | None:
        """The active row for ``code``, else the active fallback of its class, else None."""
        row = self.sip_codes.get(code)
        if row is not None and row.active:
            return row
        fallback = self.sip_classes.get(code // 100)
        if fallback is not None and fallback.active:
            return fallback
        return None

    def to_toml_data(self) -> dict[str, Any]:
        """The rules as the TOML contract's tables, loadable again by ``load_rules``.

        Entries come in a fixed order (SIP codes by code, then the class fallbacks; outcomes by
        code; plans by id) and fields in the contract's order, so that the export, and the
        version, do not depend on how the files were written.
        """
        sip_rows = [*self.sip_codes.values(), *self.sip_classes.values()]
        return {
            "defaults": {"timezone": self.default_timezone},
            "sip_codes": [
                {
                    "code": row.code,
                    "description": row.description,
                    "active": row.active,
                    "recall": row.recall,
                    **({"recall_after": row.recall_after.to_table()} if row.recall_after else {}),
                }
                for row in sip_rows
            ],
            "outcomes": [
                {
                    "code": outcome.code,
                    "kind": outcome.kind,
                    "description": outcome.description,
                    "recall": outcome.recall,
                    **(
                        {"recall_after": outcome.recall_after.to_table()}
                        if outcome.recall_after
                        else {}
                    ),
                    # Always written: an operator may have lifted a shipped row's lockout.
                    "not_same_day": outcome.not_same_day,
                }
                for _, outcome in sorted(self.outcomes.items())
            ],
            "plans": [_plan_table(plan) for _, plan in sorted(self.plans.items())],
        }


def _plan_table(plan: Plan) -> dict[str, Any]:
    table: dict[str, Any] = {
        "id": plan.id,
        "can_recall": plan.can_recall,
        "timezone": plan.timezone,
    }
    if plan.system_recalls:
        table["system_recalls"] = {
            code: d.to_table() for code, d in sorted(plan.system_recalls.items())
        }
    if plan.calling_hours is not None:
        table["calling_hours"] = plan.calling_hours.describe()
    # Written even when empty: the export is loaded over the shipped defaults again, where an
    # omitted field would take the shipped plan's value.
    table["max_attempts"] = [cap.to_table() for cap in plan.max_attempts]
    table["lead_max_attempts"] = [cap.to_table() for cap in plan.lead_max_attempts]
    table["closed_dates"] = [day.isoformat() for day in sorted(plan.closed_dates)]
    if plan.max_recalls is not None:
        table["max_recalls"] = plan.max_recalls
    return table


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@cache
def is_valid_timezone(name: str) -> bool:
    """True for an IANA zone name this machine knows (``Europe/London``)."""
    if not name or name != name.strip():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- reading one file ---------------------------------------------------------------------------


class _Entry:
    """One TOML table being read, with the context needed for a one-line error."""

    def __init__(self, file: str, where: str, table: object, allowed: tuple[str, ...]) -> None:
        self.file = file
        self.where = where
        if not isinstance(table, dict):
            raise self.error(None, f"must be a table, got {_type_name(table)}")
        self.table: dict[str, Any] = table
        self.allowed = allowed

    def check_keys(self) -> None:
        unknown = sorted(set(self.table) - set(self.allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown key (allowed: {', '.join(self.allowed)})")

    def error(self, field_name: str | None, message: str) -> RulesError:
        location = f"{self.file}: {self.where}"
        if field_name is not None:
            location += f": {field_name}"
        return RulesError(f"{location}: {message}")

    def has(self, name: str) -> bool:
        return name in self.table

    def string(self, name: str) -> str:
        value = self.table[name]
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_type_name(value)}")
        return value

    def boolean(self, name: str) -> bool:
        value = self.table[name]
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_type_name(value)}")
        return value

    def integer(self, name: str, minimum: int) -> int:
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_type_name(value)}")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def timezone(self, name: str) -> str:
        value = self.string(name)
        if not is_valid_timezone(value):
            raise self.error(name, f"unknown time zone {value!r}")
        return value

    def duration(self, name: str, value: object | None = None) -> Duration:
        value = self.table[name] if value is None else value
        return _duration(value, lambda message: self.error(name, message))


def _duration(value: object, error: Any) -> Duration:
    if not isinstance(value, dict):
        raise error(f"must be a table of days, hours, minutes, got {_type_name(value)}")
    if not value:
        raise error("must give at least one of days, hours, minutes")
    parts: dict[str, int] = {}
    for key, amount in value.items():
        if key not in ("days", "hours", "minutes"):
            raise error(f"unknown unit {key!r} (use days, hours, minutes)")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise error(f"{key} must be an integer, got {_type_name(amount)}")
        if amount < 0:
            raise error(f"{key} must not be negative, got {amount}")
        if amount > 10_000:
            raise error(f"{key} must be at most 10000, got {amount}")
        parts[key] = amount
    return Duration(**parts)


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names.update({list: "an array", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except OSError as error:
        raise RulesError(f"{path}: cannot read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RulesError(f"{path}: not valid TOML: {error}") from None


def _read_text(name: str, text: str) -> dict[str, Any]:
    # What _read_file says of a file holding ``text`` (tomllib reads the same characters).
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{name}: not valid TOML: {error}") from None


_TOP_KEYS = ("defaults", "sip_codes", "outcomes", "plans")
_SIP_KEYS = ("code", "description", "active", "recall", "recall_after")
_OUTCOME_KEYS = ("code", "kind", "description", "recall", "recall_after", "not_same_day")
_PLAN_KEYS = (
    "id",
    "can_recall",
    "timezone",
    "system_recalls",
    "calling_hours",
    "max_attempts",
    "lead_max_attempts",
    "closed_dates",
    "max_recalls",
)


@dataclass
class _Draft:
    """Rows as read and merged, before the final objects are built; each row keeps its origin."""

    default_timezone: str | None = None
    sip: dict[int | str, tuple[dict[str, Any], _Entry]] = field(default_factory=dict)
    outcomes: dict[str, tuple[dict[str, Any], _Entry]] = field(default_factory=dict)
    plans: dict[str, tuple[dict[str, Any], _Entry]] = field(default_factory=dict)


def _array(file: str, data: dict[str, Any], name: str) -> list[Any]:
    rows = data.get(name, [])
    if not isinstance(rows, list):
        raise RulesError(f"{file}: {name}: must be an array of tables ([[{name}]])")
    return rows


def _sip_code(entry: _Entry) -> int | str:
    if not entry.has("code"):
        raise entry.error("code", "required")
    code = entry.table["code"]
    if isinstance(code, str) and code in SIP_CLASSES:
        return code
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 699:
        raise entry.error(
            "code", f"must be a SIP failure code 400-699 or '4xx'/'5xx'/'6xx', got {code!r}"
        )
    return code


def _merge_file(
    draft: _Draft, path: Path | str, *, builtin: bool, data: dict[str, Any] | None = None
) -> None:
    """Merge the rules file ``path`` (or ``data``, the TOML of the rules named ``path``)."""
    file = str(path)
    if data is None:
        data = _read_file(Path(path))
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise RulesError(f"{file}: {unknown[0]}: unknown section (allowed: {', '.join(_TOP_KEYS)})")

    if "defaults" in data:
        defaults = _Entry(file, "defaults", data["defaults"], ("timezone",))
        defaults.check_keys()
        if defaults.has("timezone"):
            draft.default_timezone = defaults.timezone("timezone")

    seen_sip: dict[int | str, int] = {}
    for index, raw in enumerate(_array(file, data, "sip_codes")):
        entry = _Entry(file, f"sip_codes[{index}]", raw, _SIP_KEYS)
        code = _sip_code(entry)
        entry.where = f"sip_codes[{index}] (code {code})"
        entry.check_keys()
        if code in seen_sip:
            raise entry.error("code", f"duplicate of sip_codes[{seen_sip[code]}]")
        seen_sip[code] = index
        row = _read_sip_row(entry)
        previous = draft.sip.get(code)
        if previous is None:
            row.setdefault("active", True)
            row.setdefault("description", "")
            row["builtin"] = builtin
            if "recall" not in row:
                raise entry.error("recall", "required for a new SIP code")
        else:
            if "active" in row and row["active"] != previous[0]["active"]:
                raise entry.error("active", "a built-in SIP row's active flag cannot be changed")
            row = {**previous[0], **row}
        if "recall_after" in entry.table and not row["recall"]:
            raise entry.error("recall_after", "given, but recall is false (set recall = true)")
        draft.sip[code] = (row, entry)

    for entry, code in _named_entries(file, data, "outcomes", "code", _OUTCOME_KEYS):
        row = _read_outcome_row(entry)
        previous = draft.outcomes.get(code)
        if previous is None:
            for required in ("kind", "recall"):
                if required not in row:
                    raise entry.error(required, "required for a new outcome code")
            row.setdefault("description", "")
        else:
            row = {**previous[0], **row}
        if "recall_after" in entry.table and row["recall"] not in TIMED_POLICIES:
            raise entry.error(
                "recall_after", f"given, but recall is {row['recall']!r} (set recall = 'after')"
            )
        if row["recall"] == "callback" and row["kind"] != "user":
            raise entry.error(
                "recall" if "recall" in entry.table else "kind",
                "'callback' is for user outcomes only (an agent books a callback)",
            )
        draft.outcomes[code] = (row, entry)

    for entry, plan_id in _named_entries(file, data, "plans", "id", _PLAN_KEYS):
        row = _read_plan_row(entry)
        previous = draft.plans.get(plan_id)
        draft.plans[plan_id] = ({**previous[0], **row} if previous else row, entry)


def _named_entries(
    file: str, data: dict[str, Any], section: str, key: str, allowed: tuple[str, ...]
) -> Iterator[tuple[_Entry, str]]:
    """The rows of ``section`` with their names (``key``), each named once in the file."""
    seen: dict[str, int] = {}
    for index, raw in enumerate(_array(file, data, section)):
        entry = _Entry(file, f"{section}[{index}]", raw, allowed)
        if not entry.has(key):
            raise entry.error(key, "required")
        name = entry.string(key)
        if not name or name != name.strip() or len(name) > MAX_NAME_LENGTH:
            raise entry.error(
                key, f"must be non-empty, at most {MAX_NAME_LENGTH} characters, got {name!r}"
            )
        entry.where = f"{section}[{index}] ({key} {name})"
        entry.check_keys()
        if name in seen:
            raise entry.error(key, f"duplicate of {section}[{seen[name]}]")
        seen[name] = index
        yield entry, name


def _read_sip_row(entry: _Entry) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if entry.has("description"):
        row["description"] = entry.string("description")
    if entry.has("active"):
        row["active"] = entry.boolean("active")
    if entry.has("recall"):
        row["recall"] = entry.boolean("recall")
    if entry.has("recall_after"):
        if row.get("recall") is False:
            raise entry.error("recall_after", "given, but recall is false")
        row["recall_after"] = entry.duration("recall_after")
    return row


def _read_outcome_row(entry: _Entry) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if entry.has("kind"):
        kind = entry.string("kind")
        if kind not in ("system", "user"):
            raise entry.error("kind", f"must be 'system' or 'user', got {kind!r}")
        row["kind"] = kind
    if entry.has("description"):
        row["description"] = entry.string("description")
    if entry.has("recall"):
        recall = entry.string("recall")
        if recall not in ("after", "never", "inherit", "callback"):
            raise entry.error(
                "recall", f"must be 'after', 'never', 'inherit' or 'callback', got {recall!r}"
            )
        row["recall"] = recall
    if entry.has("recall_after"):
        if row.get("recall") in ("never", "inherit"):
            raise entry.error("recall_after", f"given, but recall is {row['recall']!r}")
        row["recall_after"] = entry.duration("recall_after")
    if entry.has("not_same_day"):
        row["not_same_day"] = entry.boolean("not_same_day")
    return row


def _read_plan_row(entry: _Entry) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if entry.has("can_recall"):
        row["can_recall"] = entry.boolean("can_recall")
    if entry.has("timezone"):
        row["timezone"] = entry.timezone("timezone")
    if entry.has("system_recalls"):
        table = entry.table["system_recalls"]
        if not isinstance(table, dict):
            raise entry.error("system_recalls", f"must be a table, got {_type_name(table)}")
        row["system_recalls"] = {
            code: _duration(value, lambda m, c=code: entry.error(f"system_recalls.{c}", m))
            for code, value in table.items()
        }
    if entry.has("calling_hours"):
        row["calling_hours"] = _calling_hours(entry)
    for caps in ("max_attempts", "lead_max_attempts"):
        if entry.has(caps):
            row[caps] = _attempt_caps(entry, caps)
    if entry.has("closed_dates"):
        row["closed_dates"] = _closed_dates(entry)
    if entry.has("max_recalls"):
        row["max_recalls"] = entry.integer("max_recalls", 0)
    return row


def _calling_hours(entry: _Entry) -> CallingHours:
    table = entry.table["calling_hours"]
    if not isinstance(table, dict):
        raise entry.error("calling_hours", f"must be a table of days, got {_type_name(table)}")
    days: list[tuple[tuple[int, int], ...]] = [() for _ in WEEKDAYS]
    for day, text in table.items():
        name = f"calling_hours.{day}"
        if day not in WEEKDAYS:
            raise entry.error(name, f"unknown day (use {', '.join(WEEKDAYS)})")
        if not isinstance(text, str):
            raise entry.error(name, f"must be a string like '09:00-20:00', got {_type_name(text)}")
        ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            start_text, dash, end_text = part.strip().partition("-")
            start, end = _clock(start_text), _clock(end_text)
            if not dash or start is None or end is None:
                raise entry.error(name, f"bad time range {part.strip()!r} (use 'HH:MM-HH:MM')")
            if start >= end:
                raise entry.error(name, f"range {part.strip()!r} ends before it starts")
            if ranges and start < ranges[-1][1]:
                raise entry.error(name, f"range {part.strip()!r} overlaps or is out of order")
            ranges.append((start, end))
        days[WEEKDAYS.index(day)] = tuple(ranges)
    if not any(days):
        raise entry.error("calling_hours", "no day is open; leave the table out for always open")
    return CallingHours(tuple(days))


def _clock(text: str) -> int | None:
    hours, colon, minutes = text.strip().partition(":")
    if not colon or len(hours) != 2 or len(minutes) != 2:
        return None
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > 24 * 60:
        return None
    return value


def _attempt_caps(entry: _Entry, name: str) -> tuple[AttemptCap, ...]:
    caps = entry.table[name]
    if not isinstance(caps, list):
        raise entry.error(name, f"must be an array of tables, got {_type_name(caps)}")
    result = []
    for index, raw in enumerate(caps):
        where = f"{entry.where}: {name}[{index}]"
        cap = _Entry(entry.file, where, raw, ("count", "within", "per"))
        cap.check_keys()
        if not cap.has("count"):
            raise cap.error("count", "required")
        count = cap.integer("count", 1)
        if cap.has("within") and cap.has("per"):
            raise cap.error("per", "given with within: a cap is either rolling or per day")
        if cap.has("per"):
            per = cap.string("per")
            if per != "day":
                raise cap.error("per", f"must be 'day', got {per!r}")
            result.append(AttemptCap(count=count, per="day"))
        elif cap.has("within"):
            result.append(AttemptCap(count=count, within=cap.duration("within")))
        else:
            raise cap.error("within", "required (or per = 'day')")
    return tuple(result)


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _closed_dates(entry: _Entry) -> frozenset[date]:
    values = entry.table["closed_dates"]
    if not isinstance(values, list):
        raise entry.error(
            "closed_dates", f"must be an array of dates like '2026-12-25', got {_type_name(values)}"
        )
    days: dict[date, int] = {}
    for index, value in enumerate(values):
        name = f"closed_dates[{index}]"
        # TOML's own local date (closed_dates = [2026-12-25]) is a date too.
        day = value if isinstance(value, date) and not isinstance(value, datetime) else None
        if isinstance(value, str) and _ISO_DATE.fullmatch(value):
            try:
                day = date.fromisoformat(value)
            except ValueError:  # 2026-02-30
                day = None
        if day is None:
            raise entry.error(name, f"must be a date like '2026-12-25', got {value!r}")
        if day in days:
            raise entry.error(name, f"duplicate of closed_dates[{days[day]}] ({day.isoformat()})")
        days[day] = index
    return frozenset(days)


# --- building the merged rules ------------------------------------------------------------------


def _build(draft: _Draft, sources: tuple[str, ...]) -> Rules:
    default_timezone = draft.default_timezone or "UTC"
    sip_codes: dict[int, SipRule] = {}
    sip_classes: dict[int, SipRule] = {}
    for code, (row, entry) in draft.sip.items():
        recall_after = row.get("recall_after") if row["recall"] else None
        if row["recall"] and recall_after is None:
            raise entry.error("recall_after", "required when recall is true")
        rule = SipRule(
            code=code,
            description=row["description"],
            active=row["active"],
            recall=row["recall"],
            recall_after=recall_after,
            builtin=row["builtin"],
        )
        if isinstance(code, str):
            sip_classes[SIP_CLASSES[code]] = rule
        else:
            sip_codes[code] = rule

    outcomes: dict[str, Outcome] = {}
    for code, (row, entry) in draft.outcomes.items():
        timed = row["recall"] in TIMED_POLICIES
        recall_after = row.get("recall_after") if timed else None
        if timed and recall_after is None:
            raise entry.error("recall_after", f"required when recall is {row['recall']!r}")
        outcomes[code] = Outcome(
            code=code,
            kind=row["kind"],
            description=row["description"],
            recall=row["recall"],
            recall_after=recall_after,
            not_same_day=row.get("not_same_day", False),
        )

    plans: dict[str, Plan] = {}
    for plan_id, (row, entry) in draft.plans.items():
        system_recalls: dict[str, Duration] = row.get("system_recalls", {})
        for code in system_recalls:
            known = outcomes.get(code)
            if known is None or known.kind != "system":
                outcome_entry = draft.outcomes[code][1] if code in draft.outcomes else None
                if outcome_entry is not None and entry.file == sources[0] != outcome_entry.file:
                    # The shipped plan is fine; the operator's file changed the outcome under it.
                    raise outcome_entry.error(
                        "kind", f"plan {plan_id}'s system_recalls needs it to stay 'system'"
                    )
                raise entry.error(f"system_recalls.{code}", "not a system outcome code")
        plans[plan_id] = Plan(
            id=plan_id,
            can_recall=row.get("can_recall", True),
            timezone=row.get("timezone", default_timezone),
            system_recalls=MappingProxyType(dict(system_recalls)),
            calling_hours=row.get("calling_hours"),
            max_attempts=row.get("max_attempts", ()),
            max_recalls=row.get("max_recalls"),
            lead_max_attempts=row.get("lead_max_attempts", ()),
            closed_dates=row.get("closed_dates", frozenset()),
        )

    return Rules(
        default_timezone=default_timezone,
        sip_codes=MappingProxyType(dict(sorted(sip_codes.items()))),
        sip_classes=MappingProxyType(dict(sorted(sip_classes.items()))),
        outcomes=MappingProxyType(outcomes),
        plans=MappingProxyType(plans),
        sources=sources,
    )


def load_rules(path: Path | str | None = None, *, defaults: Path = DEFAULT_RULES_PATH) -> Rules:
    """Load the shipped defaults and merge the operator's file at ``path`` (if any) over them.

    Raises ``RulesError`` with a one-line message if either file is unusable.
    """
    draft = _Draft()
    _merge_file(draft, defaults, builtin=True)
    sources = [str(defaults)]
    if path is not None:
        _merge_file(draft, Path(path), builtin=False)
        sources.append(str(path))
    return _build(draft, tuple(sources))


def rules_from_text(text: str, name: str, *, defaults: Path = DEFAULT_RULES_PATH) -> Rules:
    """``load_rules`` of a rules file named ``name`` that holds ``text``, merged over the defaults.

    Checked exactly as ``recall rules check`` checks a file: the same ``RulesError`` line, the
    file named ``name`` in it.
    """
    draft = _Draft()
    _merge_file(draft, defaults, builtin=True)
    _merge_file(draft, name, builtin=False, data=_read_text(name, text))
    return _build(draft, (str(defaults), name))


def rules_from_export(text: str, name: str) -> Rules:
    """The rules a complete export holds (``recall rules export``, a version's stored text).

    Loaded as they are, not merged over today's shipped defaults, so that a version stored before
    the defaults changed loads back to the same version. A SIP row is built-in when today's
    shipped defaults have its code. ``name`` is what ``sources`` holds, and names the text in an
    error.
    """
    draft = _Draft()
    _merge_file(draft, name, builtin=True, data=_read_text(name, text))
    rules = _build(draft, (name,))
    shipped = _shipped()

    def marked(rows: Mapping[Any, SipRule], known: Mapping[Any, SipRule]) -> Mapping[Any, SipRule]:
        return MappingProxyType(
            {code: replace(row, builtin=code in known) for code, row in rows.items()}
        )

    return replace(
        rules,
        sip_codes=marked(rules.sip_codes, shipped.sip_codes),
        sip_classes=marked(rules.sip_classes, shipped.sip_classes),
    )


@cache
def _shipped() -> Rules:
    return load_rules()
