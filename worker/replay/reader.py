"""The input of a replay in processes, read once: each record dealt to the process of its lead.

With ``--jobs N`` the parent reads every file once (``iter_records``) and sends each record to
the process that replays its lead (``share_of``), in frames over one pipe per process, in the
order read. A JSON line travels as its text, undecoded, and the process it goes to decodes it
(``SortedEvents``), so that each line is decoded once in all: the reader routes it by its text
when that says its lead id plainly (one ``"lead_id"``, its value a string with no escape), and
else decodes it to route it and sends it decoded. A CSV row travels as read.

A text can still mislead (the key itself written with an escape), so each process checks every
event it accepts against the share of its lead id (``SortedEvents.strays``), and a
stray makes the caller replay in one process: a wrong route costs time, never a different
result. A rejected record may go to any process: its rejection is the same in each.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import select
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from worker.replay.sorting import Record, share_of, share_of_lead
from worker.replay.sources import DecodedText, iter_records, json_record

__all__ = ["Dealer", "ShareGone", "plain_share", "received"]

# Records per frame: a frame is pickled, and wakes its process, once for this many records.
_FRAME_RECORDS = 1_000
# Bytes a process's frames may wait in the reader beyond what its pipe holds: enough that no
# process waits for its records while the reader waits for room in another's pipe.
_AHEAD_BYTES = 4 << 20
# A pipe's capacity, where the system lets it be raised (Linux, up to 1 MiB by default): fewer
# wake-ups than the 64 KiB it starts with.
_PIPE_BYTES = 1 << 20
# How often the reader, waiting for room in a pipe, checks that its process is still alive.
_CHECK_MS = 200
# A frame's length, before it; a length of zero ends the input.
_HEAD = struct.Struct("<Q")

_KEY = '"lead_id"'
# The key and the opening quote of its value, as compact JSON writes them (most senders): found
# with one search, cheaper than the general pattern below.
_COMPACT = '"lead_id":"'
# What follows the key when its value is a plain string: JSON's spaces, a colon, no escape.
_PLAIN_VALUE = re.compile(r'[ \t\n\r]*:[ \t\n\r]*"([^"\\]*)"')


class ShareGone(Exception):
    """The process of share ``index`` stopped taking its records: it failed, or died."""

    def __init__(self, index: int) -> None:
        super().__init__(f"replay process {index} stopped taking records")
        self.index = index


def plain_share(text: str, shares: int) -> int | None:
    """``share_of`` a JSON line's record, read from its text; None when the text does not say its
    lead id plainly."""
    if text.count(_KEY) != 1:  # none, or a nested or repeated key: which one is the record's?
        return None
    at = text.find(_COMPACT)
    if at >= 0:
        start = at + len(_COMPACT)
        end = text.find('"', start)
        lead_id = text[start:end]
        if end < 0 or "\\" in lead_id:  # an escape in the value: the decoder knows what it says
            return None
    else:
        found = _PLAIN_VALUE.match(text, text.find(_KEY) + len(_KEY))
        if found is None:
            return None
        lead_id = found[1]
    return share_of_lead(lead_id, shares)


class _Outlet:
    """The reader's end of one process's pipe, never blocking: frames the pipe has no room for
    yet wait here."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.frames: deque[memoryview] = deque()
        self.waiting = 0  # bytes
        os.set_blocking(fd, False)
        # Not Linux, or a lower limit: the pipe stays as it is.
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)

    def put(self, data: bytes) -> None:
        self.frames.append(memoryview(data))
        self.waiting += len(data)
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes now; BrokenPipeError once its process has gone."""
        while self.frames:
            frame = self.frames[0]
            try:
                written = os.write(self.fd, frame)
            except BlockingIOError:
                return
            self.waiting -= written
            if written == len(frame):
                self.frames.popleft()
            else:
                self.frames[0] = frame[written:]


class Dealer:
    """The reader: ``files`` read once, each record sent to its share's process.

    ``fds`` are the write ends of the processes' pipes, one per share, in share order;
    ``alive(index)`` says whether that process still runs. ``deal`` raises ``ShareGone`` when
    one stops taking its records, and ``SourceError`` when a file cannot be read.
    """

    def __init__(self, fds: Sequence[int], alive: Callable[[int], bool]) -> None:
        self._outlets = [_Outlet(fd) for fd in fds]
        self._alive = alive

    def deal(self, files: Sequence[Path], on_read: Callable[[int], None] | None = None) -> None:
        """Send every record, then the end; ``on_read`` gets the records read so far (every
        10,000, and at the end), as ``SortedEvents`` counts them."""
        shares = len(self._outlets)
        read = 0
        for file_index, path in enumerate(files):
            # Per share, the line numbers and records of the frame being filled. A record is sent
            # as a str when it is a JSON line to decode, else in a 1-tuple: what the reader
            # decoded, or a CSV row.
            frames: list[tuple[list[int], list[object]]] = [([], []) for _ in range(shares)]
            for number, record in iter_records(path, undecoded=True):
                read += 1
                if on_read is not None and read % 10_000 == 0:
                    on_read(read)
                if isinstance(record, str):  # a JSON line
                    share = plain_share(record, shares)
                    if share is None:  # routed by its record, decoded here, and sent decoded
                        decoded = json_record(record)
                        share, record = share_of(decoded, shares), (decoded,)
                else:  # a CSV row
                    share, record = share_of(record, shares), (record,)
                numbers, records = frames[share]
                numbers.append(number)
                records.append(record)
                if len(numbers) >= _FRAME_RECORDS:
                    self._send(share, (file_index, numbers, records))
                    frames[share] = ([], [])
            for share, frame in enumerate(frames):  # a frame holds the records of one file
                if frame[0]:
                    self._send(share, (file_index, *frame))
        if on_read is not None:
            on_read(read)
        for share in range(shares):
            self._put(share, _HEAD.pack(0))
        self._wait_until(lambda: not any(outlet.waiting for outlet in self._outlets))

    def close(self) -> None:
        """Close the pipes: a process still reading sees the input end early."""
        for outlet in self._outlets:
            os.close(outlet.fd)
        self._outlets.clear()

    def _send(self, share: int, frame: tuple[int, list[int], list[object]]) -> None:
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        self._put(share, _HEAD.pack(len(data)) + data)

    def _put(self, share: int, data: bytes) -> None:
        outlet = self._outlets[share]
        try:
            outlet.put(data)
        except BrokenPipeError:
            raise ShareGone(share) from None
        if outlet.waiting > _AHEAD_BYTES:
            self._wait_until(lambda: outlet.waiting <= _AHEAD_BYTES)

    def _wait_until(self, done: Callable[[], bool]) -> None:
        """Feed the pipes as they empty until ``done()``; ShareGone if a process goes."""
        while not done():
            poll = select.poll()
            waiting = [(i, outlet) for i, outlet in enumerate(self._outlets) if outlet.waiting]
            for _, outlet in waiting:
                poll.register(outlet.fd, select.POLLOUT)
            ready = poll.poll(_CHECK_MS)
            for index, outlet in waiting:
                try:
                    outlet.flush()
                except BrokenPipeError:
                    raise ShareGone(index) from None
                if not ready and not self._alive(index):
                    raise ShareGone(index)


def received(fd: int) -> Iterator[Record]:
    """A process's end: the records the reader dealt it, in the order read, as ``read_records``
    gives them (a JSON line as its text).

    Raises EOFError if the reader stopped before the end of the input.
    """
    with open(fd, "rb") as pipe:
        while True:
            head = pipe.read(_HEAD.size)
            if len(head) < _HEAD.size:
                raise EOFError("the reader stopped before the end of the input")
            (size,) = _HEAD.unpack(head)
            if not size:
                return
            data = pipe.read(size)
            if len(data) < size:
                raise EOFError("the reader stopped before the end of the input")
            file_index, numbers, records = pickle.loads(data)
            for number, record in zip(numbers, records, strict=True):
                if isinstance(record, str):
                    yield file_index, number, record
                else:  # decoded: a string in it is no line's text to decode again
                    value = record[0]
                    yield file_index, number, DecodedText(value) if type(value) is str else value
