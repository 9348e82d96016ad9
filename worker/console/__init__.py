"""The operators' console (DESIGN.md section 8): server-rendered pages served by ``recall serve``.

``Console.for_settings(settings)`` gives what ``create_app`` adds to the service: the ``/console``
router (and ``/`` sending there), its stylesheet, its templates, the session middleware, and the
CSRF protection of every form (the bearer-token API paths excluded: a browser never sends their
token by itself, so they cannot be forged across sites).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.config.csrf import CSRFConfig
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler, Middleware

from config.settings import Settings
from worker.console import pages
from worker.console.secret import derived_key, secret_key
from worker.console.session import SESSION_S, secure_cookies, user
from worker.domain.rules_diff import toml_value

__all__ = ["Console"]

_HERE = Path(__file__).parent
#: The API's paths, authenticated by a bearer token: no CSRF token there.
API_PATHS = ["^/v1", "^/healthz", "^/openapi.json", "^/schema"]


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/console")


def _error_page(request: Request[Any, Any, Any], error: HTTPException) -> Template:
    if isinstance(error, NotAuthorizedException):
        return Redirect("/console/login")  # type: ignore[return-value]
    return Template(
        template_name="error.html",
        context={"user": user(request), "error": error.detail, "page": "error"},
        status_code=error.status_code,
    )


@dataclass(frozen=True, slots=True)
class Console:
    """What the console adds to the service's Litestar app."""

    route_handlers: list[ControllerRouterHandler]
    middleware: list[Middleware]
    csrf_config: CSRFConfig
    template_config: TemplateConfig[JinjaTemplateEngine]

    @classmethod
    def for_settings(cls, settings: Settings) -> Console:
        """The console for ``settings``; raises ``SecretKeyError`` without a usable secret key."""
        key = secret_key(settings)
        sessions = CookieBackendConfig(
            secret=derived_key(key, "session"),
            key="recall_session",
            max_age=SESSION_S,
            httponly=True,
            samesite="lax",
            path="/console",
            exclude=API_PATHS,
        )
        router = Router(
            "/console",
            route_handlers=[pages.router, _static()],
            exception_handlers={HTTPException: _error_page},
            include_in_schema=False,
        )
        return cls(
            route_handlers=[root, router],
            # Sessions at the app's level (Litestar copies a router's, and the cipher cannot be).
            middleware=[secure_cookies, sessions.middleware],
            csrf_config=CSRFConfig(
                secret=derived_key(key, "csrf").hex(),
                cookie_name="recall_csrf",
                cookie_path="/console",
                cookie_httponly=True,
                cookie_samesite="lax",
                exclude=API_PATHS,
            ),
            template_config=TemplateConfig(
                directory=_HERE / "templates",
                engine=JinjaTemplateEngine,
                engine_callback=_template_globals,
            ),
        )


def _template_globals(engine: JinjaTemplateEngine) -> None:
    engine.engine.globals["toml"] = toml_value


def _static() -> Router:
    return create_static_files_router(
        path="/static", directories=[_HERE / "static"], include_in_schema=False
    )
