"""The worker's message consumer: Celery's own, plus a dead letter for every message it refuses,
and a worker that outlives the loss of its broker.

Celery drops a message it cannot decode (not JSON: pickle is refused by design) or that names an
unknown task, with only a log line. Operators need those too, with the raw payload, so that a
misconfigured sender is found and nothing the dialer sent is silently lost.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from queue import Empty
from typing import Any

import redis.exceptions
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

__all__ = ["RecallConsumer", "keep_refused_message"]


def _dead_channels_raise_connection_errors() -> None:
    """A Redis channel whose connection is gone raises a connection error, not AttributeError.

    When Redis goes away, Celery 5.7 collects the broken connection, which drops its
    transport's client. A channel of that connection asked for a Redis client afterwards (to
    give a message back, to acknowledge or reject one whose task ended meanwhile, to close)
    reads ``self.connection.client.hostname`` and raises AttributeError, which Celery takes for
    an unrecoverable error: the worker exits instead of reconnecting (found by the reliability
    suite, broker loss). Raised as the connection error it is, every path already handles it:
    Celery reconnects, and a message of the dead connection returns after the visibility
    timeout (lost firings are re-sent by the dispatcher).
    """
    connparams: Any = kombu_redis.Channel._connparams
    if getattr(connparams, "dead_channel_guard", False):
        return

    def guarded(channel: Any, asynchronous: bool = False) -> Any:
        if channel.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection is closed")
        return connparams(channel, asynchronous=asynchronous)

    guarded.dead_channel_guard = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", guarded)  # noqa: B010 (a library's method)


_dead_channels_raise_connection_errors()


# Take one message and record it as unacknowledged in one step (see _taken_messages_are_held).
# KEYS: the unacked hash, its index, then the queues' lists in BRPOP's order. ARGV: the time.
# The record is kombu's own ([message, exchange, routing key] under the delivery tag), built
# around the message's text so that nothing of it is re-encoded.
_TAKE_AND_HOLD = """
for i = 3, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message['properties']
        if type(properties) == 'table' and type(properties['delivery_tag']) == 'string'
                and type(properties['delivery_info']) == 'table' then
            local info = properties['delivery_info']
            local tag = properties['delivery_tag']
            redis.call('ZADD', KEYS[2], ARGV[1], tag)
            redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
                .. ',' .. cjson.encode(info['routing_key']) .. ']')
        end
        return {KEYS[i], item}
    end
end
return false
"""


def _taken_messages_are_held() -> None:
    """A message taken from a queue is recorded as unacknowledged by Redis in the same step.

    kombu takes a message with BRPOP, which removes it from its queue, and records it in the
    ``unacked`` hash (from which a dead worker's messages are given back after the visibility
    timeout) only once the worker has read the reply. A worker killed in between lost the
    message: it was neither queued nor held (kombu#305, celery#7950). The window is widest when
    the worker's main process is busy, a reply then waiting unread in its socket: a saturated
    worker lost an event to ``kill -9`` that way (tests/reliability/test_worker_crash.py).

    Here the worker first asks Redis to take a waiting message and record it, in one Lua script;
    a message taken so is held until acknowledged, whatever happens to the worker. Only when
    every queue is empty does the worker wait with kombu's BRPOP; a message arriving then is
    read at once by a worker with nothing else to do. With a key prefix (not used here) kombu's
    own way is kept.
    """
    start: Any = kombu_redis.Channel._brpop_start
    read: Any = kombu_redis.Channel._brpop_read
    if getattr(start, "take_and_hold", False):
        return

    def take_start(channel: Any, timeout: float | None = None) -> None:
        if channel.global_keyprefix:
            return start(channel, timeout)  # type: ignore[no-any-return]
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return None
        keys = [
            channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues
        ]
        channel._in_poll = channel.client.connection
        channel._brpop_sent_at = time.monotonic()
        channel.taking, channel.taking_timeout = True, timeout
        channel.client.connection.send_command(
            "EVAL", _TAKE_AND_HOLD, 2 + len(keys),
            channel.unacked_key, channel.unacked_index_key, *keys, time.time(),
        )  # fmt: skip
        return None

    def take_read(channel: Any, **options: Any) -> bool:
        if not getattr(channel, "taking", False):  # a BRPOP's reply: kombu's own reading
            return read(channel, **options)  # type: ignore[no-any-return]
        channel.taking = False
        try:
            reply = channel.client.parse_response(channel.client.connection, "EVAL", **options)
        except channel.connection_errors:
            channel.client.connection.disconnect()
            raise
        finally:
            channel._in_poll = None  # the reply is read (or the connection is gone)
        if not reply:
            # Every queue empty: wait for the next message as kombu does (the reply is read by
            # the stock _brpop_read when it comes).
            start(channel, channel.taking_timeout)
            raise Empty()
        dest, item = reply
        dest = bytes_to_str(dest).rsplit(channel.sep, 1)[0]  # type: ignore[no-untyped-call]
        channel._queue_cycle.rotate(dest)
        message = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
        channel.connection._deliver(message, dest)
        flush = getattr(channel, "_flush_brpop_reauth", None)
        if flush is not None:
            flush()
        return True

    take_start.take_and_hold = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_brpop_start", take_start)  # noqa: B010 (a library's method)
    setattr(kombu_redis.Channel, "_brpop_read", take_read)  # noqa: B010


_taken_messages_are_held()


def keep_refused_message(task: str, detail: str, body: object) -> None:
    """Store a refused broker message as a dead letter; never raises (the consumer must live)."""
    from worker.db import session_scope
    from worker.metrics import record
    from worker.pipeline import raw_text
    from worker.store import Letter, record_dead_letters

    letter = Letter(task, "invalid_event", detail, raw_text(body), datetime.now(UTC))
    try:
        with session_scope() as session:
            record_dead_letters(session, [letter])
        record.dead_letters("invalid_event")
    except Exception:
        log.exception("could not keep a refused message as a dead letter: %s", detail)


def _task_name(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    name = headers.get("task") if isinstance(headers, dict) else None
    return str(name) if name else "unknown"


def _payload(body: object, message: Any) -> object:
    # Celery hands the decoded body only for protocol 1; for protocol 2 (what every sender uses
    # now) it is None, and the raw body, undecoded (a refused pickle stays unpickled), is kept.
    return body if body is not None else getattr(message, "body", None)


class RecallConsumer(Consumer):  # type: ignore[misc]  # celery ships no type hints
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Celery 5.7 first collects the broken connection, then closes it: closing its Redis
        # channels tries to give the held messages (firings waiting for their time) back through
        # the dropped client, which now raises a connection error (see above). Nothing can be
        # given back to a broker that is gone: close as far as possible, then reconnect.
        connection = self.connection
        if connection is not None:
            close = connection.close
            lost = (AttributeError, *self.connection_errors)

            def close_broken_connection() -> None:
                try:
                    close()
                except lost as error:
                    log.warning("broker connection lost; closed it as far as possible (%r)", error)

            connection.close = close_broken_connection
        super().on_connection_error_after_connected(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        content_type = getattr(message, "content_type", None)
        detail = f"message: cannot decode a {content_type} body ({type(exc).__name__}: {exc})"
        keep_refused_message(_task_name(message), detail, message.body)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        keep_refused_message("unknown", "message: not a Celery task message", body)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _task_name(message)
        keep_refused_message(name, f"message: unknown task {name!r}", _payload(body, message))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        detail = f"message: invalid task message: {exc}"
        keep_refused_message(_task_name(message), detail, _payload(body, message))
        super().on_invalid_task(body, message, exc)
