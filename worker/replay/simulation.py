"""The dry replay: the one timeline in memory on a simulated clock, its summary and its what-if.

Recalls fire as the simulated clock passes them; ``simulate`` runs a sorted history to the end
(``--now``), under a second rule set too when comparing (``Comparison``).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from worker import ending
from worker.domain.engine import Decision, phone_zone, timezone
from worker.domain.events import CallResult
from worker.domain.phone import attempt_lookback
from worker.domain.rules import Rules
from worker.domain.timeline import Timeline
from worker.domain.zones import epoch_us
from worker.replay.sorting import Position

__all__ = [
    "LINES_BUFFER",
    "Comparison",
    "Difference",
    "JsonLinesWriter",
    "OnDecision",
    "Simulation",
    "Summary",
    "finish",
    "simulate",
    "summary_json",
    "what_if_json",
]


# Delay histogram resolution: one bucket per minute up to a day, then per hour (bounded memory).
_DAY_MINUTES = 24 * 60


@dataclass
class Summary:
    """Running counts over a replay, kept in bounded memory.

    Each decision is counted once, by the tuple of what the summary reports of it, and the
    sections (``actions``, ``reasons``...) are read from those counts: one count per event
    rather than one per section. Sections list their keys in the order first met, as counting
    each section as it went would.
    """

    events: int = 0
    #: (action, reason, source) -> decisions.
    decided: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    #: (SIP class, adjustments) -> recalls.
    recalled: Counter[tuple[int, tuple[str, ...]]] = field(default_factory=Counter)
    recalls_by_local_hour: Counter[int] = field(default_factory=Counter)
    delay_minutes: Counter[int] = field(default_factory=Counter)
    fired: int = 0
    dead_letters: int = 0
    #: Of the dead letters, events that lay after the replay's --now (beyond the clock skew).
    after_now: int = 0

    def add(self, event: CallResult, decision: Decision, zone: str, at: int | None = None) -> None:
        """Count ``decision`` for ``event`` (``at``: its time in epoch microseconds, if known)."""
        self.events += 1
        self.decided[decision.action, decision.reason, decision.source] += 1
        if decision.action != "recall" or decision.due_at is None:
            return
        self.recalled[event.sip_code // 100, decision.adjustments] += 1
        # Reporting only, no schedule arithmetic: the standard library's C code is much faster.
        # An aware datetime's timestamp() is its epoch microseconds divided by a million.
        occurred = event.occurred_at.timestamp() if at is None else at / 1_000_000
        delay = (decision.due_timestamp() - occurred) / 60
        minutes = int(delay) if delay < _DAY_MINUTES else int(delay // 60) * 60
        self.delay_minutes[minutes] += 1
        due, tz = decision.due_at, timezone(zone)
        # The engine gives the due time in the phone's zone already.
        self.recalls_by_local_hour[(due if due.tzinfo is tz else due.astimezone(tz)).hour] += 1

    @property
    def actions(self) -> Counter[str]:
        return _section(self.decided, lambda key: (key[0],))

    @property
    def reasons(self) -> Counter[str]:
        return _section(self.decided, lambda key: (key[1],))

    @property
    def sources(self) -> Counter[str]:
        return _section(self.decided, lambda key: () if key[2] is None else (key[2],))

    @property
    def recalls_by_sip_class(self) -> Counter[str]:
        return _section(self.recalled, lambda key: (f"{key[0]}xx",))

    @property
    def adjustments(self) -> Counter[str]:
        """Recalls moved by each adjustment (a recall moved by two counts under both)."""
        return _section(self.recalled, lambda key: key[1])

    def merge(self, other: Summary) -> None:
        """Add ``other``'s counts (another process's share of the phones) to these."""
        self.events += other.events
        self.decided.update(other.decided)
        self.recalled.update(other.recalled)
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
            "recalls_by_adjustment": dict(self.adjustments.most_common()),
            "recall_delay_s": {"median": median, "p95": p95},
            "recalls_fired": self.fired,
            "dead_letters": self.dead_letters,
            "events_after_now": self.after_now,
        }


def _section(counts: Counter[Any], names: Callable[[Any], tuple[str, ...]]) -> Counter[str]:
    """The counts under each of the ``names`` of their keys, in the order first met."""
    section: Counter[str] = Counter()
    for key, count in counts.items():
        for name in names(key):
            section[name] += count
    return section


class Simulation:
    """The timeline in memory on a simulated clock: recalls fire as the clock passes them."""

    def __init__(self, rules: Rules, until: datetime | None = None) -> None:
        self.rules = rules
        # The end of the simulation: the clock never passes it, even for an event within the
        # clock skew after it, so that no recall fires after --now.
        self.until = until
        self._until_us = None if until is None else epoch_us(until)
        self.timeline = Timeline(rules, until=until)
        self.phones = self.timeline.phones
        # The recalls waiting to fire, by due instant (epoch microseconds): a heap of the instants
        # (plain ints, which compare fastest; recalls often share one, an opening of the calling
        # hours) and, for each, its (recall_id, phone_id, due_at) in the order scheduled. Which
        # of the recalls due by an instant fires first does not matter: each is its own phone's.
        self._instants: list[int] = []
        self._due: dict[int, list[tuple[str, str, datetime]]] = {}
        #: Recalls in the queue, superseded ones included until compaction drops them.
        self.waiting = 0
        self.summary = Summary()
        self.lookback = attempt_lookback(rules) or timedelta(days=1)
        self._taken = 0
        self._next_compaction = 50_000

    def advance(self, until: datetime) -> None:
        """Fire every recall due at or before ``until``, at its due time."""
        self._advance(epoch_us(until))

    def _advance(self, limit: int) -> None:
        # limit: an instant in epoch microseconds, as the queue's.
        instants, due, phones = self._instants, self._due, self.phones
        while instants and instants[0] <= limit:
            instant = heapq.heappop(instants)
            recalls = due.pop(instant)
            self.waiting -= len(recalls)
            for recall_id, phone_id, due_at in recalls:
                state = phones[phone_id]
                pending = state.pending
                # Not superseded since, and not moved later by a late call: the very datetime
                # pushed or, once moved, one at this instant. (Two datetimes in one zone compare
                # by wall clock, fold ignored: a recall moved an hour on across the autumn
                # change would look unmoved.)
                if (
                    state.pending_recall_id == recall_id
                    and pending
                    and (pending.due_at is due_at or epoch_us(pending.due_at) == instant)
                ):
                    state.fire(due_at)
                    self.summary.fired += 1

    def _schedule(self, at: int, recall_id: str, phone_id: str, due_at: datetime) -> None:
        """Queue a recall to fire at instant ``at`` (epoch microseconds, ``due_at``'s)."""
        recalls = self._due.get(at)
        if recalls is None:
            self._due[at] = [(recall_id, phone_id, due_at)]
            heapq.heappush(self._instants, at)
        else:
            recalls.append((recall_id, phone_id, due_at))
        self.waiting += 1

    def take(self, event: CallResult, at: int | None = None) -> Decision:
        """Take the next event (in replay order); ``at`` is ``epoch_us(event.occurred_at)``, where
        the caller has it already (its ``Position``)."""
        # The event's time as an integer, worked out once: the clock, the engine, the phone's
        # attempts and the summary all take it.
        if at is None:
            at = epoch_us(event.occurred_at)
        end = self._until_us
        limit = at if end is None or at <= end else end
        if self._instants and self._instants[0] <= limit:  # a recall falls due first
            self._advance(limit)
        step = self.timeline.take(event, None, at=at)
        transition = step.transition
        if transition.rescheduled is not None:
            recall_id, due_at = transition.rescheduled
            self._schedule(epoch_us(due_at), recall_id, event.phone_id, due_at)
        for phone_id, recall_id, due_at in transition.moved:  # the lead's other phones
            self._schedule(epoch_us(due_at), recall_id, phone_id, due_at)
        decision = step.decision
        if transition.scheduled is not None:
            scheduled = transition.scheduled
            due_us = decision.due_us
            if due_us is None or scheduled.due_at is not decision.due_at:
                due_us = epoch_us(scheduled.due_at)
            self._schedule(due_us, scheduled.recall_id, scheduled.phone_id, scheduled.due_at)
        self.summary.add(event, decision, phone_zone(self.rules, event), at)
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
        if self.waiting > 2 * len(self.phones):
            phones, kept = self.phones, {}
            for at, recalls in self._due.items():
                current = [item for item in recalls if phones[item[1]].pending_recall_id == item[0]]
                if current:
                    kept[at] = current
            self._due, self._instants = kept, list(kept)
            heapq.heapify(self._instants)
            self.waiting = sum(map(len, kept.values()))


# Bytes buffered per file of decisions written or read back: a decision line is ~400 bytes, and
# with the default 8 KiB buffer copying them costs twice as much.
LINES_BUFFER = 1 << 20


class JsonLinesWriter:
    """Decisions (or rejections) to a JSON Lines file; nothing when no path is given."""

    def __init__(self, stack: ExitStack, path: Path | None) -> None:
        self.handle: IO[bytes] | None = (
            stack.enter_context(path.open("wb", buffering=LINES_BUFFER)) if path else None
        )

    def write(self, data: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        """A line as ``write`` would write it, encoded elsewhere (``Decision.json_line``, a
        replay process's output), as it is."""
        if self.handle is not None:
            self.handle.write(line)


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

    def add(self, event: CallResult, base: Decision, position: Position) -> None:
        other = self.simulation.take(event, position[0])
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

    Each position's first item must be its event's ``epoch_us(occurred_at)``, as
    ``sorting.Position`` defines it: the simulation takes it as the event's time (the clock, the
    caps and the delays) rather than converting again. Returns the summary, the recalls still
    pending at the end, and the what-if beside it.
    """
    simulation = Simulation(rules, until)
    comparison = Comparison(Simulation(compare_rules, until)) if compare_rules is not None else None
    for position, event in events:
        decision = simulation.take(event, position[0])
        if on_decision is not None:
            on_decision(position, decision)
        if comparison is not None:
            comparison.add(event, decision, position)
        if on_progress is not None:
            on_progress(1)
    if comparison is not None:
        comparison.pending = finish(comparison.simulation, until)
    # Every phone's state: in a process that ends at once, never freed one by one.
    ending.hold(simulation, comparison)
    return simulation.summary, finish(simulation, until), comparison


def summary_json(summary: Summary, pending: int) -> dict[str, Any]:
    """One rule set's summary, with what the text and the HTML report need besides."""
    return {
        **summary.to_json(),
        "recalls_pending": pending,
        "recalls_by_local_hour": {str(h): summary.recalls_by_local_hour[h] for h in range(24)},
        "delay_minutes_histogram": {str(k): v for k, v in sorted(summary.delay_minutes.items())},
    }


def what_if_json(
    summary: Summary, pending: int, comparison: Comparison | None, rules: Rules
) -> dict[str, Any]:
    """The rules, their summary and, when comparing, the other rules' and the differences: what
    ``recall replay --json`` prints of a simulation (and the rules preview returns)."""
    result: dict[str, Any] = {
        "rules": " + ".join(rules.sources),
        "rules_version": rules.version,
        "summary": summary_json(summary, pending),
    }
    if comparison is not None:
        other = comparison.simulation
        result["compare"] = {
            "rules": " + ".join(other.rules.sources),
            "rules_version": other.rules.version,
            "summary": summary_json(other.summary, comparison.pending),
            "differing_decisions": comparison.differing,
            "sample": [difference.to_json() for difference in comparison.sample],
        }
    return result
