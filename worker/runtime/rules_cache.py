"""Per-process state of a running worker: the rules in force, and its rules file.

The worker decides with the version in force in the database's rules history (DESIGN.md section
9; ``store.rules_versions.in_force``): the newest from a rules file or an edit through the API or
the console. ``rules_in_force`` hands each ingestion transaction those rules, and costs nothing
between polls: every POLL_S seconds it asks the database for the newest row's id (one indexed
query), and loads a version's text only when a new one came into force. So an edit reaches every
running worker within seconds.

The ``RECALL_RULES`` file (else the shipped defaults) still works as it always has: a worker that
sees it change (its version differs from the last version recorded from that file) records it as
a new version in force, before deciding with it. A worker that starts with an unchanged file
records nothing, so a restart does not undo a newer edit. A file that breaks while the worker
runs is refused with a logged one-line reason, and the version in force stays.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from config.settings import get_settings
from worker.domain.rules import DEFAULT_RULES_PATH, Rules, RulesError, load_rules
from worker.store.rules_versions import (
    EDIT_SOURCES,
    VersionInForce,
    in_force,
    last_from,
    newest_id,
    reassert_in_force,
    record_rules_version,
    rules_of,
    source_of,
)

__all__ = ["current_rules", "rules_in_force", "stored_rules"]

log = logging.getLogger(__name__)

# Checking a file's mtime is cheap, but not free on a busy ingestion path.
RELOAD_CHECK_S = 2.0


class _RulesCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: Rules | None = None
        #: Why the file does not load, while this process never had good rules from it.
        self._error: RulesError | None = None
        self._stamp: tuple[float, ...] = ()
        self._checked = 0.0

    @staticmethod
    def _paths() -> list[Path]:
        path = get_settings().rules_path
        return [DEFAULT_RULES_PATH] + ([path] if path is not None else [])

    def _known(self) -> Rules:
        if self._rules is None:
            assert self._error is not None
            raise self._error
        return self._rules

    def get(self) -> Rules:
        """The file's rules; raises ``RulesError`` while it never loaded (read again when it
        changes, not on every call)."""
        with self._lock:
            monotonic = time.monotonic()
            known = self._rules is not None or self._error is not None
            if known and monotonic - self._checked < RELOAD_CHECK_S:
                return self._known()
            self._checked = monotonic
            paths = self._paths()
            try:
                stamp = tuple(path.stat().st_mtime for path in paths)
            except OSError:
                stamp = ()
            if known and stamp == self._stamp:
                return self._known()
            try:
                rules = load_rules(paths[1] if len(paths) > 1 else None)
            except RulesError as error:
                self._stamp = stamp
                if self._rules is None:
                    log.error("rules file refused: %s", error)
                    self._error = error
                    raise
                log.error("rules not reloaded, keeping the last good rules: %s", error)
                return self._rules
            if self._rules is not None:
                log.info("rules reloaded from %s", " + ".join(rules.sources))
            self._rules, self._stamp, self._error = rules, stamp, None
            return rules


_cache = _RulesCache()


def current_rules() -> Rules:
    """The rules of this process's rules file (``RECALL_RULES``, else the shipped defaults)."""
    return _cache.get()


# How often a process asks the database whether the version in force changed: an edit reaches
# every worker within this (plus the batch in hand). One query for the newest id: cheap.
POLL_S = 2.0
# How long after it last recorded the version in force a process lets a replay's row stand
# newest (an applied replay records the rules it decides with) before recording the version in
# force again, so that the history's newest row is the version the workers decide with.
RECHECK_S = 60.0
# Versions loaded from a history's text, kept per database to be decided with again (each Rules
# holds the engine's memo of its verdicts).
KEEP_VERSIONS = 8


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a process knows of one database's history, as of a committed transaction."""

    file_version: str | None  # this process's file version, as reconciled with the history
    newest_id: int | None  # the newest row's id then
    row: VersionInForce  # the version in force
    rules: Rules  # its rules
    checked: float  # when (monotonic) this was read
    recorded: float  # when (monotonic) this process last recorded the version in force


_seen: weakref.WeakKeyDictionary[Engine, _Seen] = weakref.WeakKeyDictionary()
_loaded: weakref.WeakKeyDictionary[Engine, dict[str, Rules]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def stored_rules(engine: Engine, row: VersionInForce) -> Rules:
    """The rules of ``row``, a version stored in ``engine``'s history, loaded from its text once
    and kept (the last KEEP_VERSIONS versions of each database). Read only: records nothing.

    Raises ``RulesError`` when the stored text no longer loads.
    """
    with _lock:
        kept = _loaded.setdefault(engine, {})
        rules = kept.get(row.version)
    if rules is not None:
        return rules
    rules = rules_of(row)
    with _lock:
        if len(kept) >= KEEP_VERSIONS:
            kept.pop(next(iter(kept)))
        kept[row.version] = rules
    return rules


def rules_in_force(session: Session, now: datetime) -> Rules:
    """The rules to decide with in this transaction: the version in force in the history.

    Between polls (POLL_S) this is a dictionary look-up. At a poll, in this transaction and so
    before any decision made with them: the rules file, when this process has not yet reconciled
    its version with the history (at start, after the file changed), is recorded as a new version
    if it differs from the last version recorded from that file; then the newest id tells whether
    the version in force changed. What a transaction recorded is remembered once it commits.
    A process whose rules file never loaded decides with the version in force too. Raises
    ``RulesError`` when there are no good rules to decide with (the task retries).
    """
    file_error: RulesError | None = None
    try:
        file_rules: Rules | None = current_rules()
    except RulesError as error:
        # A process that never had good rules from its file (a pool process started while it
        # was broken): the version in force decides, if there is one.
        file_rules, file_error = None, error
    engine = session.get_bind()
    assert isinstance(engine, Engine), "sessions are bound to an engine"
    clock = time.monotonic()
    seen = _seen.get(engine)
    known_file = seen.file_version if seen is not None else None
    file_version = file_rules.version if file_rules is not None else known_file
    if (
        seen is not None
        and seen.file_version == file_version
        and clock - seen.checked < min(POLL_S, RECHECK_S)
    ):
        return seen.rules
    recorded = seen.recorded if seen is not None else clock
    if file_rules is not None and (seen is None or seen.file_version != file_version):
        source = source_of(file_rules)
        previous = last_from(session, source)
        # A file never recorded is no change to an edit made before any worker ran with it: the
        # edit stays in force until the file itself changes.
        first_after_edit = seen is None and previous is None and _edit_in_force(session)
        if (
            previous != file_version
            and not first_after_edit
            and record_rules_version(session, file_rules, source, now)
        ):
            recorded = clock
    newest = newest_id(session)
    if seen is not None and seen.newest_id == newest and seen.file_version == file_version:
        row, rules = seen.row, seen.rules
    else:
        found = in_force(session)
        if found is None:  # a history without a workers' row (only replays'): the file's rules
            if file_rules is None:
                assert file_error is not None
                raise file_error  # nothing to decide with: the task retries
            record_rules_version(session, file_rules, source_of(file_rules), now)
            found, recorded = in_force(session), clock
            assert found is not None
        row, rules = _rules_of(engine, found, file_rules, seen)
        newest = newest_id(session)
    if row.id != newest and clock - recorded >= RECHECK_S and reassert_in_force(session, now):
        recorded, newest = clock, newest_id(session)
    update = _Seen(file_version, newest, row, rules, clock, recorded)

    def remember(_session: Session) -> None:
        with _lock:
            before = _seen.get(engine)
            _seen[engine] = update
        if before is not None and before.row.id != row.id and before.row.version != row.version:
            by = f" by {row.author}" if row.author else ""
            log.info("rules in force: version %s from %s%s", row.version, row.source, by)

    event.listen(session, "after_commit", remember, once=True)
    return rules


def _edit_in_force(session: Session) -> bool:
    row = in_force(session)
    return row is not None and row.source in EDIT_SOURCES


def _rules_of(
    engine: Engine, row: VersionInForce, file_rules: Rules | None, seen: _Seen | None
) -> tuple[VersionInForce, Rules]:
    """``row`` and its Rules: the file's own when they are that version, else its stored text.

    A text that no longer loads (it cannot, unless the checks of a newer release refuse it) is
    refused with a logged line, and the version in force before stays in force in this process.
    """
    if file_rules is not None and row.version == file_rules.version:
        return row, file_rules
    try:
        return row, stored_rules(engine, row)
    except RulesError as error:
        if seen is None:
            raise
        log.error("rules version %s not taken, keeping %s: %s", row.version, seen.row.version,
                  error)  # fmt: skip
        return seen.row, seen.rules
