"""Commands that use the broker and the database: worker, publish, phones, dead-letters, db."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from config.settings import get_settings, mask_url
from worker.cli.common import (
    CommandError,
    echo_json,
    json_option,
    plural,
    read_rules,
    rules_option,
    use_rules_file,
)
from worker.names import WORKER_QUEUES
from worker.replay.sources import SourceError, UnreadableRow, check_files, iter_records
from worker.runtime.status import Status, broker_error, check_broker, collect, rules_note
from worker.store.database import (
    DatabaseNotReady,
    database_url,
    ensure_migrated,
    get_engine,
    session_scope,
    upgrade,
)

# How long `recall publish` waits for the broker before it gives up (as `recall status` does).
BROKER_TIMEOUT_S = 2.0


def ready_database(*, migrate: bool) -> None:
    """Migrate (embedded default) or check (production) the database, with a one-line error."""
    settings = get_settings()
    try:
        if migrate:
            upgrade(database_url(settings))
        ensure_migrated(get_engine())
    except DatabaseNotReady as error:
        raise CommandError(str(error)) from None


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=True,
)
@click.option("--no-beat", is_flag=True, help="Do not run the periodic dispatcher in this worker.")
@rules_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(no_beat: bool, rules_path: Path | None, celery_args: tuple[str, ...]) -> None:
    """Run the worker (ingestion and recall firing) with the periodic dispatcher.

    Any further options go to `celery worker` (e.g. --concurrency 4, --loglevel DEBUG). With no
    RECALL_BROKER_URL and RECALL_DATABASE_URL, an embedded Redis and SQLite under RECALL_HOME are
    started and migrated; otherwise the database must already be at the latest migration.

    Single-event messages are stored up to RECALL_INGEST_FLUSH_COUNT (50) at a time, in one
    transaction, each held at most RECALL_INGEST_FLUSH_MS (20); each pool process reserves
    RECALL_INGEST_FLUSH_COUNT messages (the prefetch multiplier).
    """
    use_rules_file(rules_path)
    settings = get_settings()
    read_rules(settings.rules_path)
    ready_database(migrate=settings.embedded)
    from worker.app import app

    broker = app.conf.broker_url
    click.echo(
        f"recall worker: broker {mask_url(broker)}, database {mask_url(database_url(settings))},"
        f" rules {settings.rules_path or 'shipped defaults'}",
        err=True,
    )
    argv = ["worker", "--loglevel", "INFO", "-Q", ",".join(WORKER_QUEUES)]
    if not no_beat:
        argv += ["--beat", "--schedule", str(settings.ready_home() / "celerybeat-schedule")]
    try:
        app.worker_main([*argv, *celery_args])
    finally:
        if settings.embedded:
            from worker.runtime.embedded_redis import release_embedded_broker

            release_embedded_broker(app)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Send lists of N events to recall.process_call_results (default: one per message).",
)
def publish(files: tuple[Path, ...], batch: int | None) -> None:
    """Publish call results from JSON Lines or CSV files (.gz too), as the dialer would.

    Each record is sent as it is; the worker validates it, so a bad one ends in the dead letters.
    A CSV row that cannot be delimited (a quote left open) has no record to send: it is listed on
    stderr with its file and line, and publishing goes on.
    """
    from kombu.exceptions import KombuError

    from worker.app import app
    from worker.client import RecallClient, batched

    try:  # a missing file or an unrecognised CSV header, before anything is sent
        check_files(files)
    except SourceError as error:
        raise CommandError(str(error)) from None
    client = RecallClient(app=app)
    broker = app.conf.broker_url
    _reach_broker(app, broker)
    sent = messages = unreadable = 0

    def records(path: Path) -> Iterator[object]:
        nonlocal unreadable
        for number, record in iter_records(path):
            if isinstance(record, UnreadableRow):
                unreadable += 1
                click.echo(f"not published: {path}:{number}: {record.detail}", err=True)
            else:
                yield record

    try:
        for path in files:
            if batch is None:
                for record in records(path):
                    client.publish(record)
                    sent += 1
                    messages += 1
            else:  # batch by batch, so that what was sent before a read error is known
                for chunk in batched(records(path), batch):
                    client.publish_many(chunk, batch=batch)
                    sent += len(chunk)
                    messages += 1
    except SourceError as error:
        raise CommandError(f"{error} ({sent} events published before this)") from None
    except (KombuError, OSError) as error:  # the broker went away meanwhile
        raise CommandError(
            f"broker {mask_url(broker)}: {broker_error(error, broker)}"
            f" ({sent} events published before the error)"
        ) from None
    rows = "1 unreadable row" if unreadable == 1 else f"{unreadable} unreadable rows"
    skipped = f"; {rows} not published (listed above)" if unreadable else ""
    click.echo(f"published {sent} events in {messages} messages to {mask_url(broker)}{skipped}")


def _reach_broker(app: Any, url: str) -> None:
    """Refuse, in one line, a broker that cannot be reached, before anything is read or sent."""
    try:
        check_broker(app, BROKER_TIMEOUT_S).release()
    except Exception as error:
        raise CommandError(
            f"cannot reach the broker {mask_url(url)}: {broker_error(error, url)}"
        ) from None


@click.group("db")
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the database to the latest migration (safe to run again)."""
    url = database_url(get_settings())
    try:
        revision = upgrade(url)
    except DatabaseNotReady as error:
        raise CommandError(str(error)) from None
    click.echo(f"database {mask_url(url)} is at migration {revision}")


@click.group()
def phones() -> None:
    """Lead phones: eligibility, pending recall and last decision; claims of eligible ones."""


@phones.command("show")
@click.argument("phone_id")
@json_option
def phones_show(phone_id: str, as_json: bool) -> None:
    """Show one phone."""
    from worker.store.queries import phone

    ready_database(migrate=False)
    with session_scope() as session:
        found = phone(session, phone_id)
    if found is None:
        raise CommandError(f"no phone {phone_id!r}")
    if as_json:
        echo_json(found)
        return
    for key, value in found.items():
        if key == "last_decision" and value:
            value = f"{value['action']} ({value['reason']}): {value['explanation']}"
        elif key == "pending_recall" and value:
            agent = f", agent {value['agent']}" if value["agent"] else ""
            value = f"due {value['due_at']} by {value['rule']} ({value['source']}{agent})"
        click.echo(f"{key:<15} {value if value is not None else '-'}")


@phones.command("list")
@click.option("--eligible", is_flag=True, help="Only dial-eligible phones.")
@click.option("--waiting", is_flag=True, help="Only phones with a pending recall.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@json_option
def phones_list(eligible: bool, waiting: bool, limit: int, as_json: bool) -> None:
    """List phones (all, --eligible or --waiting), in id order.

    When there are more than --limit, "showing N of M phones" is said on stderr.
    """
    from worker.store.queries import PhoneFilter, count_phones
    from worker.store.queries import phones as list_phones

    if eligible and waiting:
        # A phone waiting for a recall is not eligible: together they would list nothing.
        raise click.UsageError("--eligible and --waiting cannot be used together")
    which: PhoneFilter = "eligible" if eligible else "waiting" if waiting else "all"
    ready_database(migrate=False)
    with session_scope() as session:
        rows = list_phones(session, which, limit)
        total = count_phones(session, which) if len(rows) == limit else len(rows)
    if as_json:
        echo_json(rows)
    else:
        for row in rows:
            pending = row["pending_recall"]
            state = "eligible" if row["eligible"] else ("waiting" if pending else "-")
            due = pending["due_at"] if pending else (row["eligible_at"] or "")
            click.echo(f"{row['phone_id']:<24} {row['plan_id']:<12} {state:<9} {due}")
    if total > len(rows):
        click.echo(f"showing {len(rows):,} of {plural(total, 'phone')} (--limit)", err=True)


def _user() -> str:
    """Who runs the command: the login name, else the user id (a container may have no name)."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


@phones.command("claim")
@click.option("--plan", "plan_id", required=True, help="The plan (campaign) to claim phones of.")
@click.option("--limit", default=10, show_default=True, help="At most this many phones (1-1000).")
@click.option(
    "--lease",
    "lease_s",
    default=300,
    show_default=True,
    help="Seconds each phone stays leased to this claim (1-86400).",
)
@json_option
def phones_claim(plan_id: str, limit: int, lease_s: int, as_json: bool) -> None:
    """Lease eligible phones of a plan, as a dialer's hopper takes them.

    Each phone comes with a lease id and the time its lease ends. Callbacks come first, then the
    phones eligible longest. No other claim gets a phone until its lease ends or a call result
    for it arrives. The claimant is recorded as cli:<user>.
    """
    from worker.store.claims import claim_phones

    ready_database(migrate=False)
    try:
        with session_scope() as session:
            claimed = claim_phones(session, plan_id, limit=limit, lease_s=lease_s,
                                   now=datetime.now(UTC), claimant=f"cli:{_user()}")  # fmt: skip
    except ValueError as error:
        raise CommandError(str(error)) from None
    if as_json:
        echo_json([claim.to_json() for claim in claimed])
        return
    for claim in claimed:
        why = claim.reason or "-"
        if claim.agent:
            why += f" ({claim.agent})"
        until = claim.leased_until.isoformat()
        click.echo(f"{claim.phone_id:<24} {why:<24} lease {claim.lease_id} until {until}")
    if not claimed:
        click.echo(f"no phone of plan {plan_id!r} is eligible and unclaimed", err=True)


@click.group("dead-letters")
def dead_letters() -> None:
    """Rejected events kept with their reason: list them, replay them after a fix."""


@dead_letters.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed letters.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@json_option
def dead_letters_list(include_replayed: bool, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first.

    How many there are is said on stderr ("showing N of M" when there are more than --limit).
    """
    from worker.store.queries import count_dead_letters
    from worker.store.queries import dead_letters as query

    ready_database(migrate=False)
    with session_scope() as session:
        rows = query(session, include_replayed=include_replayed, limit=limit)
        total = (
            count_dead_letters(session, include_replayed=include_replayed)
            if len(rows) == limit
            else len(rows)
        )
    if as_json:
        echo_json(rows)
    else:
        for row in rows:
            click.echo(f"{row['id']:>6} {row['received_at']} {row['reason']:<14} {row['detail']}")
    if total > len(rows):
        click.echo(f"showing {len(rows):,} of {plural(total, 'dead letter')} (--limit)", err=True)
    elif not as_json:
        click.echo(plural(total, "dead letter"), err=True)


@dead_letters.command("replay")
@click.option("--id", "ids", type=int, multiple=True, help="Replay only this letter (repeatable).")
@rules_option
@json_option
def dead_letters_replay(ids: tuple[int, ...], rules_path: Path | None, as_json: bool) -> None:
    """Run the dead letters through validation and the rules again (e.g. after a rules fix)."""
    from worker.store.ingest import replay_dead_letters_in_force
    from worker.store.queries import dead_letters_problem

    rules = read_rules(rules_path)
    ready_database(migrate=False)
    now = datetime.now(UTC)
    with session_scope() as session:
        problem = dead_letters_problem(session, ids)
        if problem is not None:
            raise CommandError(problem)
        result = replay_dead_letters_in_force(
            session, rules, now, ids, skew_s=get_settings().clock_skew_s
        )
    if as_json:
        echo_json(result)
        return
    click.echo(
        f"{plural(result['taken'], 'dead letter')} taken, {result['still_refused']:,} still refused"
    )


@click.command()
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for the broker and for workers to answer.")  # fmt: skip
@rules_option
@json_option
def status(timeout: float, rules_path: Path | None, as_json: bool) -> None:
    """Workers, queues, recalls and dead letters at a glance; exit 1 when unhealthy."""
    from worker.app import app

    use_rules_file(rules_path)
    settings = get_settings()
    result = collect(settings, app, timeout=timeout)
    if settings.embedded:
        from worker.runtime.embedded_redis import release_embedded_broker

        release_embedded_broker(app)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_status_text(result))
    sys.exit(0 if result.healthy else 1)


def _status_text(result: Status) -> str:
    """``recall status`` as aligned lines; what the database could not tell is "unknown"."""
    data = result.to_json()
    recalls = data["recalls"]
    if recalls["pending"] is None:
        recalls_line = "unknown"
    else:
        recalls_line = (
            f"{recalls['pending']} pending, {recalls['due_next_hour']} due in the next hour,"
            f" {recalls['overdue']} overdue"
        )
        if recalls["overdue"]:
            recalls_line += f" (oldest due {recalls['oldest_overdue_due_at']})"
        if recalls["held"]:
            running = data["replays_running"]
            recalls_line += (
                f"; {recalls['held']} held (oldest due {recalls['oldest_held_due_at']}),"
                f" {plural(running, 'replay')} running"
            )
    letters = data["dead_letters_new"]
    state = data["rules_in_force"]
    if state is None:
        in_force_line = "unknown"
    elif state["version"] is None:
        in_force_line = (
            "none recorded yet (a worker records its rules file's version when it starts)"
        )
    else:
        by = f" by {state['author']}" if state["author"] else ""
        said = f" ({state['comment']})" if state["comment"] else ""
        in_force_line = (
            f"{state['version']} since {state['in_force_since']}, from {state['source']}{by}{said}"
        )
    lines = [
        f"status          {'healthy' if result.healthy else 'UNHEALTHY'}",
        f"broker          {data['broker']}",
        f"database        {data['database']}",
        f"rules           {data['rules']}",
        f"rules in force  {in_force_line}",
        *([f"                {note}"] if state and (note := rules_note(state)) else []),
        f"workers         {len(result.workers)}: {', '.join(result.workers) or '-'}",
        "queues          "
        + (", ".join(f"{name} {depth}" for name, depth in result.queues.items()) or "-"),
        f"recalls         {recalls_line}",
        f"dead letters    {'unknown' if letters is None else f'{letters} new'}",
    ]
    lines += [f"problem         {problem}" for problem in result.problems]
    return "\n".join(lines)
