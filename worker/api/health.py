"""``GET /healthz`` (no authentication: for probes) and ``GET /v1/status`` (``recall status``)."""

from __future__ import annotations

from typing import Any

from litestar import Response, Router, get
from litestar.datastructures import State
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy import text

from config.settings import mask_url
from worker.api.auth import VIEWERS, allow
from worker.api.errors import documented, one_line
from worker.api.models import Error, Health, Status, shaped
from worker.runtime.logs import mask_secrets
from worker.runtime.status import collect

__all__ = ["healthz", "status_router"]


@get("/healthz", sync_to_thread=True, tags=["health"], security=[{}], responses=documented(503))
def healthz(state: State) -> Response[Health | Error]:
    """200 ``{"status": "ok"}`` when the database answers, else 503 with the reason."""
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        url = mask_url(state.engine.url.render_as_string(hide_password=False))
        first = mask_secrets(str(error)).strip().splitlines()
        reason = first[0] if first else type(error).__name__
        return Response(
            Error(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=one_line(f"database {url} does not answer: {reason}"),
            ),
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
        )
    return Response(Health(status="ok"))


@get("/", sync_to_thread=True, responses=documented(401, 403))
def status(state: State) -> Status:
    """The ``recall status --json`` figures: broker, database, workers, queues, recalls, dead
    letters, and the problems that make the system unhealthy (none: healthy)."""
    from worker.app import app  # the Celery app, for its broker: loaded on first use only

    celery: Any = app
    return shaped(collect(state.settings, celery, timeout=2.0).to_json(), Status)


status_router = Router(
    "/v1/status",
    route_handlers=[status],
    guards=[allow(VIEWERS)],
    tags=["status"],
)
