"""Running the tracker: uvicorn with its access log off (announce URLs carry credentials).

Every connection, even one that never finishes its request, holds a file descriptor and a protocol
object, and uvicorn waits for request headers forever. So a few hundred stalled clients used to exhaust
a default 1024-descriptor limit and keep /healthz from even being accepted. Three bounds fix that: a
deadline for request headers and an idle deadline for request bodies (`DeadlineProtocol`), the soft
descriptor limit raised to the hard one, and a listen backlog that holds a burst of new connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from hfbt.config import TrackerConfig
from tracker.app import create_app

log = logging.getLogger("tracker.server")

# Long-polls (next-job, manifest waits) would otherwise hold a shutdown for up to a minute.
SHUTDOWN_GRACE_S = 3
# From connecting (or from the end of the previous response) to the end of the request headers.
HEADER_TIMEOUT_S = 10.0
# Between two pieces of a request body: an upload that stops is cut, a slow one that moves is not.
BODY_IDLE_TIMEOUT_S = 20.0
# The kernel caps it at net.core.somaxconn (4096 on current Linux).
BACKLOG = 4096
# Where the hard limit is "unlimited" (macOS), a soft limit this high is still accepted.
_FALLBACK_NOFILE = 10240


def configure_logging(level: int = logging.INFO) -> None:
    """key=value lines on stderr, unless the embedding program configured logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) as they are afterwards."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FALLBACK_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("event=open_files_limit_unchanged soft=%d wanted=%d error=%s", soft, target, e)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class _Deadlines:
    """Mixed in front of uvicorn's HTTP/1.1 protocol (h11 or httptools): close stalled connections.

    uvicorn arms a timer only between requests (keep-alive). Here one deadline runs while the connection
    waits for request headers (armed once per request, so trickling a byte at a time does not extend
    it) and another while a request body is arriving (re-armed by every chunk). While the app holds the
    whole request (long-polls), no deadline runs. Relies on the protocol's `cycle` (None before the first
    request; `more_body`, `response_started`, `response_complete`), `transport` and `flow`, which both
    of uvicorn's HTTP/1.1 protocols have.
    """

    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_IDLE_TIMEOUT_S

    _timer: asyncio.TimerHandle | None = None
    _waiting: str = ""  # "headers", "body" or "" (no deadline)
    _partial: bool = False  # bytes of the awaited request's head have arrived

    transport: asyncio.Transport
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._watch()
        if self._waiting == "headers":
            self._partial = True

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _watch(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._cancel()
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._waiting != "headers":
                self._arm("headers", self.header_timeout)
                self._partial = False
        elif cycle.more_body:
            self._arm("body", self.body_timeout)
        else:
            self._cancel()

    def _arm(self, waiting: str, seconds: float) -> None:
        self._cancel()
        self._waiting = waiting
        self._timer = self.loop.call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._waiting = ""

    def _expired(self) -> None:
        self._timer = None
        waiting, self._waiting = self._waiting, ""
        if self.transport.is_closing():
            return
        if waiting == "body" and self.flow.read_paused:
            # The app is not reading yet (flow control paused the socket): the client is not stalling.
            self._arm("body", self.body_timeout)
            return
        cycle = self.cycle
        answer = self._partial if waiting == "headers" else not cycle.response_started
        log.debug("event=connection_timeout waiting=%s answered=%s", waiting, answer)
        if answer:
            what = "request headers" if waiting == "headers" else "more of the request body"
            seconds = self.header_timeout if waiting == "headers" else self.body_timeout
            self.transport.write(_timeout_response(f"{what} not received within {seconds:g} s"))
        self.transport.close()


def _timeout_response(detail: str) -> bytes:
    # Written straight to the socket: no request reached the app, so no ASGI response can carry it.
    body = json.dumps({"error": "RequestTimeout", "detail": detail}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def deadline_protocol(
    header_timeout: float = HEADER_TIMEOUT_S, body_timeout: float = BODY_IDLE_TIMEOUT_S
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol class with the header and body deadlines, for `uvicorn.Config(http=)`."""
    attrs = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("DeadlineProtocol", (_Deadlines, AutoHTTPProtocol), attrs)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open requests before the app's own shutdown: end the long-polls first.
        loop = getattr(self.config.app.state, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.config.app.state.scheduler.close)
        super().handle_exit(sig, frame)


def serve(
    cfg: TrackerConfig,
    header_timeout: float = HEADER_TIMEOUT_S,
    body_timeout: float = BODY_IDLE_TIMEOUT_S,
    backlog: int = BACKLOG,
) -> None:
    configure_logging()
    soft, hard = raise_open_files_limit()
    log.info("event=open_files_limit soft=%d hard=%d", soft, hard)
    app = create_app(cfg)
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        access_log=False,
        log_config=None,  # keep our handlers; uvicorn's default config would install its own
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        server_header=False,
        http=deadline_protocol(header_timeout, body_timeout),
        backlog=backlog,
    )
    _Server(config).run()
