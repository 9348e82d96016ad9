"""The Litestar app of ``recall serve``: ``create_app(settings)``.

One engine for the process (the database checked at the latest migration, as the worker does),
the operator's tokens, the routes of each subject, errors as one-line JSON, and the OpenAPI
document at ``/openapi.json`` (authenticated, as every request but ``/healthz``).
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.enums import OpenAPIMediaType
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from config.settings import Settings
from worker.api import claims, dead_letters, decide, phones, rules
from worker.api.auth import ANY_ROLE, allow
from worker.api.errors import exception_handlers
from worker.api.health import healthz, status_router
from worker.api.tokens import EMBEDDED_FILE, TokensError, load_tokens
from worker.console import Console
from worker.store.database import database_url, ensure_migrated, make_engine

__all__ = ["create_app", "tokens_path"]


def tokens_path(settings: Settings) -> Path:
    """Where the tokens are: ``RECALL_API_TOKENS``, else, on the embedded default only, the file
    under ``RECALL_HOME``. Elsewhere no file is a TokensError: the service never runs without
    authentication."""
    if settings.api_tokens is not None:
        return settings.api_tokens
    if settings.embedded:
        return settings.home / EMBEDDED_FILE
    raise TokensError(
        "no API tokens configured: set RECALL_API_TOKENS to a tokens file"
        " (`recall tokens new NAME --role ROLE` prints an entry for it)"
    )


@get("/openapi.json", include_in_schema=False, guards=[allow(ANY_ROLE)])
async def openapi_document(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The OpenAPI document of this service."""
    return Response(
        request.app.openapi_schema.to_schema(), media_type=OpenAPIMediaType.OPENAPI_JSON
    )


def create_app(settings: Settings) -> Litestar:
    """The service for ``settings``: refuses (``DatabaseNotReady``, ``TokensError``,
    ``SecretKeyError``) a database not at the latest migration, a missing or broken tokens file
    and no secret key for the console's sessions."""
    tokens = load_tokens(tokens_path(settings))
    console = Console.for_settings(settings)
    engine = make_engine(database_url(settings))
    ensure_migrated(engine)
    openapi = OpenAPIConfig(
        title="recall-scheduler",
        version=version("recall-scheduler"),
        description="The recall scheduler's HTTP API (DESIGN.md section 8). Every request but"
        " GET /healthz needs `Authorization: Bearer <token>`.",
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
        ),
        security=[{"bearer": []}],
        use_handler_docstrings=True,
        # Litestar's own copy of the document, behind the same authentication as /openapi.json.
        path="/schema",
        render_plugins=[JsonRenderPlugin()],
        openapi_router=Router(
            "/schema", route_handlers=[], guards=[allow(ANY_ROLE)], include_in_schema=False
        ),
    )
    return Litestar(
        route_handlers=[
            healthz,
            openapi_document,
            phones.router,
            claims.router,
            decide.router,
            rules.router,
            dead_letters.router,
            status_router,
            *console.route_handlers,
        ],
        state=State({"settings": settings, "engine": engine, "tokens": tokens}),
        exception_handlers=exception_handlers,
        openapi_config=openapi,
        middleware=console.middleware,
        csrf_config=console.csrf_config,
        template_config=console.template_config,
        on_shutdown=[lambda: engine.dispose()],
        debug=False,
    )
