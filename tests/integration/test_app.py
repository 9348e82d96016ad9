"""The Celery app's configuration, checked against a real Redis (no worker needed)."""

from __future__ import annotations

import base64

import orjson
import pytest
import redis
from celery import Celery
from celery.signals import worker_init
from kombu.transport import redis as kombu_redis

from config.settings import Settings
from worker.app import celery_config
from worker.client import RecallClient
from worker.names import CALL_RESULTS_QUEUE, RECALLS_QUEUE
from worker.runtime.redis_transport import TransportMismatch
from worker.runtime.redis_transport import install as install_transport_fixes


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


def test_a_taken_message_is_held_until_acknowledged_even_if_the_worker_dies(
    app: Celery, broker_url: str
) -> None:
    # kombu's BRPOP removes a message from its queue before the worker records it as unacked; a
    # worker killed in between lost it. The worker's consumer takes and records in one step.
    install_transport_fixes()  # what a starting worker does

    app.send_task("recall.process_call_result", args=[{"event_id": "held-1"}])
    client = redis.Redis.from_url(broker_url)
    (sent,) = client.lrange(CALL_RESULTS_QUEUE, 0, -1)
    tag = orjson.loads(sent)["properties"]["delivery_tag"]

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        channel.basic_consume(
            CALL_RESULTS_QUEUE, no_ack=False, callback=lambda message: None, consumer_tag="t"
        )
        # What the worker's event loop does when it can take a message: send, read later.
        channel.connection.cycle._register_BRPOP(channel)
        channel.client.connection.disconnect()  # the worker dies before reading the reply

    assert client.llen(CALL_RESULTS_QUEUE) == 0  # taken...
    held, exchange, routing_key = orjson.loads(client.hget("unacked", tag))
    assert held == orjson.loads(sent)  # ...and held, whole, as kombu holds what it took
    delivery = held["properties"]["delivery_info"]
    assert (exchange, routing_key) == (delivery["exchange"], delivery["routing_key"])
    assert client.zscore("unacked_index", tag) is not None

    # After the visibility timeout any worker gives it back to its queue (kombu's own restore).
    with app.connection_for_read() as connection:
        connection.default_channel.qos.restore_by_tag(tag, client=client)
    (back,) = [orjson.loads(raw) for raw in client.lrange(CALL_RESULTS_QUEUE, 0, -1)]
    assert back["body"] == held["body"]
    assert back["headers"]["id"] == held["headers"]["id"]


def test_a_worker_takes_messages_one_at_a_time_and_waits_on_an_empty_queue(
    app: Celery, broker_url: str
) -> None:
    install_transport_fixes()

    received: list[str] = []
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        channel.basic_consume(
            CALL_RESULTS_QUEUE, no_ack=False, consumer_tag="t",
            callback=lambda message: received.append(message.headers["id"]),
        )  # fmt: skip
        first = app.send_task("recall.process_call_result", args=[{}]).id
        connection.drain_events(timeout=5)  # taken by the script
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=1)  # empty: waiting with BRPOP
        second = app.send_task("recall.process_call_result", args=[{}]).id
        connection.drain_events(timeout=5)  # the waiting BRPOP's reply
        assert received == [first, second]
        client = redis.Redis.from_url(broker_url)
        assert client.hlen("unacked") == 2  # both held until acknowledged
        # Held as kombu holds a message it read (it writes its own record over the script's).
        for tag, record in client.hgetall("unacked").items():
            held, _exchange, routing_key = orjson.loads(record)
            assert held["properties"]["delivery_tag"] == tag.decode()
            assert routing_key == CALL_RESULTS_QUEUE
    # Closed unacknowledged (a warm shutdown): kombu gives both back.
    assert client.llen(CALL_RESULTS_QUEUE) == 2
    assert client.hlen("unacked") == 0


def test_a_worker_refuses_to_start_on_a_kombu_without_the_names_its_fixes_need(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(kombu_redis.Channel, "_brpop_read")

    with pytest.raises(TransportMismatch, match=r"lacks _brpop_read of its Redis channel"):
        install_transport_fixes()
    with pytest.raises(SystemExit) as stopped:
        worker_init.send(sender=None)
    assert stopped.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: kombu 5.")
    assert "pip install -c constraints.txt" in line
