"""``recall decide``: one event against the rules alone, with no history and no database."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import click
import pendulum

from config.settings import DEFAULTS, get_settings
from worker.cli.common import (
    CommandError,
    echo_json,
    json_option,
    parse_now,
    read_rules,
    rules_option,
)
from worker.domain.engine import Decision
from worker.domain.intake import Refused, decide_alone


@click.command()
@click.argument("event_file", metavar="[FILE|-]", default="-", type=click.File("rb"))
@click.option(
    "--now",
    "now_text",
    metavar="ISO",
    help="Decide as of this instant (default: the event's own occurred_at, so that the same"
    " event and rules always print the same decision). An event more than RECALL_CLOCK_SKEW_S"
    f" ({DEFAULTS['clock_skew_s']} s by default) after it is refused as invalid_event.",
)
@rules_option
@json_option
def decide(
    event_file: BinaryIO, now_text: str | None, rules_path: Path | None, as_json: bool
) -> None:
    """Print the decision for one event (a JSON object) read from FILE or standard input."""
    rules = read_rules(rules_path)
    now = parse_now(now_text) if now_text is not None else None
    try:
        event, decision = decide_alone(event_file.read(), rules, now, get_settings().clock_skew_s)
    except Refused as error:
        raise CommandError(str(error)) from None
    if as_json:
        echo_json(decision.to_json())
    else:
        click.echo(describe(decision, event.timezone or rules.plans[event.plan_id].timezone))


def describe(decision: Decision, zone: str) -> str:
    """A few aligned lines for a person reading one decision."""
    lines = []
    if decision.due_at is not None:
        local = pendulum.instance(decision.due_at).in_timezone(zone)
        shown = local.format("ddd YYYY-MM-DD HH:mm zz")
        lines.append(f"action    recall at {decision.to_json()['due_at']} ({shown})")
    else:
        lines.append(f"action    {decision.action}")
    source = decision.source or "-"
    lines.append(f"rule      {decision.rule or '-'} (source {source}, reason {decision.reason})")
    if decision.adjustments:
        lines.append(f"adjusted  {', '.join(decision.adjustments)}")
    if decision.warnings:
        lines.append(f"warnings  {', '.join(decision.warnings)}")
    lines.append(f"rules     version {decision.rules_version}")
    lines.append(f"why       {decision.explanation}")
    return "\n".join(lines)
