"""The Celery app's configuration, checked against a real Redis (no worker needed)."""

from __future__ import annotations

import base64

import orjson
import pytest
import redis
from celery import Celery

from config.settings import Settings
from worker.app import CALL_RESULTS_QUEUE, RECALLS_QUEUE, celery_config
from worker.client import RecallClient


@pytest.fixture
def app(broker_url: str) -> Celery:
    settings = Settings.from_env({"RECALL_BROKER_URL": broker_url, "RECALL_DATABASE_URL": "x://"})
    app = Celery("recall-test")
    app.config_from_object(celery_config(settings))
    return app


def _tasks(client: redis.Redis, queue: str) -> list[str]:
    return [orjson.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]


def test_each_task_lands_in_exactly_one_queue(app: Celery, broker_url: str) -> None:
    app.send_task("recall.process_call_result", args=[{}])
    app.send_task("recall.process_call_results", args=[[]])
    app.send_task("recall.dispatch_due")
    app.send_task("recall.mark_eligible", args=[["r1"]])
    RecallClient(broker_url).publish({"event_id": "e1"})

    client = redis.Redis.from_url(broker_url)
    assert sorted(_tasks(client, CALL_RESULTS_QUEUE)) == [
        "recall.process_call_result",
        "recall.process_call_result",
        "recall.process_call_results",
    ]
    assert sorted(_tasks(client, RECALLS_QUEUE)) == ["recall.dispatch_due", "recall.mark_eligible"]


def test_messages_are_json_and_carry_the_event_readably(app: Celery, broker_url: str) -> None:
    event = {"event_id": "e1", "phone_id": "P1"}
    app.send_task("recall.process_call_result", args=[event])
    (raw,) = redis.Redis.from_url(broker_url).lrange(CALL_RESULTS_QUEUE, 0, -1)
    envelope = orjson.loads(raw)
    assert envelope["content-type"] == "application/json"
    args, kwargs, _ = orjson.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([event], {})
    assert "e1" in envelope["headers"]["argsrepr"]  # what Flower shows


def test_the_app_accepts_json_only(app: Celery) -> None:
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_acks_late
    assert app.conf.task_reject_on_worker_lost
    assert app.conf.worker_send_task_events
    assert app.conf.task_send_sent_event
