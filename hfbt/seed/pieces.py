"""The seed's piece server: hands each piece of a blob to exactly one node, over HTTP.

Why: in a BitTorrent swarm every node asks the seed for the rarest pieces it lacks, and a piece some
other node is still fetching looks just as rare, so with 4 MiB pieces the seed sent each piece up to
twice and its link, the bottleneck, was busy that much longer (bench/README.md). libtorrent's super
seeding fixes the copies but waits 10 s on every new connection. Here the seed decides: `next` hands
out every piece once, in order, to whichever node asks first; the nodes trade everything else among
themselves. A node that finds a piece nobody has (its first taker died) fetches it by index.

Only to nodes with a ticket for that blob (`TicketGate`): the pieces are the blob's bytes, and a
private repo's must reach no one the tracker has not let in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hfbt.manifest import PIECE_LENGTH
from hfbt.tickets import TICKET_HEADER, TicketError, TicketVerifier
from hfbt.wire import PIECE_HEADER

log = logging.getLogger("hfbt.seed.pieces")

ROUND_IDLE_S = 30.0
# Each response holds a 4 MiB piece until the node has read it: at most this many at once (≈ 256 MiB),
# the rest get 503 at once (the node tries again, or takes the piece over BitTorrent) ...
MAX_CONNECTIONS = 64
# ... and a node that stops reading loses its connection after this long, not the seed its memory.
SEND_TIMEOUT_S = 30.0
SEND_SLICE = 256 * 1024


@dataclass
class _Blob:
    path: Path
    size: int
    next_piece: int = 0
    last_handout: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def num_pieces(self) -> int:
        return -(-self.size // PIECE_LENGTH)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={"X-Error-Code": code})


class TicketGate:
    """Which nodes the piece server serves: those showing a ticket (TICKET_HEADER) the tracker signed for
    the blob asked for, checked offline with the tracker's public key (hfbt/tickets.py).

    Until the seed has asked the tracker for that key every request is refused (503): serving without
    knowing whether the tracker is closed would hand private blobs to anyone. The key None: an open
    tracker, no ticket needed. The seed learns the key when it registers (SeedService._register).
    """

    def __init__(self) -> None:
        self._known = False
        self._verifier: TicketVerifier | None = None

    def trust(self, public_key: str | None, clock: Callable[[], float] = time.time) -> None:
        """public_key: the tracker's (base64url raw Ed25519), None for an open tracker. clock: the
        tracker's time as this seed sees it (tickets expire on the tracker's clock)."""
        self._verifier = None if public_key is None else TicketVerifier(public_key, clock)
        self._known = True

    def refusal(self, request: Request, info_hash: str) -> JSONResponse | None:
        """Why this request may not have a piece of `info_hash` (None: it may)."""
        if not self._known:
            return _error(503, "Unavailable", "this seed has not yet learned the tracker's ticket key")
        if self._verifier is None:
            return None
        ticket = request.headers.get(TICKET_HEADER)
        if not ticket:
            return _error(401, "Unauthorized", f"no ticket: send the tracker's ticket in {TICKET_HEADER}")
        try:
            self._verifier.verify(ticket, info_hash)
        except TicketError as e:
            # The reason goes back to the node (its own ticket); nothing of the ticket reaches a log.
            log.debug("event=piece_request_refused info_hash=%s reason=%r", info_hash, str(e))
            return _error(403, "Forbidden", str(e))
        return None


class PieceBook:
    """Which blobs the seed serves and which piece each one hands out next (no I/O but pread)."""

    def __init__(
        self, round_idle_s: float = ROUND_IDLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._blobs: dict[str, _Blob] = {}
        self._lock = threading.Lock()
        self.tickets = TicketGate()  # who may have the pieces (the piece server checks every request)
        self._round_idle_s = round_idle_s
        self._clock = clock

    def add(self, info_hash: str, path: Path, size: int) -> None:
        with self._lock:
            if info_hash not in self._blobs:
                self._blobs[info_hash] = _Blob(path, size)

    def _blob(self, info_hash: str) -> _Blob | None:
        with self._lock:
            return self._blobs.get(info_hash)

    def take_next(self, info_hash: str) -> int | None:
        """The next piece nobody has been given yet; None once every piece went out (KeyError: unknown).

        A request after the last hand-out has been idle for round_idle_s starts a new round: nodes that
        come later (the first ones may be gone) share one more copy instead of each fetching every
        piece by index.
        """
        blob = self._blob(info_hash)
        if blob is None:
            raise KeyError(info_hash)
        now = self._clock()
        with blob.lock:
            if blob.next_piece >= blob.num_pieces:
                if now - blob.last_handout < self._round_idle_s:
                    return None
                blob.next_piece = 0
            blob.last_handout = now
            blob.next_piece += 1
            return blob.next_piece - 1

    def read(self, info_hash: str, piece: int) -> bytes:
        blob = self._blob(info_hash)
        if blob is None:
            raise KeyError(info_hash)
        if not 0 <= piece < blob.num_pieces:
            raise IndexError(piece)
        length = min(PIECE_LENGTH, blob.size - piece * PIECE_LENGTH)
        fd = os.open(blob.path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, piece * PIECE_LENGTH)
        finally:
            os.close(fd)
        if len(data) != length:
            raise OSError(f"{blob.path} is shorter than its torrent says")
        return data


def create_app(book: PieceBook, on_served: Callable[[str, int], None] | None = None) -> Starlette:
    gate = book.tickets

    def piece_response(info_hash: str, piece: int, how: str) -> Response:
        try:
            data = book.read(info_hash, piece)
        except KeyError:
            return _error(404, "NotFound", f"this seed does not serve {info_hash}")
        except IndexError:
            return _error(416, "BadRequest", f"piece {piece} is out of range")
        except OSError as e:
            log.warning("event=piece_read_failed info_hash=%s piece=%d error=%r", info_hash, piece, str(e))
            return _error(500, "ReadFailed", "the seed could not read this piece")
        if on_served:
            on_served(how, len(data))
        return PieceResponse(data, media_type="application/octet-stream", headers={PIECE_HEADER: str(piece)})

    def take_next(request: Request) -> Response:
        info_hash = request.path_params["info_hash"].lower()
        # The ticket first: a caller without one learns nothing, not even which blobs this seed serves.
        if (refused := gate.refusal(request, info_hash)) is not None:
            return refused
        try:
            piece = book.take_next(info_hash)
        except KeyError:
            return _error(404, "NotFound", f"this seed does not serve {info_hash}")
        if piece is None:
            return Response(status_code=204)  # every piece went out once: trade with the other nodes
        return piece_response(info_hash, piece, "next")

    def get_piece(request: Request) -> Response:
        info_hash = request.path_params["info_hash"].lower()
        if (refused := gate.refusal(request, info_hash)) is not None:
            return refused
        return piece_response(info_hash, request.path_params["piece"], "index")

    return Starlette(
        routes=[
            Route("/v1/pieces/{info_hash:str}/next", take_next, methods=["POST"]),
            Route("/v1/pieces/{info_hash:str}/{piece:int}", get_piece, methods=["GET"]),
        ]
    )


class PieceResponse(Response):
    """A piece sent in slices: uvicorn waits for the node to read each one (flow control), so a node that
    stops reading holds one slice in the kernel's buffers rather than the whole piece in ours, and the
    deadline below can notice it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, len(body), SEND_SLICE):
            end = start + SEND_SLICE
            await send(
                {"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < len(body)}
            )
        if not body:
            await send({"type": "http.response.body", "body": b""})


class SendDeadline:
    """ASGI middleware: once one send of a response has waited `timeout` for the node to read, the rest of
    that response is dropped; uvicorn then closes the connection (one line, "returned without completing
    response") and the piece's memory is freed."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gave_up = False

        async def send_or_give_up(message: Message) -> None:
            nonlocal gave_up
            if gave_up:
                return
            try:
                await asyncio.wait_for(send(message), self.timeout)
            except asyncio.TimeoutError:
                gave_up = True
                log.warning("event=piece_send_timeout path=%s timeout_s=%s", scope.get("path"), self.timeout)

        await self.app(scope, receive, send_or_give_up)


def serve(
    book: PieceBook,
    host: str,
    port: int,
    on_served: Callable[[str, int], None] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    send_timeout: float = SEND_TIMEOUT_S,
) -> None:
    """Run the piece server in a daemon thread; return once it listens (or raise why it cannot)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            SendDeadline(create_app(book, on_served), send_timeout),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            limit_concurrency=max_connections,
        )
    )
    thread = threading.Thread(target=server.run, name="piece-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the piece server could not listen on {host}:{port}")
        thread.join(0.05)
    log.info("event=piece_server_listening host=%s port=%d", host, port)
