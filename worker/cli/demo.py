"""``recall demo``: the Quick start: a worker on the embedded default, fed a sample, watched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from config.settings import get_settings
from worker.app import app
from worker.cli.common import CommandError, plural
from worker.cli.services import ready_database
from worker.client import RecallClient
from worker.replay.sources import iter_records
from worker.runtime.embedded_redis import release_embedded_broker
from worker.store.database import session_scope
from worker.store.queries import activity

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "demo"
# The bundled sample's clock: its events happened just before this instant, and the demo moves
# them to just before "now", so that their short recall times fall due while you watch.
SAMPLE_ANCHOR = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _rebased(record: object, shift: timedelta) -> object:
    if isinstance(record, dict) and isinstance(record.get("occurred_at"), str):
        try:
            moment = datetime.fromisoformat(record["occurred_at"])
        except ValueError:
            return record
        if moment.tzinfo is not None:
            return {**record, "occurred_at": (moment + shift).isoformat()}
    return record


def _local(moment: datetime, now: datetime | None = None) -> str:
    """``moment`` in local time: the time of day, with the date when it is not today."""
    local = moment.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%a %Y-%m-%d %H:%M:%S")


@click.command()
@click.option("--seconds", type=click.IntRange(min=10), default=150, show_default=True,
              help="Stop after this long even if recalls are still pending.")  # fmt: skip
@click.option("--sample", type=click.Path(dir_okay=False, path_type=Path),
              default=SAMPLES / "demo.jsonl", show_default=True)  # fmt: skip
def demo(seconds: int, sample: Path) -> None:
    """Start a worker on the embedded default, publish a sample, and show decisions and firings.

    The sample's times are moved to just before now and the demo rules (config/demo/demo_rules.toml)
    shorten recall times, so recalls fire within a minute or two.
    """
    settings = get_settings()
    if not settings.embedded:
        raise CommandError("the demo runs on the embedded default: unset RECALL_BROKER_URL and "
                           "RECALL_DATABASE_URL")  # fmt: skip
    os.environ.setdefault("RECALL_RULES", str(SAMPLES / "demo_rules.toml"))
    ready_database(migrate=True)
    click.echo(f"recall demo: home {settings.home}, rules {os.environ['RECALL_RULES']}")
    click.echo(
        f"starting the embedded Redis and a worker (log: {settings.home / 'demo-worker.log'})"
    )
    broker = app.conf.broker_url  # starts the embedded Redis, which the worker then joins
    log = (settings.home / "demo-worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--concurrency", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        shift = datetime.now(UTC) - SAMPLE_ANCHOR
        records = [_rebased(record, shift) for _, record in iter_records(sample)]
        client = RecallClient(app=app)
        for record in records:
            client.publish(record)
        click.echo(f"published {len(records)} call results from {sample} to {broker}\n")
        _watch(worker, seconds)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        release_embedded_broker(app)
    click.echo(
        "\nNext: `recall phones list --eligible`, `recall phones show PHONE_ID`,"
        " `recall dead-letters list` (same RECALL_HOME), or `recall worker` to keep going."
    )


def _watch(worker: subprocess.Popen[bytes], seconds: int) -> None:
    shown_events: set[str] = set()
    shown_fired: set[str] = set()
    shown_letters: set[int] = set()
    deadline = time.monotonic() + seconds
    quiet_since: float | None = None
    while True:
        # Looked at once more when the time is up: what happened in the last second counts too.
        over = time.monotonic() >= deadline
        if worker.poll() is not None:
            raise CommandError(f"the worker stopped (exit {worker.returncode}); see its log")
        with session_scope() as session:
            seen = activity(session, datetime.now(UTC) + timedelta(minutes=3))
        events, fired, letters = seen.decisions, seen.fired, seen.letters
        for event_id, phone_id, decision in events:
            if event_id in shown_events:
                continue
            shown_events.add(event_id)
            due = decision.get("due_at")
            when = f" due {_local(datetime.fromisoformat(due))}" if due else ""
            click.echo(
                f"decided  {phone_id:<14} {decision['action']:<9} {decision['reason']:<22}{when}"
            )
        for recall_id, phone_id, due_at, fired_at in fired:
            if recall_id in shown_fired or fired_at is None:
                continue
            shown_fired.add(recall_id)
            late = (fired_at - due_at).total_seconds()
            click.echo(
                f"fired    {phone_id:<14} eligible at {_local(fired_at)}"
                f" (due {_local(due_at)}, {late:+.1f}s)"
            )
        for letter_id, reason, detail in letters:
            if letter_id not in shown_letters:
                shown_letters.add(letter_id)
                click.echo(f"rejected dead letter {letter_id}: {reason}: {detail}")
        if over:
            break
        if shown_events and not seen.due_soon:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 3:
                break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    click.echo(
        f"\n{plural(len(shown_events), 'call result')} decided,"
        f" {plural(len(shown_fired), 'recall')} fired, {plural(len(shown_letters), 'dead letter')}"
    )
