"""Two fixes to kombu's Redis transport, installed when a worker starts (``install``).

kombu 5.7's Redis transport can lose a message to a worker killed at the wrong moment, and makes
a worker exit when its broker goes away. Both fixes replace private methods of
``kombu.transport.redis.Channel``, so they are tied to the kombu version tested (pinned in
``constraints.txt``): ``install`` checks that every private name they use is there and refuses,
with one line, to start a worker on a kombu that lacks one.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

__all__ = ["TransportMismatch", "install"]

#: The private names of kombu's Redis channel that the fixes call or replace.
PRIVATE_NAMES = (
    "_connparams", "_brpop_start", "_brpop_read", "_q_for_pri", "_in_poll", "unacked_key",
    "unacked_index_key", "priority_steps", "global_keyprefix", "sep",
)  # fmt: skip
#: Set on each channel by its ``__init__``, not on the class: looked for in that code.
PRIVATE_INSTANCE_NAMES = ("_queue_cycle",)


class TransportMismatch(RuntimeError):
    """The installed kombu lacks a private name the fixes rely on."""


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


def install() -> None:
    """Check kombu's private names, then install both fixes (once; again is harmless)."""
    channel = kombu_redis.Channel
    assigned = channel.__init__.__code__.co_names
    missing = [name for name in PRIVATE_NAMES if not hasattr(channel, name)]
    missing += [name for name in PRIVATE_INSTANCE_NAMES if name not in assigned]
    if missing:
        import kombu

        raise TransportMismatch(
            f"kombu {kombu.__version__} lacks {', '.join(missing)} of its Redis channel, which"
            " the worker's transport fixes need: install the tested versions"
            " (pip install -c constraints.txt .)"
        )
    _dead_channels_raise_connection_errors()
    _taken_messages_are_held()
