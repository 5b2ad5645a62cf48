"""The seed's piece server: hands each piece of a blob to exactly one node, over HTTP.

Why: in a BitTorrent swarm every node asks the seed for the rarest pieces it lacks, and a piece some
other node is still fetching looks just as rare, so with 4 MiB pieces the seed sent each piece up to
twice and its link, the bottleneck, was busy that much longer (bench/README.md). libtorrent's super
seeding fixes the copies but waits 10 s on every new connection. Here the seed decides: `next` hands
out every piece once, in order, to whichever node asks first; the nodes trade everything else among
themselves. A node that finds a piece nobody has (its first taker died) fetches it by index.
"""

from __future__ import annotations

import hmac
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

from hfbt.manifest import PIECE_LENGTH
from hfbt.wire import PIECE_HEADER

log = logging.getLogger("hfbt.seed.pieces")

ROUND_IDLE_S = 30.0


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


class PieceBook:
    """Which blobs the seed serves and which piece each one hands out next (no I/O but pread)."""

    def __init__(
        self, round_idle_s: float = ROUND_IDLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._blobs: dict[str, _Blob] = {}
        self._lock = threading.Lock()
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


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={"X-Error-Code": code})


def create_app(
    book: PieceBook, auth_token: str | None = None, on_served: Callable[[str, int], None] | None = None
) -> Starlette:
    def authorized(request: Request) -> bool:
        if not auth_token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {auth_token}".encode())

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
        return Response(data, media_type="application/octet-stream", headers={PIECE_HEADER: str(piece)})

    def take_next(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "Unauthorized", "missing or wrong cluster token")
        info_hash = request.path_params["info_hash"].lower()
        try:
            piece = book.take_next(info_hash)
        except KeyError:
            return _error(404, "NotFound", f"this seed does not serve {info_hash}")
        if piece is None:
            return Response(status_code=204)  # every piece went out once: trade with the other nodes
        return piece_response(info_hash, piece, "next")

    def get_piece(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "Unauthorized", "missing or wrong cluster token")
        return piece_response(request.path_params["info_hash"].lower(), request.path_params["piece"], "index")

    return Starlette(
        routes=[
            Route("/v1/pieces/{info_hash:str}/next", take_next, methods=["POST"]),
            Route("/v1/pieces/{info_hash:str}/{piece:int}", get_piece, methods=["GET"]),
        ]
    )


def serve(
    book: PieceBook,
    host: str,
    port: int,
    auth_token: str | None = None,
    on_served: Callable[[str, int], None] | None = None,
) -> None:
    """Run the piece server in a daemon thread; return once it listens (or raise why it cannot)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(book, auth_token, on_served),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, name="piece-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the piece server could not listen on {host}:{port}")
        thread.join(0.05)
    log.info("event=piece_server_listening host=%s port=%d", host, port)
