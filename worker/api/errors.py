"""Errors as the API gives them: JSON ``{"status_code": N, "detail": "<one line>"}``, always.

Litestar's own errors (404, 405, a query parameter of the wrong type) come out in that shape too,
without the request's URL (a token sent by mistake in a query must not be echoed); anything
unexpected is a 500 with a fixed detail, logged on one line with its type, never a traceback to
the client.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY, HTTP_500_INTERNAL_SERVER_ERROR

from worker.api.models import Error

__all__ = ["Unprocessable", "documented", "exception_handlers"]

log = logging.getLogger("recall.api")


class Unprocessable(HTTPException):
    """A request well formed but refused by the rules of the product (422, one-line reason)."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY


#: What each error status means, for the OpenAPI document.
_MEANINGS = {
    400: "The request cannot be read (a parameter of the wrong type, a body that is not JSON).",
    401: "No token, or not a valid one (`Authorization: Bearer <token>`).",
    403: "The token's role may not do this.",
    404: "Not found.",
    422: "Refused, with the one-line reason the matching `recall` command gives.",
    503: "The database does not answer.",
}


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """The error responses ``statuses`` (each an ``Error``) for a handler's ``responses``."""
    return {
        status: ResponseSpec(data_container=Error, description=_MEANINGS[status])
        for status in statuses
    }


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response[Error]:
    return Response(
        Error(status_code=status, detail=one_line(detail)),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Error]:
    detail = error.detail
    if isinstance(error, ValidationException):
        # Litestar's detail names the whole URL; the reasons are in ``extra``.
        reasons = [
            f"{item.get('key') or item.get('source') or 'body'}: {item.get('message')}"
            for item in (error.extra if isinstance(error.extra, list) else [])
            if isinstance(item, dict)
        ]
        detail = "invalid request: " + ("; ".join(reasons) or "the body cannot be read")
    return _error(error.status_code, detail, error.headers)


def _crash(request: Request[Any, Any, Any], error: Exception) -> Response[Error]:
    log.error(
        "%s %s failed: %s: %s",
        request.method,
        request.url.path,
        type(error).__name__,
        one_line(str(error))[:500],
    )
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal error (logged by the service)")


exception_handlers: dict[int | type[Exception], Any] = {
    HTTPException: _http_error,
    Exception: _crash,
}
