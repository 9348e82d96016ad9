"""Ending a process at once, without freeing its objects one by one.

CPython frees an object when its last reference goes, and at exit it frees the modules and
everything still alive, one object at a time. After a dry replay that is a long wait for nothing:
the phone states of every lead, freed when the simulation returns, then the interpreter's own
teardown (0.2 to 0.3 s after the summary of a 200,000-event replay, docs/PERFORMANCE.md).

A process that has written, flushed and closed all it writes may skip it with ``os._exit``:
multiprocessing's forked processes always end that way, and ``recall`` (``worker.cli.run``) does
after a command that called ``finished``. Such a process calls ``ends_at_once`` first; a command
that will finish so (a dry replay) calls ``start_holding``, and from then on ``hold`` keeps what
it no longer needs alive to the end, so that it is not freed on the way either. In any other
process (the tests' in-process commands), or under any other command (``recall serve``, whose
rules preview simulates too), ``hold`` does nothing and ``finished`` changes nothing.
"""

from __future__ import annotations

import atexit
import os
import sys

__all__ = [
    "ends_at_once",
    "exit_at_once",
    "finished",
    "hold",
    "is_finished",
    "start_holding",
]

# Whether the process ends with os._exit after a finished command.
_ends_at_once = False
# What `hold` keeps; None while the command is not known to finish (`start_holding`).
_held: list[object] | None = None
_finished = False


def ends_at_once() -> None:
    """Declare that this process ends with ``os._exit`` once its command has ``finished``."""
    global _ends_at_once, _finished
    _ends_at_once, _finished = True, False


def start_holding() -> None:
    """The command will have ``finished`` if it succeeds: ``hold`` keeps what it is given from
    now on, when the process ends at once (``ends_at_once``)."""
    global _held
    if _ends_at_once and _held is None:
        _held = []


def hold(*objects: object) -> None:
    """Keep ``objects`` alive until the process ends, when it ends at once after this command
    (``start_holding``); otherwise nothing.

    For large structures (millions of objects) that are no longer needed: held, they are never
    freed (``os._exit`` returns the memory whole); not held, they are freed as usual when the
    caller lets go of them.
    """
    if _held is not None:
        _held.extend(objects)


def finished() -> None:
    """The command has written, flushed and closed all it writes: only exiting is left to do.

    Nothing may be left for the interpreter's teardown: no open file or connection that must be
    closed, no thread that must be joined (exit handlers still run, ``exit_at_once``).
    """
    global _finished
    _finished = True


def is_finished() -> bool:
    """Whether the command said it had ``finished``."""
    return _finished


def exit_at_once(code: int) -> None:
    """End the process with ``code`` at once: exit handlers run, objects are not freed.

    Returns (and the caller exits as usual) when standard output or error cannot be flushed
    (a closed pipe, say), so that the failure is reported as a normal exit reports it.
    """
    # What a normal exit does before its teardown, in its order: the exit handlers (logging's
    # handlers flushed and closed, multiprocessing's children joined, weakref finalizers; run
    # once: they are cleared), then standard output and error flushed.
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return
    os._exit(code)
