"""The shim's HTTP app: what the Hub client reads (info, tree, paths-info, resolve) is answered from
the swarm; everything else (whoami, uploads, spaces, unknown routes) goes to the origin unchanged,
with the caller's own Authorization."""

from __future__ import annotations

import logging
from functools import partial

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route
from starlette.types import Scope

from hfbt import __version__, cache
from hfbt.agent.node import Node
from hfbt.errors import HfbtError
from hfbt.hub.readapi import (
    HubError,
    HubRequest,
    Snapshot,
    file_headers,
    head_response,
    range_headers,
    read_request,
    resolve_target,
    route,
)
from hfbt.shim.manifests import ManifestCache, hub_error
from hfbt.shim.stream import file_bytes

log = logging.getLogger("hfbt.shim")

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
    """readapi's Backend for one request: the caller's token decides which manifests it may see."""

    def __init__(self, manifests: ManifestCache, token: str | None) -> None:
        self.manifests = manifests
        self.token = token

    def exists(self, repo_type: str, repo_id: str) -> bool:
        # Only tells a one-part repo id ("gpt2/resolve/...") from "org/resolve": assume the former.
        return False

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> Snapshot:
        return self.manifests.get(repo_type, repo_id, revision, self.token).snapshot


def create_app(node: Node, origin_url: str) -> FastAPI:
    manifests = ManifestCache(node)
    origin = origin_url.rstrip("/")
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)
    app = FastAPI(title="hfbt shim", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def on_resolve(backend: _Backend, req: HubRequest, repo_type: str, rest: list[str]) -> Response:
        repo_id, revision, path = resolve_target(backend, req, repo_type, rest)
        rev = manifests.get(repo_type, repo_id, revision, backend.token)
        f = rev.snapshot.files.get(path)
        entry = rev.entries.get(path)
        if f is None or entry is None:
            # With X-Repo-Commit the client records the miss in .no_exist/<commit>/ and stops asking.
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": rev.manifest.commit})
        if req.method == "HEAD":
            return head_response(rev.snapshot, f)
        blob = cache.blob_path(cache.repo_dir(node.cfg.cache_dir, repo_type, repo_id), entry.etag)
        if entry.size and cache.has_blob(blob.parent.parent, entry):
            # Complete in the cache: Starlette's FileResponse (ranges included) beats a Python loop 3x.
            return FileResponse(
                blob, headers=file_headers(rev.snapshot, f), media_type="application/octet-stream"
            )
        status, start, end, headers = range_headers(req, rev.snapshot, f)
        body = _guarded(file_bytes(node, rev.manifest, entry, start, end, backend.token), path)
        return StreamingResponse(
            body, status_code=status, headers=headers, media_type="application/octet-stream"
        )

    def serve(req: HubRequest) -> Response:
        backend = _Backend(manifests, _bearer(req.headers.get("authorization")))
        return route(backend, req, partial(on_resolve, backend, req))

    async def handle(request: Request) -> Response:
        if request.url.path == "/_hfbt/health":
            return JSONResponse({"ok": True})
        try:
            if request.method not in ("GET", "HEAD", "POST"):
                return await _passthrough(client, origin, request, await request.body())
            req = await read_request(request)
            try:
                return await run_in_threadpool(serve, req)
            except HubError as e:
                if not (e.status == 404 and e.code is None):
                    raise
            # A route the shim does not serve: the origin answers it.
            return await _passthrough(client, origin, request, req.body)
        except HubError as e:
            return e.response()
        except HfbtError as e:
            return hub_error(e).response()

    app.router.routes.append(_Everything(handle))
    return app


def _guarded(chunks, path: str):  # noqa: ANN001, ANN202 - a sync generator wrapper
    # Headers are sent by now: a failure can only end the body early, and the client resumes with a Range.
    try:
        yield from chunks
    except HfbtError as e:
        log.warning("event=stream_cut path=%s code=%s detail=%r", path, e.code, e.message)


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


async def _passthrough(
    client: httpx.AsyncClient, origin: str, request: Request, body: bytes | None
) -> Response:
    raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"{origin}{raw}" + (f"?{query}" if query else "")
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD_REQUEST}
    try:
        upstream = await client.send(
            client.build_request(request.method, url, headers=headers, content=body), stream=True
        )
    except httpx.HTTPError as e:
        return HubError(502, f"the origin {origin} could not be reached: {type(e).__name__}").response()
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
    return StreamingResponse(
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
