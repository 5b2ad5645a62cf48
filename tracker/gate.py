"""Credentials are checked before a request body is read.

FastAPI reads and parses a JSON body before any dependency runs, so a credential check in a route
dependency comes after the tracker has buffered whatever an anonymous caller sent. This ASGI middleware
answers /api/v1 requests without a valid credential from their headers alone, and hands the routes the
`Caller` it found (`request.state.caller`); each route then asks for the roles it serves (`roles`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tracker.auth import Auth, Caller, Denied
from tracker.errors import ApiError

API_PREFIX = "/api/v1"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class AuthGate:
    def __init__(self, app: ASGIApp, auth: Auth, on_denied: Callable[[str], None]) -> None:
        self.app = app
        self.auth = auth
        self.on_denied = on_denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            caller = self.auth.caller(_header(scope, b"authorization"), _header(scope, b"x-hfbt-node"))
        except Denied as e:
            self.on_denied("credential")
            code = "Unauthorized" if e.status == 401 else "BadRequest"
            body = json.dumps({"error": code, "detail": e.detail}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if e.status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="hfbt"'))
            await send({"type": "http.response.start", "status": e.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {}).update(caller=caller, on_denied=self.on_denied)
        await self.app(scope, receive, send)


def roles(*allowed: str) -> Callable[[Request], Caller]:
    """A route dependency: the caller, if its role is one of `allowed` (an open tracker's caller has all)."""

    def dependency(request: Request) -> Caller:
        caller: Caller = request.state.caller
        if not caller.may(*allowed):
            request.state.on_denied("role")
            raise ApiError(
                403, "Forbidden", f"the {caller.role} credential cannot do this ({' or '.join(allowed)} only)"
            )
        return caller

    # Named on the function so tools can read a route's roles off it (the tracker fuzz test does).
    dependency.roles = allowed  # type: ignore[attr-defined]
    return dependency
