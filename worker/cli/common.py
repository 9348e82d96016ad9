"""Shared pieces of the command line: the group, the ``--rules``/``--json`` options, output."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from config.settings import SettingsError
from worker.domain.events import InvalidEvent
from worker.domain.intake import parse_instant
from worker.domain.rules import Rules, RulesError, load_rules

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A one-line error on stderr and exit status 1; never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class RecallGroup(click.Group):
    """The top-level group: every error, usage errors included, is one line on stderr.

    Commands may be registered lazily, in ``lazy_commands`` (name: ("module:attribute", short
    help)): the module is imported when the command is run or its own help is asked for.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing from the registered helps: loading every command would load everything.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                listed = click.Command(name, help=self.lazy_commands[name][1])
                rows.append((name, listed.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            # `recall` or `recall rules` alone asks for the help: it is no error.
            click.echo(error.ctx.get_help())
            sys.exit(0)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "recall"
            click.echo(f"error: {error.format_message()} (see '{where} --help')", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except SettingsError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=RecallGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="recall-scheduler", prog_name="recall")
def main() -> None:
    """Recall scheduler for outbound dialers: decides when each lead phone may be dialled again.

    Rules come from --rules FILE, else $RECALL_RULES, else the shipped defaults. The broker and
    database come from $RECALL_BROKER_URL and $RECALL_DATABASE_URL; unset, an embedded Redis and
    SQLite under $RECALL_HOME (default ./.recall) are used.
    """


def rules_option(command: F) -> F:
    """``--rules FILE`` (env ``RECALL_RULES``): the operator's rules merged over the defaults."""
    return click.option(
        "--rules",
        "rules_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="RECALL_RULES",
        show_envvar=True,
        help="Rules file merged over the shipped defaults.",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        command
    )


def read_rules(path: Path | None) -> Rules:
    try:
        return load_rules(path)
    except RulesError as error:
        raise CommandError(str(error)) from None


def parse_now(text: str | None) -> datetime:
    """``--now``: an ISO-8601 instant with offset; the real time when not given."""
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_instant(text, "--now")
    except InvalidEvent as error:
        raise CommandError(str(error)) from None


def plural(count: int, noun: str) -> str:
    """``1 dead letter``, ``2 dead letters``: a count with its noun (an ``s`` unless it is one)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def echo_json(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data) + b"\n")
    sys.stdout.flush()


def use_rules_file(path: Path | None) -> None:
    """``--rules`` for commands whose work reads the settings (and so ``RECALL_RULES``)."""
    if path is not None:
        import os

        from config.settings import get_settings

        os.environ["RECALL_RULES"] = str(path)
        get_settings.cache_clear()
