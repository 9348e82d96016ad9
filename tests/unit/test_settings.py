"""Settings that guard delivery: how soon a dead worker's messages go back to their queue."""

from __future__ import annotations

import pytest

from config.settings import RETRY_BACKOFF_MAX_S, Settings, SettingsError
from worker.app import celery_config

BASE = {"RECALL_BROKER_URL": "redis://127.0.0.1:1", "RECALL_DATABASE_URL": "x://"}


def test_a_dead_workers_messages_return_within_minutes() -> None:
    # Regression (reliability suite, worker crash): kombu's one-hour default kept the messages
    # of a worker killed with kill -9 away for an hour, and looked for them every 100 s only.
    options = celery_config(Settings.from_env(BASE))["broker_transport_options"]
    assert options["visibility_timeout"] == 300.0
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10
    tuned = Settings.from_env({**BASE, "RECALL_VISIBILITY_TIMEOUT_S": "90"})
    assert celery_config(tuned)["broker_transport_options"]["visibility_timeout"] == 90.0


@pytest.mark.parametrize(
    ("horizon", "timeout"),
    [(None, "59"), ("60", "89"), (None, "soon")],
)
def test_the_visibility_timeout_outlasts_what_a_live_worker_holds(
    horizon: str | None, timeout: str
) -> None:
    # A live worker holds firings up to the dispatch horizon and retries up to the longest
    # backoff: a shorter timeout would give them back while held, and send them twice.
    env = {**BASE, "RECALL_VISIBILITY_TIMEOUT_S": timeout}
    if horizon is not None:
        env["RECALL_DISPATCH_HORIZON_S"] = horizon
    with pytest.raises(SettingsError, match="RECALL_VISIBILITY_TIMEOUT_S"):
        Settings.from_env(env)
    least = float(horizon or 30) + RETRY_BACKOFF_MAX_S
    assert Settings.from_env({**env, "RECALL_VISIBILITY_TIMEOUT_S": str(least)})


def test_single_event_messages_are_taken_together_and_reserved_to_match() -> None:
    # Each pool process reserves a full set of single-event messages (worker/runtime/batching.py).
    default = Settings.from_env(BASE)
    assert (default.ingest_flush_count, default.ingest_flush_ms) == (50, 20.0)
    assert celery_config(default)["worker_prefetch_multiplier"] == 50
    alone = Settings.from_env(
        {**BASE, "RECALL_INGEST_FLUSH_COUNT": "1", "RECALL_INGEST_FLUSH_MS": "0"}
    )
    assert celery_config(alone)["worker_prefetch_multiplier"] == 1
    assert alone.ingest_flush_ms == 0.0
    with pytest.raises(SettingsError, match="RECALL_INGEST_FLUSH_COUNT"):
        Settings.from_env({**BASE, "RECALL_INGEST_FLUSH_COUNT": "0"})
    with pytest.raises(SettingsError, match="RECALL_INGEST_FLUSH_MS"):
        Settings.from_env({**BASE, "RECALL_INGEST_FLUSH_MS": "-1"})


def test_metrics_listen_on_loopback_unless_in_production() -> None:
    # Regression (issue 12 #12): the embedded default listened on 0.0.0.0.
    assert Settings.from_env({}).metrics_address == "127.0.0.1"
    assert Settings.from_env(BASE).metrics_address == "0.0.0.0"  # scraped by Prometheus
    chosen = {**BASE, "RECALL_METRICS_ADDRESS": "10.0.0.7"}
    assert Settings.from_env(chosen).metrics_address == "10.0.0.7"
    assert Settings.from_env({"RECALL_METRICS_ADDRESS": "::"}).metrics_address == "::"


def test_the_clock_skew_allowed_to_events_is_a_setting() -> None:
    # Hardening #2: an event dated further ahead of the deciding clock than this is refused.
    assert Settings.from_env(BASE).clock_skew_s == 300
    assert Settings.from_env({**BASE, "RECALL_CLOCK_SKEW_S": "60"}).clock_skew_s == 60
    assert Settings.from_env({**BASE, "RECALL_CLOCK_SKEW_S": "0"}).clock_skew_s == 0
    for bad in ("-1", "soon"):
        with pytest.raises(SettingsError, match="RECALL_CLOCK_SKEW_S"):
            Settings.from_env({**BASE, "RECALL_CLOCK_SKEW_S": bad})
