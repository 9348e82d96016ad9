"""Authentication and roles: each request's ``Authorization: Bearer`` token, checked by a guard.

A route group is guarded by ``allow(roles)``: no token or an unknown one is 401 (with
``WWW-Authenticate: Bearer``), a known token of another role 403. The token is never logged or
echoed: errors name the token's ``name`` at most.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from worker.api.tokens import Token, find_token

__all__ = ["ANY_ROLE", "DIALERS", "EDITORS", "VIEWERS", "allow", "caller"]

#: Who may do what (DESIGN.md section 8): a viewer reads everything, an editor also changes.
ANY_ROLE = ("dialer", "viewer", "editor")
DIALERS = ANY_ROLE  # phones, claims and decide: the dialer's, and readable by all
VIEWERS = ("viewer", "editor")
EDITORS = ("editor",)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Token:
    header = connection.headers.get("authorization")
    if not header:
        raise NotAuthorizedException(
            "authentication required: send Authorization: Bearer <token>", headers=_CHALLENGE
        )
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise NotAuthorizedException(
            "Authorization: only a Bearer token is accepted", headers=_CHALLENGE
        )
    token = find_token(connection.app.state.tokens, presented)
    if token is None:
        raise NotAuthorizedException("invalid token", headers=_CHALLENGE)
    return token


def allow(roles: tuple[str, ...]) -> Guard:
    """A guard that lets through the tokens of ``roles`` (401 unauthenticated, 403 other roles)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        token = _authenticate(connection)
        if token.role not in roles:
            raise PermissionDeniedException(
                f"token {token.name!r} has the role {token.role}; this needs {' or '.join(roles)}"
            )
        connection.scope["state"]["recall_token"] = token

    return guard


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Token:
    """The token a guarded request came with (its name is the author of what it changes)."""
    token: Token = connection.scope["state"]["recall_token"]
    return token
