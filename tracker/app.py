"""The tracker's HTTP surface (FastAPI): routes only, the logic lives in the sibling modules.

Every error is `{"error": "<Code>", "detail": "..."}` JSON (bencoded failure reasons on announce/scrape);
no HTML or traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hfbt.config import TrackerConfig
from hfbt.manifest import Manifest, ManifestError, check_repo_id, check_repo_type, check_revision, is_commit
from hfbt.metrics import CONTENT_TYPE, TrackerMetrics, render
from hfbt.torrents import TorrentError
from hfbt.wire import ROLE_PIECES, with_role
from tracker import announce as bt
from tracker.access import AccessChecker, AccessUnverifiable
from tracker.auth import DEFAULT_NODE, Auth, valid_node_name
from tracker.handout import POLICIES, keep_roles_apart
from tracker.mirror import MirrorFailed, NotFound, Scheduler
from tracker.peers import Peer, PeerStore
from tracker.registry import JOB_STATES, Registry
from tracker.torrentfile import torrent_file

log = logging.getLogger("tracker.app")

HOUSEKEEPING_S = 5.0
_INFO_HASH_FILE = re.compile(r"^([0-9a-fA-F]{40})\.torrent$")
_HTTP_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "TooLarge",
    422: "BadRequest",
}
BENCODE_TYPE = "text/plain"


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_SEED_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class SeedIn(BaseModel):
    seed_id: str = Field(pattern=_SEED_ID)
    origin: str | None = Field(default=None, max_length=2048)
    # The seed's piece server (hfbt/seed/pieces.py): a full URL, or a port on the address it calls from.
    piece_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    piece_port: int | None = Field(default=None, ge=1, le=65535)


class RevisionIn(BaseModel):
    job_id: str | None = Field(default=None, max_length=64)
    ref: str | None = None
    manifest: dict


class TorrentIn(BaseModel):
    repo_type: str
    repo_id: str
    commit: str
    path: str
    torrent: str


class ResultIn(BaseModel):
    ok: bool
    commit: str | None = None
    error: str | None = None
    detail: str | None = Field(default=None, max_length=4096)


def create_app(cfg: TrackerConfig) -> FastAPI:
    registry = Registry(cfg.db)
    peers = PeerStore(ttl=2 * cfg.announce_interval)
    scheduler = Scheduler(registry, ref_ttl=cfg.ref_ttl)
    piece_urls: dict[str, str] = {}  # seed_id -> its piece server; soft state, seeds re-register
    auth = Auth(cfg.auth_token)
    handout = POLICIES[cfg.handout]
    access = AccessChecker(registry.origin_url)
    interval = max(1, int(cfg.announce_interval))
    min_interval = max(1, interval // 2)

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                scheduler.reap_dead_seeds()
                peers.expire()
            except Exception:
                log.exception("event=housekeeping_failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()  # for the signal handler in tracker/server.py
        task = asyncio.create_task(housekeeping())
        log.info("event=tracker_started db=%s auth=%s ref_ttl=%s", cfg.db, auth.enabled, cfg.ref_ttl)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            registry.close()

    app = FastAPI(title="hfbt tracker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.state.peers = peers
    app.state.scheduler = scheduler
    app.state.auth = auth
    metrics = TrackerMetrics(peers, registry, JOB_STATES, scheduler.seed_timeout)
    app.state.metrics = metrics

    # -- errors ----------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
        return _error(422, "BadRequest", "; ".join(parts) or "invalid request")

    @app.exception_handler(ManifestError)
    async def _manifest_error(request: Request, exc: ManifestError) -> JSONResponse:
        return _error(422, "BadRequest", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "HTTPError"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this handler, so uvicorn logs the traceback; this line names the route.
        log.error("event=internal_error path=%s error=%s", _redact(request.url.path), type(exc).__name__)
        return _error(500, "Internal", "internal error in the tracker; see its log")

    # -- public ----------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        # Public like /healthz: counts only, no repo names, node names or tokens (hfbt/metrics.py).
        return Response(render(metrics.registry), media_type=CONTENT_TYPE)

    # -- announce / scrape -----------------------------------------------------------------------

    def bfail(reason: str, status: int = 400) -> Response:
        return Response(bt.failure(reason), status_code=status, media_type=BENCODE_TYPE)

    @app.get("/announce")
    @app.get("/announce/{passkey}")
    async def announce(request: Request, passkey: str | None = None) -> Response:
        if not auth.announce_allowed(passkey):
            return bfail("invalid passkey", 403)
        client = request.client.host if request.client else ""
        try:
            a = bt.parse_announce(request.scope.get("query_string", b""), client)
        except bt.AnnounceError as e:
            return bfail(str(e))
        if not registry.has_torrent(a.info_hash):
            return bfail("unregistered torrent")
        now = time.time()
        if a.event == "stopped":
            peers.remove(a.info_hash, a.peer_id)
            chosen: list[Peer] = []
        else:
            me = Peer(a.peer_id, a.ip, a.port, a.left, now, a.role)
            peers.upsert(a.info_hash, me, completed=a.event == "completed")
            chosen = handout(me, keep_roles_apart(me, peers.peers_for(a.info_hash, now)), a.numwant)
        body = bt.announce_response(
            chosen, peers.counts(a.info_hash, now), interval, min_interval, a.compact, a.no_peer_id
        )
        return Response(body, media_type=BENCODE_TYPE)

    @app.get("/scrape")
    @app.get("/scrape/{passkey}")
    async def scrape(request: Request, passkey: str | None = None) -> Response:
        if not auth.announce_allowed(passkey):
            return bfail("invalid passkey", 403)
        try:
            hashes = bt.parse_scrape(request.scope.get("query_string", b""))
        except bt.AnnounceError as e:
            return bfail(str(e))
        if not hashes:
            hashes = peers.info_hashes()
        now = time.time()
        files = {h: peers.counts(h, now) for h in hashes if registry.has_torrent(h)}
        return Response(bt.scrape_response(files), media_type=BENCODE_TYPE)

    # -- /api/v1 ---------------------------------------------------------------------------------

    async def require_token(authorization: str | None = Header(default=None)) -> None:
        if not auth.api_allowed(authorization):
            raise ApiError(
                401, "Unauthorized", "missing or wrong cluster token (Authorization: Bearer <token>)"
            )

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

    async def require_hub_access(repo_type: str, repo_id: str, hf_token: str | None) -> None:
        if not hf_token:
            raise ApiError(
                403,
                "GatedRepo",
                f"{repo_id} is private on the origin: pass a Hub token that can read it (HF_TOKEN)",
            )
        try:
            ok = await access.allowed(repo_type, repo_id, hf_token)
        except AccessUnverifiable as e:
            raise ApiError(503, "OriginError", f"cannot check access to private {repo_id}: {e}") from None
        if not ok:
            raise ApiError(403, "GatedRepo", f"the origin does not let this Hub token read {repo_id}")

    async def require_any_hub_access(repos: list[tuple[str, str]], hf_token: str | None) -> None:
        denied: ApiError | None = None
        for repo_type, repo_id in repos:
            try:
                await require_hub_access(repo_type, repo_id, hf_token)
                return
            except ApiError as e:
                denied = e
        assert denied is not None
        raise denied

    @api.get("/manifest")
    async def manifest(
        repo_type: str = Query(default="model"),
        repo_id: str = Query(),
        revision: str = Query(default="main"),
        wait: float = Query(default=20.0),
        x_hf_token: str | None = Header(default=None),
    ) -> Response:
        try:
            found = await scheduler.get_manifest(repo_type, repo_id, revision, wait)
        except MirrorFailed as e:
            raise ApiError(e.status, e.code, e.detail) from None
        if found.manifest is not None:
            if found.manifest.private:
                await require_hub_access(repo_type, repo_id, x_hf_token)
            return JSONResponse({"status": found.status, "manifest": found.manifest.to_dict()})
        assert found.job is not None
        return JSONResponse(
            {
                "status": "pending",
                "job": {"id": found.job.id, "state": found.job.state, "seeds": found.seeds},
            },
            status_code=202,
        )

    @api.get("/torrents/{name}")
    async def get_torrent(
        request: Request,
        name: str,
        x_hfbt_node: str | None = Header(default=None),
        x_hf_token: str | None = Header(default=None),
        pieces: bool = Query(default=False),
    ) -> Response:
        m = _INFO_HASH_FILE.match(name)
        if not m:
            raise ApiError(404, "NotFound", "expected /api/v1/torrents/<40-hex info_hash>.torrent")
        node = x_hfbt_node or DEFAULT_NODE
        if not valid_node_name(node):
            raise ApiError(422, "BadRequest", "invalid X-HFBT-Node: letters, digits, '.', '_', '-' (max 64)")
        info = registry.get_torrent_info(m.group(1).lower())
        if info is None:
            raise ApiError(404, "NotFound", f"no torrent with info_hash {m.group(1).lower()}")
        holders = registry.revisions_of_torrent(m.group(1).lower())
        if holders and all(private for *_, private in holders):
            # A blob only private repos hold: any one of them the token can read will do.
            await require_any_hub_access(sorted({(t, r) for t, r, _, _ in holders}), x_hf_token)
        base = (cfg.public_url or str(request.base_url)).rstrip("/")
        announce = base + auth.announce_path(node)
        urls: list[str] = []
        if pieces:
            # A node that takes the seeds' pieces over HTTP must not also get the seeds as BT peers
            # (they would send those pieces again): its announces say so (handout.keep_roles_apart).
            alive = scheduler.alive_seed_ids()
            urls = sorted(u for s, u in piece_urls.items() if s in alive)
            if urls:
                announce = with_role(announce, ROLE_PIECES)
        return Response(torrent_file(announce, info, urls), media_type="application/x-bittorrent")

    @api.get("/announce-url")
    async def announce_url(request: Request, x_hfbt_node: str | None = Header(default=None)) -> dict:
        """The caller's announce URL, for seeds that add torrents they made themselves."""
        node = x_hfbt_node or DEFAULT_NODE
        if not valid_node_name(node):
            raise ApiError(422, "BadRequest", "invalid X-HFBT-Node: letters, digits, '.', '_', '-' (max 64)")
        base = (cfg.public_url or str(request.base_url)).rstrip("/")
        return {"announce": base + auth.announce_path(node)}

    @api.post("/torrents")
    async def post_torrent(body: TorrentIn) -> dict:
        check_repo_type(body.repo_type)
        check_repo_id(body.repo_id)
        if not is_commit(body.commit):
            raise ApiError(422, "BadRequest", "commit must be 40 lowercase hex characters")
        try:
            raw = base64.b64decode(body.torrent, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "BadRequest", "torrent is not valid base64") from None
        try:
            info_hash, _ = scheduler.register_torrent(
                body.repo_type, body.repo_id, body.commit, body.path, raw
            )
        except NotFound as e:
            raise ApiError(404, "NotFound", str(e)) from None
        except TorrentError as e:
            raise ApiError(422, "BadRequest", str(e)) from None
        return {"info_hash": info_hash}

    @api.post("/seeds")
    async def post_seed(request: Request, body: SeedIn) -> dict:
        scheduler.heartbeat(body.seed_id, body.origin)
        url = body.piece_url
        if not url and body.piece_port and request.client:
            host = request.client.host
            url = f"http://[{host}]:{body.piece_port}" if ":" in host else f"http://{host}:{body.piece_port}"
        if url:
            piece_urls[body.seed_id] = url.rstrip("/")
        else:
            piece_urls.pop(body.seed_id, None)
        return {"ok": True}

    @api.post("/seeds/{seed_id}/next-job")
    async def next_job(request: Request, seed_id: str, wait: float = Query(default=25.0)) -> Response:
        if not re.match(_SEED_ID, seed_id):
            raise ApiError(422, "BadRequest", "invalid seed_id")
        job = await scheduler.next_job(seed_id, wait, request.is_disconnected)
        if job is None:
            return Response(status_code=204)
        return JSONResponse(
            {"id": job.id, "repo_type": job.repo_type, "repo_id": job.repo_id, "revision": job.revision}
        )

    @api.post("/revisions")
    async def post_revision(body: RevisionIn) -> dict:
        manifest = Manifest.from_dict(body.manifest)
        if body.ref is not None:
            check_revision(body.ref)
        stored = scheduler.register_revision(manifest, body.job_id, body.ref)
        return {"manifest": stored.to_dict()}

    @api.get("/revisions")
    async def list_revisions(repo_type: str | None = None, repo_id: str | None = None) -> dict:
        return {"revisions": registry.list_revisions(repo_type, repo_id)}

    @api.post("/jobs/{job_id}/result")
    async def job_result(job_id: str, body: ResultIn) -> dict:
        if body.commit is not None and not is_commit(body.commit):
            raise ApiError(422, "BadRequest", "commit must be 40 lowercase hex characters")
        if not body.ok and body.error not in ("RepoNotFound", "RevisionNotFound", "OriginError"):
            raise ApiError(422, "BadRequest", "error must be RepoNotFound, RevisionNotFound or OriginError")
        try:
            job = scheduler.job_result(job_id, body.ok, body.commit, body.error, body.detail)
        except NotFound as e:
            raise ApiError(404, "NotFound", str(e)) from None
        return {"ok": True, "job": job.to_dict()}

    @api.get("/jobs")
    async def list_jobs(state: str | None = None, limit: int = Query(default=200, ge=1, le=10000)) -> dict:
        if state is not None and state not in JOB_STATES:
            raise ApiError(422, "BadRequest", f"state must be one of {', '.join(JOB_STATES)}")
        return {"jobs": [j.to_dict() for j in registry.list_jobs(limit, state)]}

    @api.get("/seeds")
    async def list_seeds() -> dict:
        cutoff = time.time() - scheduler.seed_timeout
        return {
            "seeds": [
                {
                    "seed_id": s.seed_id,
                    "origin": s.origin,
                    "last_seen": s.last_seen,
                    "alive": s.last_seen >= cutoff,
                }
                for s in registry.seeds()
            ]
        }

    @api.get("/swarms")
    async def swarms() -> dict:
        now = time.time()
        out = []
        for h in peers.info_hashes():
            c = peers.counts(h, now)
            out.append(
                {
                    "info_hash": h.hex(),
                    "seeders": c.complete,
                    "leechers": c.incomplete,
                    "downloaded": c.downloaded,
                }
            )
        return {"swarms": out}

    app.include_router(api)
    app.add_middleware(RequestLog, observe=metrics.observe_request)
    return app


def _redact(path: str) -> str:
    """Announce/scrape paths carry passkeys: keep the node name, drop the rest."""
    for prefix in ("/announce/", "/scrape/"):
        if path.startswith(prefix):
            node, sep, _ = path[len(prefix) :].rpartition(".")
            return prefix + (node + "." if sep and valid_node_name(node) else "") + "<redacted>"
    return path


class RequestLog:
    """key=value request lines with redacted paths (uvicorn's access log would print passkeys).

    Announces and scrapes are the bulk of the traffic: they log at DEBUG, the API at INFO.
    """

    def __init__(self, app: ASGIApp, observe: Callable[[str, bytes, int, float], None] | None = None) -> None:
        self.app = app
        self.observe = observe  # (path, query, status, seconds): the metrics see every request here too

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
                    _redact(path),
                    status,
                    (time.perf_counter() - start) * 1000,
                    client[0],
                )
