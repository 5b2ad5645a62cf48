"""The shim's HTTP app: what the Hub client reads (info, tree, paths-info, resolve) is answered from
the swarm; everything else (whoami, uploads, spaces, unknown routes) goes to the origin unchanged,
with the caller's own Authorization.

Threads: a request is first answered on Starlette's threadpool (40 threads, shared with file
responses) from cached manifests only. A manifest the shim has not got yet may mean waiting for the
tracker to mirror the revision, for minutes: that wait runs on a thread of its own, once per revision
however many requests want it, for at most SLOW_PENDING revisions at a time (beyond that: 503 with
Retry-After; never a queue, so refreshing a known branch never waits behind a slow mirror). Bodies
streamed from the swarm read on threads of their own too (STREAM_THREADS). So slow requests never
starve quick ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from functools import partial

import anyio
import anyio.to_thread
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route
from starlette.types import Scope, Send

from hfbt import __version__, cache
from hfbt.agent.node import Node
from hfbt.errors import HfbtError
from hfbt.hub.readapi import (
    HubError,
    HubRequest,
    Snapshot,
    bad_request,
    file_headers,
    head_response,
    range_headers,
    read_request,
    resolve_target,
    route,
)
from hfbt.manifest import ManifestError
from hfbt.shim.manifests import ManifestCache, ManifestPending, Revision, hub_error
from hfbt.shim.stream import FILE_CHUNK, file_bytes

log = logging.getLogger("hfbt.shim")

SLOW_PENDING = 64  # revisions waited for at once, a thread each (up to 20 s a tracker call); more: 503
STREAM_THREADS = 32  # bodies read from the swarm at once; more wait their turn without a thread
RETRY_AFTER_S = 5
_TRIES = 3  # cached-only passes per request: a branch's entry may expire between a wait and its use

_FORWARD_REQUEST = {"authorization", "content-type", "accept", "accept-encoding", "range", "user-agent"}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
}


class _Backend:
    """readapi's Backend for one request: the caller's token decides which manifests it may see.
    It never waits for the tracker: a manifest not cached raises ManifestPending."""

    def __init__(self, manifests: ManifestCache, token: str | None) -> None:
        self.manifests = manifests
        self.token = token

    def exists(self, repo_type: str, repo_id: str) -> bool:
        # Only tells a one-part repo id ("gpt2/resolve/...") from "org/resolve": assume the former.
        return False

    def revision(self, repo_type: str, repo_id: str, revision: str) -> Revision:
        return self.manifests.get(repo_type, repo_id, revision, self.token, wait=False)

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> Snapshot:
        return self.revision(repo_type, repo_id, revision).snapshot


class _Waits:
    """Manifests being fetched from the tracker: one fetch per (revision, token) however many requests
    wait for it, each on a thread of its own limiter, and at most `pending` of them at once."""

    def __init__(self, manifests: ManifestCache, pending: int) -> None:
        self._manifests = manifests
        self._limiter = anyio.CapacityLimiter(pending)
        self._pending = pending
        self._tasks: dict[tuple, asyncio.Future] = {}

    async def wait(self, key: tuple) -> None:
        """Returns once the manifest is cached; raises its HubError or HfbtError, or a 503 when full."""
        task = self._tasks.get(key)
        if task is None:
            if len(self._tasks) >= self._pending:
                raise busy(f"{len(self._tasks)} revisions are already being fetched from the tracker")
            get = partial(self._manifests.get, *key, wait=True)
            task = asyncio.ensure_future(anyio.to_thread.run_sync(get, limiter=self._limiter))
            self._tasks[key] = task
            task.add_done_callback(partial(self._done, key))
        # shield: a caller that leaves does not cancel the fetch the other callers wait for.
        await asyncio.shield(task)

    def _done(self, key: tuple, task: asyncio.Future) -> None:
        self._tasks.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" when every caller left


def busy(why: str) -> HubError:
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    return HubError(503, f"the shim is busy: {why}; retry shortly", headers=retry)


def create_app(node: Node, origin_url: str) -> FastAPI:
    manifests = ManifestCache(node)
    waits = _Waits(manifests, SLOW_PENDING)
    streams = anyio.CapacityLimiter(STREAM_THREADS)
    origin = httpx.URL(origin_url)
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)
    app = FastAPI(title="hfbt shim", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def on_resolve(backend: _Backend, req: HubRequest, repo_type: str, rest: list[str]) -> Response:
        repo_id, revision, path = resolve_target(backend, req, repo_type, rest)
        rev = backend.revision(repo_type, repo_id, revision)
        f = rev.snapshot.files.get(path)
        entry = rev.entries.get(path)
        if f is None or entry is None:
            # With X-Repo-Commit the client records the miss in .no_exist/<commit>/ and stops asking.
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": rev.manifest.commit})
        if req.method == "HEAD":
            return head_response(rev.snapshot, f)
        # The Range is parsed here whatever serves the bytes, so both paths answer it alike.
        status, start, end, headers = range_headers(req, rev.snapshot, f)
        blob = cache.blob_path(cache.repo_dir(node.cfg.cache_dir, repo_type, repo_id), entry.etag)
        complete = cache.has_blob(blob.parent.parent, entry)
        if "range" not in req.headers and entry.size and complete:
            try:
                st = os.stat(blob)
            except OSError:
                st = None  # removed by gc meanwhile: the swarm path fetches it again
            if st is not None:
                # Complete in the cache: Starlette's FileResponse beats a Python loop 3x.
                return _BlobResponse(
                    blob,
                    stat_result=st,
                    headers=file_headers(rev.snapshot, f),
                    media_type="application/octet-stream",
                )
        body = file_bytes(node, rev.manifest, entry, start, end, backend.token)
        return _CutOnError(
            # A range of a cached file reads at once: the shared pool. The swarm's may wait for pieces.
            _in_threads(body, None if complete else streams),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    def serve(req: HubRequest) -> Response:
        backend = _Backend(manifests, _bearer(req.headers.get("authorization")))
        return route(backend, req, partial(on_resolve, backend, req))

    async def answer(req: HubRequest) -> Response:
        for _ in range(_TRIES):
            try:
                return await run_in_threadpool(serve, req)
            except ManifestPending as p:
                await waits.wait(p.key)
        raise busy("the revision's manifest expired as soon as it came")

    async def handle(request: Request) -> Response:
        if request.url.path == "/_hfbt/health":
            return JSONResponse({"ok": True})
        try:
            if request.method not in ("GET", "HEAD", "POST"):
                return await _passthrough(client, origin, request, await request.body())
            req = await read_request(request)
            try:
                return await answer(req)
            except HubError as e:
                if not (e.status == 404 and e.code is None):
                    raise
            # A route the shim does not serve: the origin answers it.
            return await _passthrough(client, origin, request, req.body)
        except HubError as e:
            return e.response()
        except HfbtError as e:
            return hub_error(e).response()
        except ManifestError as e:
            return bad_request(e).response()

    app.router.routes.append(_Everything(handle))
    return app


class _BlobResponse(FileResponse):
    # Starlette reads 64 KiB per thread hop; a cached blob is whole on disk, so hop less often.
    chunk_size = FILE_CHUNK


async def _in_threads(chunks: Iterator[bytes], limiter: anyio.CapacityLimiter | None) -> AsyncIterator[bytes]:
    """A blocking body read on `limiter`'s threads (None: Starlette's shared pool)."""
    done = object()
    while (chunk := await anyio.to_thread.run_sync(next, chunks, done, limiter=limiter)) is not done:
        yield chunk  # type: ignore[misc]


class _CutOnError(StreamingResponse):
    """A body that may fail after its headers went out (a stalled swarm, bytes that fail the Hub's hash,
    a broken origin): the connection is then closed without the last bytes. Ending it normally instead
    would make the server raise on the short Content-Length, with a traceback in the log."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (HfbtError, httpx.HTTPError) as e:
            code = e.code if isinstance(e, HfbtError) else type(e).__name__
            log.warning("event=stream_cut status=%d code=%s detail=%r", self.status_code, code, str(e))
            return  # no final message: uvicorn closes the connection, the client sees a short body
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


def forward_url(origin: httpx.URL, raw_path: str, query: str) -> httpx.URL:
    """The origin's URL for a request: only its path and query come from the request.

    Pasting the raw request target after the origin's text would let a target such as
    "@127.0.0.1:8080/x" turn the origin into user info of another host; set as a path component,
    nothing in it can change the scheme, host or port.
    """
    path = origin.raw_path.split(b"?", 1)[0].rstrip(b"/") + _url_safe(raw_path)
    return origin.copy_with(raw_path=path + (b"?" + _url_safe(query) if query else b""))


def _url_safe(text: str) -> bytes:
    # The server hands the target over as latin-1 text; bytes a URL cannot hold as they are (non-ASCII,
    # controls, "#" which would start a fragment) are sent percent-encoded.
    raw = text.encode("latin-1")
    return b"".join(bytes([b]) if 0x21 <= b <= 0x7E and b != 0x23 else b"%%%02X" % b for b in raw)


async def _passthrough(
    client: httpx.AsyncClient, origin: httpx.URL, request: Request, body: bytes | None
) -> Response:
    raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
    if not raw.startswith("/"):
        return HubError(400, "the request target must be a path starting with '/'", "BadRequest").response()
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = forward_url(origin, raw, query)
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD_REQUEST}
    try:
        upstream = await client.send(
            client.build_request(request.method, url, headers=headers, content=body), stream=True
        )
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        return HubError(502, f"the origin {origin} could not be reached: {type(e).__name__}").response()
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
    return _CutOnError(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=out_headers,
        background=BackgroundTask(upstream.aclose),
    )


class _Everything(Route):
    """Every path and method: the shim either serves a request or forwards it."""

    def __init__(self, endpoint) -> None:  # noqa: ANN001
        super().__init__("/", endpoint, include_in_schema=False)
        self.methods = None  # Starlette would otherwise answer 405 to anything but GET/HEAD

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
