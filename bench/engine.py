"""Per-decision cost of the core engine, in microseconds (``make bench-engine``).

Decides a generated, realistic history (several plans, zones, booked callbacks) under the bench's
rules (bench/rules.toml: the shipped defaults with per-day and lead caps and closed dates), with
each phone's and lead's attempts kept in memory, as replay does, and prints the median, p95 and
mean cost of one ``decide`` call, and beside it the cost of validating the same events, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from worker.domain.engine import PhoneHistory, decide
from worker.domain.events import parse_event
from worker.domain.rules import load_rules
from worker.domain.zones import epoch_us
from worker.replay.sample import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rules = load_rules(Path(__file__).with_name("rules.toml"))
    raw = generate(seed=args.seed, leads=args.leads, start=datetime(2026, 3, 2, tzinfo=UTC),
                   days=args.days, callbacks=True)  # fmt: skip
    parse_costs = []
    events = []
    for record in raw:
        start = time.perf_counter_ns()
        events.append(parse_event(record))
        parse_costs.append(time.perf_counter_ns() - start)

    # Call times as epoch microseconds, as replay keeps them (PhoneState.attempts).
    attempts: dict[str, list[int]] = {}
    lead_attempts: dict[str, list[tuple[str, int]]] = {}  # (phone, time) of the lead's calls
    last: dict[str, datetime] = {}
    counts: dict[str, int] = {}
    costs = []
    for event in events:
        history = PhoneHistory(
            attempts=tuple(attempts.get(event.phone_id, ())),
            last_applied_at=last.get(event.phone_id),
            system_recalls=counts.get(event.phone_id, 0),
            lead_attempts=tuple(
                at for phone, at in lead_attempts.get(event.lead_id, ()) if phone != event.phone_id
            ),
        )
        start = time.perf_counter_ns()
        decision = decide(event, rules, history, event.occurred_at)
        costs.append(time.perf_counter_ns() - start)
        stamp = epoch_us(event.occurred_at)
        attempts.setdefault(event.phone_id, []).append(stamp)
        lead_attempts.setdefault(event.lead_id, []).append((event.phone_id, stamp))
        if decision.applies:
            last[event.phone_id] = event.occurred_at
        if decision.is_system_recall:
            counts[event.phone_id] = counts.get(event.phone_id, 0) + 1

    def show(name: str, values: list[int]) -> None:
        ordered = sorted(values)
        p95 = ordered[int(len(ordered) * 0.95)]
        print(
            f"{name:<10} median {statistics.median(ordered) / 1000:7.1f} us   "
            f"p95 {p95 / 1000:7.1f} us   mean {statistics.fmean(ordered) / 1000:7.1f} us"
        )

    print(f"{len(events)} events, {len(attempts)} phones")
    show("decide", costs)
    show("validate", parse_costs)
    print(f"engine_decide_us {statistics.median(costs) / 1000:.1f}")


if __name__ == "__main__":
    main()
