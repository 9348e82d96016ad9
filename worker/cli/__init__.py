"""The ``recall`` command: one group, one module per sub-command family, loaded when used.

A command's module is imported only when that command runs (``recall decide`` loads neither
SQLAlchemy nor Celery), so the group knows each command by where it lives and its one-line help
(tests/unit/test_cli.py checks that the two agree).

``run`` is the console script (and ``python -m worker``): ``main``, and a process that ends at
once after a command that says it has finished (``worker.ending``); ``main`` alone is what tests
call in-process.
"""

from __future__ import annotations

from worker import ending
from worker.cli.common import main

__all__ = ["main", "run"]


def run() -> None:
    """The ``recall`` command as a process: ``main``, then, when the command has ``finished``,
    ``os._exit`` with its exit status rather than the interpreter's teardown.

    Exit statuses, messages and help are ``main``'s: only how the process ends differs.
    """
    ending.ends_at_once()
    try:
        main(prog_name="recall")
    except SystemExit as done:
        if ending.is_finished() and (done.code is None or isinstance(done.code, int)):
            ending.exit_at_once(done.code or 0)
        raise


main.lazy_commands.update(
    {
        "decide": (
            "worker.cli.decide:decide",
            "Print the decision for one event (a JSON object) read from FILE or standard input.",
        ),
        "rules": (
            "worker.cli.rules:rules",
            "Check, show or export the effective rules (the defaults with your file merged over),"
            " read the versions in force so far and what changed between two, or preview a"
            " change.",
        ),
        "sample": (
            "worker.cli.sample:sample",
            "Generate a call-result history for LEADS leads over DAYS days, in event-time order.",
        ),
        "worker": (
            "worker.cli.services:worker",
            "Run the worker (ingestion and recall firing) with the periodic dispatcher.",
        ),
        "publish": (
            "worker.cli.services:publish",
            "Publish call results from JSON Lines or CSV files (.gz too), as the dialer would.",
        ),
        "replay": (
            "worker.cli.replay:replay",
            "Replay call results from FILES (JSON Lines or CSV, .gz too) in event-time order.",
        ),
        "phones": (
            "worker.cli.services:phones",
            "Lead phones: eligibility, pending recall and last decision; claims of eligible ones.",
        ),
        "dead-letters": (
            "worker.cli.services:dead_letters",
            "Rejected events kept with their reason: list them, replay them after a fix.",
        ),
        "status": (
            "worker.cli.services:status",
            "Workers, queues, recalls and dead letters at a glance; exit 1 when unhealthy.",
        ),
        "serve": (
            "worker.cli.serve:serve",
            "Run the HTTP API (JSON, described at /openapi.json) and the console (/console) on"
            " HOST:PORT.",
        ),
        "tokens": (
            "worker.cli.serve:tokens",
            "API tokens for `recall serve`: make a new one (its hash goes in RECALL_API_TOKENS).",
        ),
        "db": (
            "worker.cli.services:db",
            "Database schema management.",
        ),
        "demo": (
            "worker.cli.demo:demo",
            "Start a worker on the embedded default, publish a sample, and show decisions and"
            " firings.",
        ),
    }
)
