"""Bounds on what one client can make the tracker hold: request bodies (tracker/limits.py) and stalled
connections (tracker/server.py: header/body deadlines, descriptor limit, backlog).

The middleware is tested on tiny apps through httpx's ASGI transport; the deadlines on the real tracker
process on 127.0.0.1 (`start_tracker_process`, also used by tests/test_fuzz_announce.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hfbt.cluster import free_port
from hfbt.config import TrackerConfig
from tests.conftest import stop_process
from tracker.app import create_app
from tracker.limits import MANIFEST_MAX_BYTES, TRACKER_BODY_LIMITS, BodyLimit, content_length

KiB = 1024

# -- the real tracker as a subprocess ----------------------------------------------------------------

# Role credentials, when a test passes them, travel by environment as in production (never argv).
_SERVE = (
    "import json, sys; from tracker.server import serve; from hfbt import config as C;"
    "args = json.loads(sys.argv[1]); serve(C.TrackerConfig(**args['cfg'],"
    " operator_token=C.read_secret(C.SECRET_OPERATOR_TOKEN), seed_token=C.read_secret(C.SECRET_SEED_TOKEN)),"
    " **args['serve'])"
)


@dataclass
class TrackerProcess:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _soft_nofile(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply


def start_tracker_process(
    tmp_path: Path,
    soft_nofile: int | None = None,
    cfg: dict | None = None,
    env: dict[str, str] | None = None,
    **serve: float,
) -> TrackerProcess:
    """`tracker.server.serve` in a subprocess; `serve` holds its keyword arguments (timeouts).

    `soft_nofile` starts it with that soft descriptor limit, as a service manager's default would.
    """
    port = free_port()
    conf = {"db": str(tmp_path / f"tracker-{port}.db"), "host": "127.0.0.1", "port": port, **(cfg or {})}
    log = tmp_path / f"tracker-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, json.dumps({"cfg": conf, "serve": serve})],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_soft_nofile(soft_nofile),
        )
    t = TrackerProcess(f"http://127.0.0.1:{port}", port, proc, log)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"tracker exited with {proc.returncode}:\n{t.log_text()}")
        try:
            if httpx.get(f"{t.url}/healthz", timeout=1).status_code == 200:
                return t
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            t.stop()
            pytest.fail(f"tracker did not come up:\n{t.log_text()}")
        time.sleep(0.05)


@pytest.fixture
def tracker_process(tmp_path: Path) -> Iterator[Callable[..., TrackerProcess]]:
    started: list[TrackerProcess] = []

    def start(**kw: object) -> TrackerProcess:
        t = start_tracker_process(tmp_path, **kw)  # type: ignore[arg-type]
        started.append(t)
        return t

    try:
        yield start
    finally:
        for t in started:
            t.stop()
        for t in started:
            assert "Traceback" not in t.log_text(), t.log_text()


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (seconds from now)."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit_s} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def _raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test needs {need} descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# -- stalled connections -----------------------------------------------------------------------------

HALF_SENT = 1100


def test_1100_half_sent_requests_do_not_starve_healthz(
    tracker_process: Callable[..., TrackerProcess],
) -> None:
    _raise_own_nofile(HALF_SENT + 256)  # skips where the hard limit leaves no room for the test
    # Started with the common default soft limit of 1024 descriptors: the tracker must raise it itself.
    t = tracker_process(soft_nofile=1024, header_timeout=25.0)
    socks: list[socket.socket] = []
    began = time.monotonic()
    try:
        for i in range(HALF_SENT):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Stall: " + str(i).encode())
            socks.append(s)
        opened = time.monotonic() - began
        start = time.monotonic()
        r = httpx.get(f"{t.url}/healthz", timeout=10)
        took = time.monotonic() - start
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert took < 5, f"/healthz took {took:.1f} s behind {HALF_SENT} stalled connections"
        assert time.monotonic() - began < 30, f"opening {HALF_SENT} connections took {opened:.1f} s"
    finally:
        for s in socks:
            s.close()
    assert "event=open_files_limit" in t.log_text()


def test_stalled_requests_are_closed_after_the_deadline(
    tracker_process: Callable[..., TrackerProcess],
) -> None:
    t = tracker_process(header_timeout=1.0, body_timeout=1.0)

    def connect(payload: bytes) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
        if payload:
            s.sendall(payload)
        return s

    # Half a request line, half the headers, a body that stops: each a 408 with a reason, then closed.
    for payload, what in [
        (b"GET /heal", "request headers"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", "request headers"),
        (
            b"POST /api/v1/seeds HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"seed_id":',
            "request body",
        ),
    ]:
        with connect(payload) as s:
            data, after = _read_until_closed(s, 5)
        assert data.startswith(b"HTTP/1.1 408 "), data
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "RequestTimeout" and what in body["detail"]
        assert 0.5 < after < 3

    # A connection that never says anything is closed without an answer.
    with connect(b"") as s:
        data, after = _read_until_closed(s, 5)
    assert data == b"" and after < 3

    # After a response on a kept-alive connection, the next request's headers have the same deadline.
    with connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as s:
        time.sleep(0.3)
        s.sendall(b"GET /heal")
        data, after = _read_until_closed(s, 5)
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in data and after < 3
    assert httpx.get(f"{t.url}/healthz", timeout=5).status_code == 200


def test_slow_but_moving_uploads_and_long_polls_are_not_cut(
    tracker_process: Callable[..., TrackerProcess],
) -> None:
    t = tracker_process(header_timeout=1.0, body_timeout=1.0)
    body = json.dumps({"seed_id": "slow-seed"}).encode()
    with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
        s.sendall(
            b"POST /api/v1/seeds HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for i in range(0, len(body), 4):  # ~2.4 s in all, never 1 s without a byte
            time.sleep(0.4)
            s.sendall(body[i : i + 4])
        data, _ = _read_until_closed(s, 10)
    status = int(data.split(b" ", 2)[1])
    assert status != 408 and status < 500, data[:300]
    # The app holds a long-poll for longer than either deadline: that is no stall.
    r = httpx.get(f"{t.url}/api/v1/manifest", params={"repo_id": "acme/none", "wait": 2.5}, timeout=10)
    assert r.status_code != 408 and r.status_code < 500


# -- BodyLimit on tiny apps ----------------------------------------------------------------------------


@dataclass
class Seen:
    calls: int = 0
    most: int = 0  # the largest body the app was handed


def _echo_app(seen: Seen) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        seen.calls += 1
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            seen.most = max(seen.most, received)
        return JSONResponse({"received": received})

    return Starlette(routes=[Route("/{p:path}", echo, methods=["POST", "PUT", "GET"])])


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def _chunks(total: int, size: int = 16 * KiB) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_content_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    seen = Seen()
    app = BodyLimit(_echo_app(seen), max_bytes=64 * KiB)

    async def scenario() -> None:
        async with _client(app) as c:
            r = await c.post("/any", content=b"x" * (64 * KiB + 1))
            assert r.status_code == 413 and r.headers["connection"] == "close"
            assert r.json()["error"] == "PayloadTooLarge" and str(64 * KiB) in r.json()["detail"]
            assert seen.calls == 0
            r = await c.post("/any", content=b"x" * (64 * KiB))
            assert r.status_code == 200 and r.json() == {"received": 64 * KiB}

    asyncio.run(scenario())


def test_a_streamed_body_is_cut_once_it_passes_the_limit() -> None:
    seen = Seen()
    app = BodyLimit(_echo_app(seen), max_bytes=100 * KiB)

    async def scenario() -> None:
        async with _client(app) as c:
            r = await c.post("/any", content=_chunks(10 * 1024 * KiB))  # chunked: no Content-Length
            assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
            assert seen.most <= 100 * KiB
            r = await c.post("/any", content=_chunks(100 * KiB))
            assert r.status_code == 200 and r.json() == {"received": 100 * KiB}

    asyncio.run(scenario())


def test_limits_per_path() -> None:
    app = BodyLimit(_echo_app(Seen()), max_bytes=1 * KiB, per_path={"/big": 1024 * KiB})

    async def scenario() -> None:
        async with _client(app) as c:
            assert (await c.post("/small", content=b"x" * 2 * KiB)).status_code == 413
            assert (await c.post("/big", content=b"x" * 512 * KiB)).status_code == 200
            assert (await c.post("/big", content=_chunks(2048 * KiB))).status_code == 413
            assert (await c.get("/small")).status_code == 200  # no body, nothing to limit

    asyncio.run(scenario())


def test_fastapi_json_body_over_the_limit_is_413_not_400() -> None:
    # FastAPI wraps any error raised while it reads a body into "400 error parsing the body".
    api = FastAPI()

    @api.post("/items")
    async def items(body: dict) -> dict:
        return {"keys": len(body)}

    app = BodyLimit(api, max_bytes=32 * KiB)

    async def big() -> AsyncIterator[bytes]:
        yield b'{"a": "'
        async for chunk in _chunks(1024 * KiB):
            yield chunk
        yield b'"}'

    async def scenario() -> None:
        async with _client(app) as c:
            r = await c.post("/items", content=big(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
            r = await c.post("/items", json={"a": 1})
            assert r.status_code == 200 and r.json() == {"keys": 1}

    asyncio.run(scenario())


def test_malformed_content_length_and_other_scopes() -> None:
    assert content_length({"headers": [(b"content-length", b"12")]}) == 12
    assert content_length({"headers": []}) is None
    for bad in ([(b"content-length", b"1_0")], [(b"content-length", b"1"), (b"content-length", b"2")]):
        with pytest.raises(ValueError):
            content_length({"headers": bad})
    sent: list[dict] = []
    called: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        called.append(scope["type"])

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    limited = BodyLimit(app, max_bytes=10)  # type: ignore[arg-type]
    scope = {"type": "http", "path": "/", "headers": [(b"content-length", b"\xb2")]}
    asyncio.run(limited(scope, receive, send))
    assert sent[0]["status"] == 400 and called == []
    asyncio.run(limited({"type": "lifespan"}, receive, send))
    assert called == ["lifespan"]


def manifest_body(n_files: int) -> bytes:
    """The POST /api/v1/revisions body a seed sends for a dataset of `n_files` LFS files."""
    files = []
    for i in range(n_files):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        path = f"data/train/shard-{i // 1000:05d}/part-{i:06d}-of-{n_files:06d}.parquet"
        files.append({"path": path, "size": 1_234_567_890 + i, "etag": h, "sha256": h, "info_hash": h[:40]})
    manifest = {
        "repo_type": "dataset",
        "repo_id": "acme/corpus",
        "commit": "c" * 40,
        "refs": ["main"],
        "complete": False,
        "private": False,
        "files": files,
    }
    return json.dumps({"job_id": "a" * 32, "ref": "main", "manifest": manifest}).encode()


def test_a_40k_file_manifest_fits_the_revisions_limit_with_room() -> None:
    body = manifest_body(40_000)
    # About 11 MiB: the limit leaves room for paths three times as long.
    assert 2.5 * len(body) < MANIFEST_MAX_BYTES, len(body)
    seen = Seen()
    app = BodyLimit(_echo_app(seen), max_bytes=1024 * KiB, per_path=TRACKER_BODY_LIMITS)

    async def scenario() -> None:
        async with _client(app) as c:
            r = await c.post("/api/v1/revisions", content=body)
            assert r.status_code == 200 and r.json() == {"received": len(body)}
            assert (await c.post("/api/v1/seeds", content=body)).status_code == 413

    asyncio.run(scenario())


def test_the_tracker_app_refuses_oversized_bodies(tmp_path: Path) -> None:
    app = create_app(TrackerConfig(db=tmp_path / "t.db"))
    if not any(m.cls is BodyLimit for m in app.user_middleware):
        pytest.skip("BodyLimit is not wired into tracker/app.py create_app yet")

    async def scenario() -> None:
        async with _client(app) as c:
            r = await c.post("/api/v1/seeds", content=_chunks(2 * 1024 * KiB))
            assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
            r = await c.post("/api/v1/revisions", content=b"x" * (MANIFEST_MAX_BYTES + 1))
            assert r.status_code == 413

    asyncio.run(scenario())
