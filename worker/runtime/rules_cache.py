"""Per-process state of a running worker: the rules in force, reloaded when their file changes.

A rules file that breaks while the worker runs is refused with a logged one-line reason, and the
worker keeps deciding with its last good rules.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from config.settings import get_settings
from worker.domain.rules import DEFAULT_RULES_PATH, Rules, RulesError, load_rules

__all__ = ["current_rules"]

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
