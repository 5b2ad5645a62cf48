"""Bounds on what one request may make the tracker hold: body size (pure ASGI, no framework).

FastAPI reads and parses a whole JSON body before a route or its validation runs, so a body limit has
to sit in front of it: `BodyLimit` refuses a request whose Content-Length is too large from its headers
alone, and cuts a chunked or streamed body the moment it passes the limit, with a 413 either way. The
app never sees more than `max_bytes` of a body, so memory per request is bounded whatever a client sends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("tracker.limits")

MiB = 1024 * 1024
# A revision's manifest is the one large body: 40,000 files with LFS hashes and info-hashes measure
# about 11 MiB of JSON (tests/test_tracker_hardening.py), so 32 MiB leaves room for longer paths.
MANIFEST_MAX_BYTES = 32 * MiB
# A blob torrent grows by 20 bytes of piece hash per 4 MiB: base64 of a 1 TiB file's torrent is ~7 MiB.
TORRENT_MAX_BYTES = 8 * MiB
DEFAULT_MAX_BYTES = 1 * MiB
TRACKER_BODY_LIMITS: Mapping[str, int] = {
    "/api/v1/revisions": MANIFEST_MAX_BYTES,
    "/api/v1/torrents": TORRENT_MAX_BYTES,
}


async def send_json_error(
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    close: bool = False,
) -> None:
    """Answer `{"error": code, "detail": detail}` from ASGI, like tracker/errors.py does from a route.

    `close` adds `Connection: close`: after a refused body the rest of it is still on the wire, and the
    server must drop the connection rather than parse that as the next request.
    """
    body = json.dumps({"error": code, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length; None if absent; ValueError if malformed or contradictory."""
    values = {v.strip() for k, v in scope.get("headers", ()) if k == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("conflicting Content-Length headers")
    (value,) = values
    if not value.isdigit() or len(value) > 19:  # bytes.isdigit() is ASCII digits only
        raise ValueError("Content-Length is not a number")
    return int(value)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `max_bytes` (or `per_path[scope["path"]]`) with a 413 JSON answer."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    def limit_for(self, scope: Scope) -> int:
        return self.per_path.get(scope.get("path", ""), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        try:
            declared = content_length(scope)
        except ValueError as e:
            await send_json_error(send, 400, "BadRequest", str(e), close=True)
            return
        if declared is not None and declared > limit:
            await send_json_error(send, 413, "PayloadTooLarge", _too_large(limit, declared), close=True)
            return

        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The chunk that crossed the line is dropped, not handed on: the app holds <= limit.
                    refused = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the answer is the 413 below, whatever the app makes of the cut body
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # Ours, or what a framework wrapped it in (FastAPI turns an error while reading the body
            # into "400 error parsing the body"): once refused, the answer is ours.
            if not refused:
                raise
        if refused:
            if started:
                log.warning("event=body_limit_after_response path=%s", scope.get("path", ""))
            else:
                await send_json_error(send, 413, "PayloadTooLarge", _too_large(limit), close=True)


def _too_large(limit: int, declared: int | None = None) -> str:
    size = f" ({declared} bytes)" if declared is not None else ""
    return f"request body{size} is larger than this endpoint's limit of {limit} bytes"
