"""The worker's rules in force: reloaded when the file changes, kept when the new file is broken."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from config.settings import get_settings
from worker.runtime import rules_cache as runtime

PLAN = '[[plans]]\nid = "{plan}"\ntimezone = "UTC"\n'


@pytest.fixture
def rules_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(PLAN.format(plan="first"), encoding="utf-8")
    monkeypatch.setenv("RECALL_RULES", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def rewrite(path: Path, text: str, stamp: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (stamp, stamp))  # a distinct mtime, however fast the test runs


def test_a_changed_rules_file_is_reloaded_and_a_broken_one_refused(
    rules_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = runtime._RulesCache()
    assert "first" in cache.get().plans

    rewrite(rules_file, PLAN.format(plan="second"), 1_900_000_000)
    cache._checked = 0.0  # as if RELOAD_CHECK_S had passed
    assert "second" in cache.get().plans

    rewrite(rules_file, '[[plans]]\nid = "third"\ntimezone = "Mars/Olympus"\n', 1_900_000_100)
    cache._checked = 0.0
    with caplog.at_level(logging.ERROR, logger="worker.runtime.rules_cache"):
        kept = cache.get()
    assert "second" in kept.plans
    assert "third" not in kept.plans
    assert "keeping the last good rules" in caplog.text
    assert "unknown time zone 'Mars/Olympus'" in caplog.text

    rewrite(rules_file, PLAN.format(plan="fourth"), 1_900_000_200)
    cache._checked = 0.0
    assert "fourth" in cache.get().plans


def test_between_checks_the_file_is_not_read_again(rules_file: Path) -> None:
    cache = runtime._RulesCache()
    first = cache.get()
    rewrite(rules_file, PLAN.format(plan="second"), 1_900_000_000)
    assert cache.get() is first  # checked again only after RELOAD_CHECK_S
