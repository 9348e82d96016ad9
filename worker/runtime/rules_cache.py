"""Per-process state of a running worker: the rules in force, reloaded when their file changes.

A rules file that breaks while the worker runs is refused with a logged one-line reason, and the
worker keeps deciding with its last good rules. Rules that come into force are recorded in the
database's rules history by the first ingestion transaction that decides with them
(``record_rules_in_force``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from config.settings import get_settings
from worker.domain.rules import DEFAULT_RULES_PATH, Rules, RulesError, load_rules
from worker.store.rules_versions import record_rules_version, source_of

__all__ = ["current_rules", "record_rules_in_force"]

log = logging.getLogger(__name__)

# Checking a file's mtime is cheap, but not free on a busy ingestion path.
RELOAD_CHECK_S = 2.0


class _RulesCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: Rules | None = None
        self._stamp: tuple[float, ...] = ()
        self._checked = 0.0

    @staticmethod
    def _paths() -> list[Path]:
        path = get_settings().rules_path
        return [DEFAULT_RULES_PATH] + ([path] if path is not None else [])

    def get(self) -> Rules:
        with self._lock:
            monotonic = time.monotonic()
            if self._rules is not None and monotonic - self._checked < RELOAD_CHECK_S:
                return self._rules
            self._checked = monotonic
            paths = self._paths()
            try:
                stamp = tuple(path.stat().st_mtime for path in paths)
            except OSError:
                stamp = ()
            if self._rules is not None and stamp == self._stamp:
                return self._rules
            try:
                rules = load_rules(paths[1] if len(paths) > 1 else None)
            except RulesError as error:
                if self._rules is None:
                    raise
                log.error("rules not reloaded, keeping the last good rules: %s", error)
                self._stamp = stamp
                return self._rules
            if self._rules is not None:
                log.info("rules reloaded from %s", " + ".join(rules.sources))
            self._rules, self._stamp = rules, stamp
            return rules


_cache = _RulesCache()


def current_rules() -> Rules:
    """The rules in force in this process."""
    return _cache.get()


# How often a process makes sure its rules are still the newest in the history, though they did
# not change: an applied replay or another worker may have recorded others meanwhile. One small
# query a minute per process.
RECHECK_S = 60.0

# Per database: the version this process last saw recorded (committed) as in force, and when.
_recorded: weakref.WeakKeyDictionary[Engine, tuple[str, float]] = weakref.WeakKeyDictionary()


def record_rules_in_force(session: Session, rules: Rules, now: datetime) -> None:
    """Record ``rules`` in the rules history in this transaction, before deciding with them.

    Every batch asks, so the process remembers the version it last recorded in each database and
    asks the database only when its rules changed (at start, and after a reload), or RECHECK_S
    after it last did. A version is remembered once the transaction that recorded it commits: a
    batch rolled back records again.
    """
    version = rules.version
    engine = session.get_bind()
    assert isinstance(engine, Engine), "sessions are bound to an engine"
    known = _recorded.get(engine)
    if known is not None and known[0] == version and time.monotonic() - known[1] < RECHECK_S:
        return
    record_rules_version(session, rules, source_of(rules), now)

    def remember(_session: Session) -> None:
        _recorded[engine] = (version, time.monotonic())

    event.listen(session, "after_commit", remember, once=True)
