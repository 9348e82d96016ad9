"""``recall rules check|show|export|history|diff|preview``: the effective rules, their history.

``history``, ``diff`` and ``preview`` read the rules versions and call results the database
keeps (DESIGN.md section 9); the other commands need no database (and load no SQLAlchemy).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from worker.cli.common import (
    CommandError,
    echo_json,
    json_option,
    parse_now,
    read_rules,
    rules_option,
)
from worker.cli.outputs import writes_files
from worker.domain.rules import Rules


@click.group()
def rules() -> None:
    """Check, show or export the effective rules (the defaults with your file merged over), read
    the versions in force so far and what changed between two, or preview a change."""


@rules.command()
@rules_option
@json_option
def check(rules_path: Path | None, as_json: bool) -> None:
    """Validate the rules; exit 1 with a one-line reason if they are broken."""
    loaded = read_rules(rules_path)
    counts = {
        "sip_codes": len(loaded.sip_codes),
        "sip_classes": len(loaded.sip_classes),
        "outcomes": len(loaded.outcomes),
        "plans": len(loaded.plans),
    }
    if as_json:
        echo_json(
            {"ok": True, "sources": list(loaded.sources), **counts, "version": loaded.version}
        )
        return
    click.echo(
        f"rules OK ({' + '.join(loaded.sources)}): {counts['sip_codes']} SIP codes, "
        f"{counts['sip_classes']} class fallbacks, {counts['outcomes']} outcomes, "
        f"{counts['plans']} plans ({', '.join(loaded.plans)}); version {loaded.version}"
    )


@rules.command()
@rules_option
@json_option
def show(rules_path: Path | None, as_json: bool) -> None:
    """Show the effective rules as tables, with their version (or as JSON: the rules' tables)."""
    loaded = read_rules(rules_path)
    if as_json:
        echo_json(loaded.to_toml_data())
        return
    click.echo(render(loaded))


@rules.command()
@rules_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE."
)
@writes_files({"output": "-o"}, {"rules_path": "the --rules file"})
def export(rules_path: Path | None, output: Path | None) -> None:
    """Write the effective rules as one complete TOML rules file."""
    text = read_rules(rules_path).export_text()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@rules.command()
@json_option
def history(as_json: bool) -> None:
    """List the rules versions in force so far, newest first, from the database.

    Each with when it came into force and where from: the worker's rules file (or the shipped
    defaults), an edit through the API or the console, an applied replay, a dead-letters replay,
    and its author and comment if any. The newest from a file or an edit is in force.
    """
    from worker.cli.services import ready_database
    from worker.store.database import session_scope
    from worker.store.rules_versions import rules_history

    ready_database(migrate=False)
    with session_scope() as session:
        rows = rules_history(session)
    if as_json:
        echo_json([row.to_json() for row in rows])
        return
    if not rows:
        click.echo("no rules version recorded yet", err=True)
        return
    for row in rows:
        by = "".join(
            f"  {label} {value}"
            for label, value in (("by", row.author), ("comment:", row.comment))
            if value
        )
        click.echo(f"{row.version}  {row.in_force_since.isoformat()}  {row.source}{by}")


@rules.command()
@click.argument("old")
@click.argument("new")
@json_option
def diff(old: str, new: str, as_json: bool) -> None:
    """Show what changed from rules version OLD to NEW, entry by entry, field by field.

    OLD and NEW are versions from `recall rules history` (a unique prefix will do). Each SIP
    code, outcome and plan (and the defaults) added, removed or changed is listed with its
    fields as `field: old -> new` (`-`: no value).
    """
    from worker.cli.services import ready_database
    from worker.domain.rules_diff import diff_exports
    from worker.store.database import session_scope
    from worker.store.rules_versions import UnknownVersion, find_version

    ready_database(migrate=False)
    with session_scope() as session:
        try:
            before, after = find_version(session, old), find_version(session, new)
        except UnknownVersion as error:
            raise CommandError(str(error)) from None
    changes = diff_exports(before.rules, after.rules)
    if as_json:
        echo_json(
            {
                "from": before.version,
                "to": after.version,
                "changes": [change.to_json() for change in changes],
            }
        )
        return
    count = f"{len(changes)} {'entry' if len(changes) == 1 else 'entries'} changed"
    click.echo(f"rules {before.version} -> {after.version}: {count}")
    for change in changes:
        click.echo(f"{change.section} {change.entry}: {change.change}")
        for field in change.fields:
            click.echo(f"  {field}")


@rules.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=7,
    show_default=True,
    help="Look back over the call results of this many days.",
)
@click.option("--now", "now_text", metavar="ISO", help="End of the window (default: now).")
@json_option
def preview(file: Path, days: int, now_text: str | None, as_json: bool) -> None:
    """What the rules FILE (merged over the shipped defaults, as RECALL_RULES is) would have
    decided, against the version in force, over the call results the database holds.

    The events that occurred in the last --days days are replayed dry, in event-time order,
    under both (as `recall replay --compare` does): the summaries side by side and the decisions
    that differ. Nothing is written. Before any version is in force, the comparison is with the
    rules the workers will put in force when they start (RECALL_RULES, else the shipped
    defaults), as the API's preview does.
    """
    from config.settings import get_settings
    from worker.cli.replay import _text
    from worker.cli.services import ready_database
    from worker.domain.rules import RulesError
    from worker.replay.preview import preview_rules
    from worker.store.database import session_scope
    from worker.store.rules_versions import in_force, rules_of

    proposed = read_rules(file)
    now = parse_now(now_text)
    ready_database(migrate=False)
    started = time.monotonic()
    with session_scope() as session:
        row = in_force(session)
        if row is None:
            path = get_settings().rules_path
            current = read_rules(path)
            rules_file = f"the rules file {path}" if path else "the shipped default rules"
            against = f"{rules_file} (no version in force yet)"
        else:
            try:
                current = rules_of(row)
            except RulesError as error:
                raise CommandError(str(error)) from None
            against = f"the version in force {row.version} ({row.source})"
        result = preview_rules(session, proposed, current, days=days, now=now)
    if as_json:
        echo_json(result)
        return
    elapsed = time.monotonic() - started
    events = result["summary"]["events"]
    shown = {**result, "elapsed_s": elapsed, "events_per_s": round(events / max(elapsed, 1e-9))}
    click.echo(
        f"preview of {file} against {against}, over the call results of {result['since']} to"
        f" {result['until']}"
    )
    click.echo(_text({**shown, "rejections_sample": []}))


def render(loaded: Rules) -> str:
    """The rules as plain-text tables for a person."""
    lines = [
        f"sources: {' + '.join(loaded.sources)}",
        f"version: {loaded.version}",
        f"default timezone: {loaded.default_timezone}",
    ]
    lines += ["", "SIP codes (code  active  recall  description)"]
    for row in [*loaded.sip_codes.values(), *loaded.sip_classes.values()]:
        recall = f"after {row.recall_after}" if row.recall else "no"
        active = "yes" if row.active else "no"
        origin = "" if row.builtin else "  [added]"
        lines.append(f"  {row.code!s:<5} {active:<6} {recall:<12} {row.description}{origin}")
    lines += ["", "Outcomes (code  kind  recall  description)"]
    for outcome in loaded.outcomes.values():
        recall = outcome.recall
        if outcome.recall == "after":
            recall = f"after {outcome.recall_after}"
        elif outcome.recall == "callback":  # at the event's callback_at, else after recall_after
            recall = f"callback/{outcome.recall_after}"
        lockout = "  [not same day]" if outcome.not_same_day else ""
        lines.append(
            f"  {outcome.code:<11} {outcome.kind:<6} {recall:<12} {outcome.description}{lockout}"
        )
    for plan in loaded.plans.values():
        lines += ["", f"Plan {plan.id}"]
        lines.append(f"  can_recall:     {'yes' if plan.can_recall else 'no'}")
        lines.append(f"  timezone:       {plan.timezone}")
        recalls = ", ".join(f"{code} after {d}" for code, d in plan.system_recalls.items())
        lines.append(f"  system_recalls: {recalls or '-'}")
        hours = plan.calling_hours.describe() if plan.calling_hours else None
        shown = ", ".join(f"{day} {text}" for day, text in hours.items()) if hours else "always"
        lines.append(f"  calling_hours:  {shown}")
        caps = ", ".join(str(cap) for cap in plan.max_attempts)
        lines.append(f"  max_attempts:   {caps or '-'}")
        caps = ", ".join(str(cap) for cap in plan.lead_max_attempts)
        lines.append(f"  lead_max_attempts: {caps or '-'}")
        closed = ", ".join(day.isoformat() for day in sorted(plan.closed_dates))
        lines.append(f"  closed_dates:   {closed or '-'}")
        lines.append(
            f"  max_recalls:    {plan.max_recalls if plan.max_recalls is not None else '-'}"
        )
    return "\n".join(lines)
