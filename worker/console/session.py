"""Signing in to the console: an API token in a form, then a session cookie.

The token is checked by the API's own constant-time code (``find_token``) against the same tokens
file; the session (Litestar's client-side sessions: AES-GCM with a key derived from the secret
key, HttpOnly, SameSite=Lax, Secure over https) holds the token's name and role and when it was
signed in, never the token. A session lasts SESSION_S from sign-in, whatever happens meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Guard, Message, Receive, Scope, Send

from worker.api.tokens import Token, find_token

__all__ = [
    "CONSOLE_ROLES",
    "SESSION_S",
    "SignedIn",
    "secure_cookies",
    "sign_in",
    "signed_in",
    "user",
]

#: A working day: then the operator signs in again.
SESSION_S = 8 * 3600
#: Who may sign in: a viewer reads, an editor also changes (a dialer's token is for the API).
CONSOLE_ROLES = ("viewer", "editor")


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who is signed in: the token's name (the author of their edits) and role."""

    name: str
    role: str

    @property
    def editor(self) -> bool:
        return self.role == "editor"


def sign_in(connection: ASGIConnection[Any, Any, Any, Any], presented: str) -> Token | None:
    """The token ``presented`` is, or None; on a token of a console role, the session is set."""
    token = find_token(connection.app.state.tokens, presented.strip())
    if token is not None and token.role in CONSOLE_ROLES:
        connection.set_session({"name": token.name, "role": token.role, "at": int(time.time())})
    return token


def user(connection: ASGIConnection[Any, Any, Any, Any]) -> SignedIn | None:
    """Who this request's session is, or None (no session, an expired one, a role gone)."""
    session = connection.session if "session" in connection.scope else {}
    name, role, at = session.get("name"), session.get("role"), session.get("at")
    if not isinstance(name, str) or role not in CONSOLE_ROLES or not isinstance(at, int):
        return None
    if time.time() - at > SESSION_S:
        return None
    # A token removed from the file (or given another role) since: signed out.
    tokens = connection.app.state.tokens
    if not any(token.name == name and token.role == role for token in tokens):
        return None
    return SignedIn(name, role)


def signed_in(roles: tuple[str, ...]) -> Guard:
    """A guard: no valid session is 401 (the console sends the browser to its sign-in page),
    a session of another role 403."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        who = user(connection)
        if who is None:
            raise NotAuthorizedException("sign in first")
        if who.role not in roles:
            raise PermissionDeniedException(
                f"{who.name} is a {who.role}; this needs {' or '.join(roles)}"
            )

    return guard


def secure_cookies(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: over https (uvicorn's own TLS, or a proxy's X-Forwarded-Proto it trusts),
    every cookie the console sets is marked Secure."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("scheme") != "https":
            await app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (name, value + b"; Secure")
                    if name.lower() == b"set-cookie" and b"; secure" not in value.lower()
                    else (name, value)
                    for name, value in message.get("headers", [])
                ]
            await send(message)

        await app(scope, receive, send_secure)

    return middleware
