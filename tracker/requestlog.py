"""One key=value log line per request, with tickets redacted (uvicorn's access log would print them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The logger of the tracker's HTTP surface: request lines and route errors share one name to filter on.
log = logging.getLogger("tracker.app")

# (path, query, status, seconds) for each request: how the metrics see every request.
Observer = Callable[[str, bytes, int, float], None]


def redact_path(path: str) -> str:
    """Announce/scrape paths carry a ticket: a bearer grant until it expires, so it never reaches a log."""
    for prefix in ("/announce/", "/scrape/"):
        if path.startswith(prefix):
            return prefix + "<ticket>"
    return path


class RequestLog:
    """ASGI middleware: a request line per HTTP request, and the request handed to `observe`.

    Announces and scrapes are the bulk of the traffic: they log at DEBUG, the API at INFO.
    """

    def __init__(self, app: ASGIApp, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            if self.observe is not None:
                self.observe(path, scope.get("query_string", b""), status, time.perf_counter() - start)
            level = logging.INFO if path.startswith("/api/") else logging.DEBUG
            if log.isEnabledFor(level):
                client = scope.get("client") or ("-", 0)
                log.log(
                    level,
                    "event=request method=%s path=%s status=%d ms=%.1f client=%s",
                    scope.get("method"),
                    redact_path(path),
                    status,
                    (time.perf_counter() - start) * 1000,
                    client[0],
                )
