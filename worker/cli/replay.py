"""``recall replay``: historical call results through the rules, dry, applied, or compared."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import DEFAULTS, get_settings
from worker import ending
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
from worker.replay.parallel import ShareFailed, default_shares, replay_in_shares
from worker.replay.simulation import (
    Comparison,
    JsonLinesWriter,
    Summary,
    simulate,
    what_if_json,
)
from worker.replay.sorting import Rejection, fewer_collections, sorted_events
from worker.replay.sources import SourceError, check_files

FILE = click.Path(dir_okay=False, path_type=Path)
# Rejections listed in the summary (all of them go to --dead-letters FILE).
SHOWN_REJECTIONS = 5


def _duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``: a time left, to the precision that matters."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def reading_line(lines: int, seconds: float) -> str:
    """The progress line while the input is read (and validated, and sorted)."""
    return f"reading {lines:,} lines  {lines / max(seconds, 1e-9):,.0f} lines/s"


def replay_line(done: int, total: int, seconds: float) -> str:
    """The progress line while ``total`` events are replayed, ``seconds`` after they started."""
    rate = done / max(seconds, 1e-9)
    left = _duration((total - done) / rate) if rate else "?"
    percent = 100 * done / max(total, 1)
    return f"replayed {done:,}/{total:,} ({percent:.0f}%)  {rate:,.0f} events/s  {left} left"


class Progress:
    """Lines read, then events replayed with rate and time left, on one refreshed line.

    Shown only when stderr is a terminal.
    """

    def __init__(self, enabled: bool, started: float) -> None:
        self.enabled, self.started = enabled, started
        self.shown, self.width = time.monotonic(), 0
        self.total = self.done = self.lines = 0
        self.replaying_since = started

    def reading(self, lines: int) -> None:
        self.lines = lines
        now = time.monotonic()
        if self._due(now):
            self._show(reading_line(lines, now - self.started))

    def replaying(self, total: int) -> None:
        """The input is read: ``total`` events to replay from now on.

        The reading line is shown once more, with every line read, however quick the reading was.
        """
        now = time.monotonic()
        if self.enabled:
            self.shown = now
            self._show(reading_line(self.lines, now - self.started))
        self.total, self.done, self.replaying_since = total, 0, now

    def tick(self, count: int = 1) -> None:
        self.at(self.done + count)

    def at(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._due(now):
            self._show(replay_line(self.done, self.total, now - self.replaying_since))

    def _due(self, now: float) -> bool:
        if not self.enabled or now - self.shown < 0.5:
            return False
        self.shown = now
        return True

    def _show(self, line: str) -> None:
        click.echo(f"\r{line:<{self.width}}", nl=False, err=True)
        self.width = max(self.width, len(line))

    def close(self) -> float:
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
        return time.monotonic() - self.started


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Decide in memory; write nothing to the database.")
@click.option("--output", type=FILE, help="Write every decision to FILE.jsonl.")
@click.option(
    "--compare",
    "compare_path",
    type=FILE,
    help="What-if: replay under these rules too and show what differs (a dry run).",
)
@click.option("--report", type=FILE, help="Write a self-contained HTML report to FILE.html.")
@click.option(
    "--dead-letters",
    "rejects_path",
    type=FILE,
    help="Write rejected rows, with file, line and reason, to FILE.jsonl.",
)
@click.option(
    "--now",
    "now_text",
    metavar="ISO",
    help="End of the history (default: now): recalls due later stay pending; events more than"
    f" RECALL_CLOCK_SKEW_S ({DEFAULTS['clock_skew_s']} s by default) after it are rejected, and"
    " counted as after --now.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Processes, each taking a share of the leads (default: one per core); applied to"
    " SQLite, one.",
)
@rules_option
@json_option
@writes_files(
    {"output": "--output", "report": "--report", "rejects_path": "--dead-letters"},
    {
        "files": "the input file",
        "rules_path": "the --rules file",
        "compare_path": "the --compare file",
    },
)
def replay(
    files: tuple[Path, ...],
    dry_run: bool,
    output: Path | None,
    compare_path: Path | None,
    report: Path | None,
    rejects_path: Path | None,
    now_text: str | None,
    jobs: int | None,
    rules_path: Path | None,
    as_json: bool,
) -> None:
    """Replay call results from FILES (JSON Lines or CSV, .gz too) in event-time order.

    Recalls fire as the simulated clock passes them, never after --now. Without --dry-run the
    results are written to the database through the worker's own code (idempotent on event_id: a
    second replay changes nothing). Memory grows with the number of phones; large inputs are
    sorted on disk. Output files replace their targets only when the replay succeeds, and may not
    be inputs.
    """
    rules = read_rules(rules_path)
    compare_rules = read_rules(compare_path) if compare_path is not None else None
    until = parse_now(now_text)
    skew_s = get_settings().clock_skew_s
    try:  # a missing file or an unrecognised CSV header, before any work
        check_files(files)
    except SourceError as error:
        raise CommandError(str(error)) from None
    dry_run = dry_run or compare_rules is not None
    if dry_run:  # run as `recall`, the process ends at once after it (worker.ending)
        ending.start_holding()
    if not dry_run and until > datetime.now(UTC) + timedelta(minutes=1):
        raise CommandError(
            "--now is in the future: applied, recalls would be marked eligible before their"
            " time; simulate ahead with --dry-run"
        )
    interactive = sys.stderr.isatty() and not as_json
    summary_rejections: list[Rejection] = []
    with ExitStack() as stack:
        stack.enter_context(fewer_collections())
        rejects = JsonLinesWriter(stack, rejects_path)
        decisions_out = JsonLinesWriter(stack, output)
        rejected: list[Rejection] = []
        rejection_count = after_now = 0

        def on_reject(rejection: Rejection) -> None:
            nonlocal rejection_count, after_now
            rejection_count += 1
            after_now += rejection.after_now
            rejects.write(rejection.to_json())
            if len(summary_rejections) < SHOWN_REJECTIONS:
                summary_rejections.append(rejection)
            if not dry_run:
                rejected.append(rejection)

        shares = jobs or default_shares()
        if not dry_run:  # refuse an unmigrated database before reading gigabytes of input
            from worker.cli.services import ready_database

            ready_database(migrate=get_settings().embedded)
            _record_rules(rules)
            stack.enter_context(_applied_run())
            if not _many_writers():
                shares = 1
        started = time.monotonic()  # the rate counts reading and sorting too
        progress = Progress(interactive, started)
        shared = None
        if shares > 1:
            try:
                shared = replay_in_shares(
                    files, rules, compare_rules, until, shares, skew_s=skew_s,
                    applied=not dry_run,
                    on_reject=on_reject, on_decision=decisions_out.write_line if output else None,
                    on_read=progress.reading, on_replay=progress.replaying,
                    on_progress=progress.at,
                )  # fmt: skip
            except (SourceError, ShareFailed) as error:
                raise CommandError(str(error)) from None
        if shared is not None:
            summary, pending, comparison = shared.summary, shared.pending, shared.comparison
        else:  # one process; also when an event id was sent for phones of two processes
            try:
                events = stack.enter_context(
                    sorted_events(
                        files,
                        rules,
                        on_reject,
                        on_read=progress.reading,
                        now=until,
                        skew_s=skew_s,
                    )
                )
            except SourceError as error:
                raise CommandError(str(error)) from None
            progress.replaying(events.count)
            keep = (
                (lambda _, decision: decisions_out.write_line(decision.json_line()))
                if output
                else None
            )
            comparison = None
            if dry_run:
                summary, pending, comparison = simulate(
                    events.positioned(), rules, compare_rules, until,
                    on_decision=keep, on_progress=progress.tick,
                )  # fmt: skip
            else:
                from worker.replay.apply import apply  # SQLAlchemy: dry runs never load it

                summary = apply(
                    events.positioned(), rules, until, on_decision=keep, on_progress=progress.tick
                )
        if not dry_run:
            pending = _finish_applied(summary, until, rejected)
        # Rows are rejected before any rule looks at them: the same for both rule sets.
        summaries = [summary] if comparison is None else [summary, comparison.simulation.summary]
        for each in summaries:
            each.dead_letters, each.after_now = rejection_count, after_now
        elapsed = progress.close()

    result = _result(summary, pending, elapsed, dry_run, summary_rejections, comparison, rules)
    if report is not None:
        from worker.replay.report import render_report

        report.write_text(render_report(result, files), encoding="utf-8")
    if as_json:
        echo_json(result)
    else:
        click.echo(_text(result, rejects_path is not None))
    if dry_run:
        # Its files are closed (and renamed by writes_files, on the way out): the process may
        # end without its teardown. Not an applied replay: its pooled connections and the
        # embedded Redis are closed by exit.
        ending.finished()


@contextmanager
def _applied_run() -> Iterator[None]:
    """An applied replay, recorded as running while it runs; interrupted, how to finish it.

    Its recalls stay held until its end: running it again (idempotent) takes what was not yet
    written and releases them.
    """
    from worker.replay.apply import running_replay

    try:
        with running_replay():
            yield
    except KeyboardInterrupt:
        click.echo("interrupted: run the same replay again to finish", err=True)
        sys.exit(130)


def _record_rules(rules: Rules) -> None:
    """An applied replay's rules go into the rules history before it decides with them."""
    from worker.store.database import session_scope
    from worker.store.rules_versions import record_rules_version, source_of

    with session_scope() as session:
        record_rules_version(session, rules, source_of(rules, "replay"), datetime.now(UTC))


def _many_writers() -> bool:
    """Whether the database takes writers in parallel (PostgreSQL; SQLite has one at a time)."""
    from worker.store.database import get_engine

    return get_engine().dialect.name == "postgresql"


def _finish_applied(summary: Summary, until: datetime, rejected: list[Rejection]) -> int:
    """End of an applied replay: fire or release its held recalls, file its dead letters.

    Returns the recalls pending in the database.
    """
    from worker.store.database import session_scope
    from worker.store.dead_letters import Letter, record_new_dead_letters
    from worker.store.queries import count_pending_recalls
    from worker.store.recalls import fire_due

    with session_scope() as session:
        summary.fired += fire_due(session, until)
        record_new_dead_letters(
            session,
            (
                Letter.of(
                    "replay", r.reason, f"{r.file}:{r.line}: {r.detail}", r.payload, until,
                    r.event_id,
                )
                for r in rejected
            ),
        )  # fmt: skip
        return count_pending_recalls(session)


def _result(
    summary: Summary,
    pending: int,
    elapsed: float,
    dry_run: bool,
    rejections: list[Rejection],
    comparison: Comparison | None,
    rules: Rules,
) -> dict[str, Any]:
    what_if = what_if_json(summary, pending, comparison, rules)
    result: dict[str, Any] = {
        "mode": "dry-run" if dry_run else "applied",
        "rules": what_if.pop("rules"),
        "rules_version": what_if.pop("rules_version"),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(summary.events / elapsed) if elapsed > 0 else None,
        "summary": what_if.pop("summary"),
        "rejections_sample": [rejection.to_json() for rejection in rejections],
    }
    return {**result, **what_if}


def _text(result: dict[str, Any], rejects_written: bool = False) -> str:
    """The summary as aligned text, two columns with --compare.

    ``rejects_written``: every rejected row went to a --dead-letters file.
    """
    summaries = [("rules", result["summary"])]
    if "compare" in result:
        summaries.append(("compare", result["compare"]["summary"]))
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, pick: Any) -> None:
        rows.append((label, [str(pick(s)) for _, s in summaries]))

    def minutes(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds / 60:.0f} min"

    row("events", lambda s: s["events"])
    keys: dict[str, list[str]] = {}
    sections = ("actions", "reasons", "sources", "recalls_by_sip_class", "recalls_by_adjustment")
    for section in sections:
        keys[section] = sorted({key for _, s in summaries for key in s[section]})
        for key in keys[section]:
            row(f"{section.replace('_', ' ')}: {key}", lambda s, a=section, k=key: s[a].get(k, 0))
    row("recall delay median", lambda s: minutes(s["recall_delay_s"]["median"]))
    row("recall delay p95", lambda s: minutes(s["recall_delay_s"]["p95"]))
    row("recalls fired", lambda s: s["recalls_fired"])
    row("recalls pending at end", lambda s: s["recalls_pending"])
    row("dead letters", lambda s: s["dead_letters"])
    row("  of which after --now", lambda s: s["events_after_now"])
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"replay ({result['mode']}): {result['rules']} (version {result['rules_version']})"]
    if "compare" in result:
        other = result["compare"]
        lines.append(f"compare with: {other['rules']} (version {other['rules_version']})")
        lines.append(f"{'':<{width}}{'rules':>12}{'compare':>12}")
    lines += [f"{label:<{width}}" + "".join(f"{v:>12}" for v in values) for label, values in rows]
    lines.append(f"{result['elapsed_s']:.1f}s, {result['events_per_s'] or 0:,} events/s")
    for rejection in result["rejections_sample"]:
        lines.append(
            f"rejected {rejection['file']}:{rejection['line']}: {rejection['reason']}:"
            f" {rejection['detail']}"
        )
    shown, rejected = len(result["rejections_sample"]), result["summary"]["dead_letters"]
    if shown < rejected:
        if rejects_written:
            rest = f"all {rejected:,} are in the --dead-letters file"
        elif result["mode"] == "applied":
            rest = "all are in the dead letters (recall dead-letters list)"
        else:
            rest = "--dead-letters FILE writes them all"
        lines.append(f"showing {shown} of {rejected:,} rejected rows; {rest}")
    if "compare" in result:
        lines.append(f"decisions that differ: {result['compare']['differing_decisions']}")
        for item in result["compare"]["sample"][:10]:
            first, second = item["rules"], item["compare"]
            lines.append(
                f"  {item['event_id']} ({item['phone_id']}): {first['action']} {first['reason']}"
                f" {first['due_at'] or ''} -> {second['action']} {second['reason']}"
                f" {second['due_at'] or ''}"
            )
    return "\n".join(lines)
