"""``recall sample``: write a generated, realistic call-result history (seeded, repeatable)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from worker.cli.common import CommandError
from worker.cli.outputs import Outputs
from worker.replay import sample as generator


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="FILE.jsonl or FILE.csv (add .gz to compress).")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option("--leads", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--start", "start_text", metavar="ISO", default="2026-03-23T00:00:00+00:00",
              show_default=True, help="First day of the history (with offset).")  # fmt: skip
@click.option("--callbacks", is_flag=True,
              help="Agents' CALLBACKs book times (callback_at, some callback_agent).")  # fmt: skip
def sample(
    output: Path, seed: int, leads: int, days: int, start_text: str, callbacks: bool
) -> None:
    """Generate a call-result history for LEADS leads over DAYS days, in event-time order."""
    try:
        start = datetime.fromisoformat(start_text)
    except ValueError:
        raise CommandError(f"--start: not an ISO-8601 date and time: {start_text!r}") from None
    if start.tzinfo is None:
        raise CommandError(f"--start: no UTC offset in {start_text!r}")
    with Outputs([]) as outputs:
        written = outputs.add("-o", output)  # ends in output's name: .gz still compresses
        assert written is not None
        events = generator.generate(
            seed=seed, leads=leads, start=start, days=days, callbacks=callbacks
        )
        if ".csv" in output.suffixes:
            columns = generator.CALLBACK_CSV_COLUMNS if callbacks else generator.CSV_COLUMNS
            count = generator.write_csv(events, written, columns)
        else:
            count = generator.write_jsonl(events, written)
    click.echo(f"wrote {count} events to {output}")
