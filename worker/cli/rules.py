"""``recall rules check|show|export``: validate, read and write the effective rules."""

from __future__ import annotations

from pathlib import Path

import click
import tomli_w

from worker.cli.common import echo_json, json_option, read_rules, rules_option
from worker.cli.outputs import writes_files
from worker.domain.rules import Rules


@click.group()
def rules() -> None:
    """Check, show or export the effective rules (the defaults with your file merged over)."""


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
        echo_json({"ok": True, "sources": list(loaded.sources), **counts})
        return
    click.echo(
        f"rules OK ({' + '.join(loaded.sources)}): {counts['sip_codes']} SIP codes, "
        f"{counts['sip_classes']} class fallbacks, {counts['outcomes']} outcomes, "
        f"{counts['plans']} plans ({', '.join(loaded.plans)})"
    )


@rules.command()
@rules_option
@json_option
def show(rules_path: Path | None, as_json: bool) -> None:
    """Show the effective rules as tables (or as JSON)."""
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
    text = tomli_w.dumps(read_rules(rules_path).to_toml_data())
    header = "# Effective recall rules, exported by `recall rules export`.\n"
    if output is None:
        click.echo(header + text, nl=False)
    else:
        output.write_text(header + text, encoding="utf-8")


def render(loaded: Rules) -> str:
    """The rules as plain-text tables for a person."""
    lines = [
        f"sources: {' + '.join(loaded.sources)}",
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
        recall = f"after {outcome.recall_after}" if outcome.recall == "after" else outcome.recall
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
