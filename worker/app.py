"""The Celery app ``worker.app:app``, built from the settings with every option explicit."""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from kombu.entity import Exchange, Queue

from config.settings import Settings, get_settings
from worker.names import (
    CALL_RESULTS_QUEUE,
    DISPATCH_TASK,
    TASK_QUEUES,
    WORKER_QUEUES,
)

__all__ = ["app", "celery_config"]


def broker_url(settings: Settings) -> str:
    if settings.broker_url is not None:
        return settings.broker_url
    from worker.runtime.embedded_redis import embedded_broker_url

    return embedded_broker_url(settings)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The whole Celery configuration; read lazily, so importing the app starts nothing."""
    return {
        "broker_url": broker_url(settings),
        "broker_connection_retry_on_startup": True,
        # A message taken but never acknowledged (its worker was killed) returns to the queue
        # after the visibility timeout (see Settings.visibility_timeout_s); each worker looks for
        # such messages every 10 s (kombu's default looks only every 100 s).
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        # JSON only: a pickled message is refused before anything runs (security).
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        # A task is acknowledged after it ran, and given back if its worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each pool process reserves as many messages as the worker takes together in one
        # transaction (RECALL_INGEST_FLUSH_COUNT, worker/runtime/batching.py); 1 with batching off.
        "worker_prefetch_multiplier": settings.ingest_flush_count,
        # Flower sees every task, with its name and arguments.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Each queue its own direct exchange and key: left implicit, both queues would be bound
        # to the default queue's exchange under the same key, and get every message.
        "task_queues": tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in WORKER_QUEUES
        ),
        "task_default_exchange": CALL_RESULTS_QUEUE,
        "task_default_routing_key": CALL_RESULTS_QUEUE,
        "task_default_queue": CALL_RESULTS_QUEUE,
        "task_routes": {task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        "beat_schedule": {
            "dispatch-due-recalls": {
                "task": DISPATCH_TASK,
                "schedule": settings.dispatch_interval_s,
                # A tick nobody ran in time is dropped: the next one does its work.
                "options": {"expires": max(settings.dispatch_interval_s * 5, 5.0)},
            }
        },
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        # Celery's consumer, plus a dead letter for each message it refuses
        # (worker/runtime/consumer.py).
        "worker_consumer": "worker.runtime.consumer:RecallConsumer",
    }


app = Celery("recall", include=["tasks.ingest", "tasks.recalls"])
app.add_defaults(lambda: celery_config(get_settings()))


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A forked pool process must not reuse the parent's database connections.
    from worker.store.database import get_engine

    get_engine().dispose(close=False)


@worker_init.connect
def _install_transport_fixes(**_: Any) -> None:
    # Before the consumer reads a message: kombu's Redis transport with our two fixes, or no
    # worker at all (a kombu without the private names they need).
    from worker.runtime.redis_transport import TransportMismatch, install

    try:
        install()
    except TransportMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


@worker_init.connect
def _check_database(**_: Any) -> None:
    # Refuse to start on an unmigrated database; the embedded default migrates itself.
    from worker.domain.rules import RulesError
    from worker.runtime.rules_cache import current_rules
    from worker.store.database import (
        DatabaseNotReady,
        database_url,
        ensure_migrated,
        get_engine,
        upgrade,
    )

    settings = get_settings()
    try:
        if settings.embedded:
            upgrade(database_url(settings))
        ensure_migrated(get_engine())
        # Rules load before the pool forks: a worker never starts without good rules.
        current_rules()
    except (DatabaseNotReady, RulesError) as error:
        # Celery logs and swallows exceptions from signal handlers; SystemExit gets through.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

    from worker.runtime import metrics

    metrics.start(settings)


@worker_init.connect
def _freeze_before_fork(**_: Any) -> None:
    # Connected last, so it runs once the checks above have loaded what the worker needs: the
    # objects the pool processes inherit are moved out of the collector's reach, so a collection
    # in a pool process no longer writes to their pages and copies them (Python's gc.freeze
    # documentation). The worker's processes then share those pages: make bench's
    # pending_1m_worker_rss_mb (the sum of their PSS) is the figure that shows it.
    gc.collect()
    gc.freeze()


@worker_process_shutdown.connect
def _child_gone(pid: int | None = None, **_: Any) -> None:
    from worker.runtime import metrics

    metrics.stop_child(pid or os.getpid())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _logging(logger: logging.Logger, **_: Any) -> None:
    from worker.runtime.logs import install

    install(logger, get_settings().log_format)
