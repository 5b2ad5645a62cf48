"""The tracker's HTTP surface (FastAPI): routes only, the logic lives in the sibling modules.

`create_app` is the one place the parts are wired: it builds a `TrackerState` and hands it to the route
groups (`_bittorrent_routes`: announce and scrape, bencoded; `_api_routes`: /api/v1, JSON). Every API
error is `{"error": "<Code>", "detail": "..."}` JSON (tracker/errors.py); announce and scrape answer
with bencoded failure reasons. No HTML or traceback ever reaches a client.
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
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from hfbt.config import TrackerConfig
from hfbt.manifest import Manifest, check_repo_id, check_repo_type, check_revision, is_commit
from hfbt.metrics import CONTENT_TYPE, TrackerMetrics, render
from hfbt.torrents import TorrentError
from hfbt.wire import ROLE_PIECES, with_role
from tracker import announce as bt
from tracker.access import AccessChecker, require_any_hub_access, require_hub_access
from tracker.auth import DEFAULT_NODE, Auth, valid_node_name
from tracker.errors import ApiError, install_error_handlers
from tracker.handout import POLICIES, Policy, keep_roles_apart
from tracker.mirror import MirrorFailed, NotFound, Scheduler
from tracker.peers import Peer, PeerStore
from tracker.pieceservers import PieceServers, seed_piece_url
from tracker.registry import JOB_STATES, Immutable, Registry
from tracker.requestlog import RequestLog
from tracker.torrentfile import torrent_file

log = logging.getLogger("tracker.app")

HOUSEKEEPING_S = 5.0
_INFO_HASH_FILE = re.compile(r"^([0-9a-fA-F]{40})\.torrent$")
BENCODE_TYPE = "text/plain"
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


@dataclass(frozen=True)
class TrackerState:
    """Everything the routes use, built once by `create_app`."""

    cfg: TrackerConfig
    registry: Registry  # persistent: revisions, torrents, jobs, seeds
    peers: PeerStore  # soft: the swarms, rebuilt from announces
    piece_servers: PieceServers  # soft: the seeds' piece servers, rebuilt from their registrations
    scheduler: Scheduler
    auth: Auth
    access: AccessChecker
    handout: Policy
    metrics: TrackerMetrics
    interval: int  # announce interval handed to clients, seconds
    min_interval: int


def create_app(cfg: TrackerConfig) -> FastAPI:
    registry = Registry(cfg.db)
    peers = PeerStore(ttl=2 * cfg.announce_interval)
    scheduler = Scheduler(registry, ref_ttl=cfg.ref_ttl)
    interval = max(1, int(cfg.announce_interval))
    state = TrackerState(
        cfg=cfg,
        registry=registry,
        peers=peers,
        piece_servers=PieceServers(),
        scheduler=scheduler,
        auth=Auth(cfg.auth_token),
        access=AccessChecker(cfg.origin),
        handout=POLICIES[cfg.handout],
        metrics=TrackerMetrics(peers, registry, JOB_STATES, scheduler.seed_timeout),
        interval=interval,
        min_interval=max(1, interval // 2),
    )

    app = FastAPI(
        title="hfbt tracker", lifespan=_lifespan(state), docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.scheduler = state.scheduler  # closed by tracker/server.py's signal handler
    app.state.registry = state.registry  # tests swap its methods to provoke errors
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        # Public like /healthz: counts only, no repo names, node names or tokens (hfbt/metrics.py).
        return Response(render(state.metrics.registry), media_type=CONTENT_TYPE)

    app.include_router(_bittorrent_routes(state))
    app.include_router(_api_routes(state))
    app.add_middleware(RequestLog, observe=state.metrics.observe_request)
    return app


# -- lifecycle -----------------------------------------------------------------------------------


async def _housekeeping(state: TrackerState) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_S)
        try:
            state.scheduler.reap_dead_seeds()
            state.peers.expire()
        except Exception:
            log.exception("event=housekeeping_failed")


def _lifespan(state: TrackerState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()  # for the signal handler in tracker/server.py
        task = asyncio.create_task(_housekeeping(state))
        cfg = state.cfg
        log.info("event=tracker_started db=%s auth=%s ref_ttl=%s", cfg.db, state.auth.enabled, cfg.ref_ttl)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            state.registry.close()

    return lifespan


# -- announce / scrape ---------------------------------------------------------------------------


def _bfail(reason: str, status: int = 400) -> Response:
    return Response(bt.failure(reason), status_code=status, media_type=BENCODE_TYPE)


def _bittorrent_routes(state: TrackerState) -> APIRouter:
    router = APIRouter()
    peers, registry = state.peers, state.registry

    @router.get("/announce")
    @router.get("/announce/{passkey}")
    async def announce(request: Request, passkey: str | None = None) -> Response:
        if not state.auth.announce_allowed(passkey):
            return _bfail("invalid passkey", 403)
        client = request.client.host if request.client else ""
        try:
            a = bt.parse_announce(request.scope.get("query_string", b""), client)
        except bt.AnnounceError as e:
            return _bfail(str(e))
        if not registry.has_torrent(a.info_hash):
            return _bfail("unregistered torrent")
        now = time.time()
        if a.event == "stopped":
            peers.remove(a.info_hash, a.peer_id)
            chosen: list[Peer] = []
        else:
            me = Peer(a.peer_id, a.ip, a.port, a.left, now, a.role)
            peers.upsert(a.info_hash, me, completed=a.event == "completed")
            chosen = state.handout(me, keep_roles_apart(me, peers.peers_for(a.info_hash, now)), a.numwant)
        body = bt.announce_response(
            chosen,
            peers.counts(a.info_hash, now),
            state.interval,
            state.min_interval,
            a.compact,
            a.no_peer_id,
        )
        return Response(body, media_type=BENCODE_TYPE)

    @router.get("/scrape")
    @router.get("/scrape/{passkey}")
    async def scrape(request: Request, passkey: str | None = None) -> Response:
        if not state.auth.announce_allowed(passkey):
            return _bfail("invalid passkey", 403)
        try:
            hashes = bt.parse_scrape(request.scope.get("query_string", b""))
        except bt.AnnounceError as e:
            return _bfail(str(e))
        if not hashes:
            hashes = peers.info_hashes()
        now = time.time()
        files = {h: peers.counts(h, now) for h in hashes if registry.has_torrent(h)}
        return Response(bt.scrape_response(files), media_type=BENCODE_TYPE)

    return router


# -- /api/v1 -------------------------------------------------------------------------------------


def _announce_url(state: TrackerState, request: Request, x_hfbt_node: str | None) -> str:
    """The announce URL (with its passkey) of the node named in X-HFBT-Node."""
    node = x_hfbt_node or DEFAULT_NODE
    if not valid_node_name(node):
        raise ApiError(422, "BadRequest", "invalid X-HFBT-Node: letters, digits, '.', '_', '-' (max 64)")
    base = (state.cfg.public_url or str(request.base_url)).rstrip("/")
    return base + state.auth.announce_path(node)


def _api_routes(state: TrackerState) -> APIRouter:
    registry, scheduler = state.registry, state.scheduler

    async def require_token(authorization: str | None = Header(default=None)) -> None:
        if not state.auth.api_allowed(authorization):
            raise ApiError(
                401, "Unauthorized", "missing or wrong cluster token (Authorization: Bearer <token>)"
            )

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

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
                await require_hub_access(state.access, repo_type, repo_id, x_hf_token)
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
        announce = _announce_url(state, request, x_hfbt_node)
        info_hash = m.group(1).lower()
        info = registry.get_torrent_info(info_hash)
        if info is None:
            raise ApiError(404, "NotFound", f"no torrent with info_hash {info_hash}")
        holders = registry.revisions_of_torrent(info_hash)
        if holders and all(private for *_, private in holders):
            # A blob only private repos hold: any one of them the token can read will do.
            await require_any_hub_access(state.access, sorted({(t, r) for t, r, _, _ in holders}), x_hf_token)
        urls: list[str] = []
        if pieces:
            # A node that takes the seeds' pieces over HTTP must not also get the seeds as BT peers
            # (they would send those pieces again): its announces say so (handout.keep_roles_apart).
            urls = state.piece_servers.urls(scheduler.alive_seed_ids())
            if urls:
                announce = with_role(announce, ROLE_PIECES)
        return Response(torrent_file(announce, info, urls), media_type="application/x-bittorrent")

    @api.get("/announce-url")
    async def announce_url(request: Request, x_hfbt_node: str | None = Header(default=None)) -> dict:
        """The caller's announce URL, for seeds that add torrents they made themselves."""
        return {"announce": _announce_url(state, request, x_hfbt_node)}

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
        except Immutable as e:
            raise _refused(state, e) from None
        return {"info_hash": info_hash}

    @api.post("/seeds")
    async def post_seed(request: Request, body: SeedIn) -> dict:
        scheduler.heartbeat(body.seed_id, body.origin)
        client_host = request.client.host if request.client else None
        state.piece_servers.set(body.seed_id, seed_piece_url(body.piece_url, body.piece_port, client_host))
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
        try:
            stored = scheduler.register_revision(manifest, body.job_id, body.ref)
        except Immutable as e:
            raise _refused(state, e) from None
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
        # `state` is the query parameter (a job state), shadowing the TrackerState in here.
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
        for h in state.peers.info_hashes():
            c = state.peers.counts(h, now)
            out.append(
                {
                    "info_hash": h.hex(),
                    "seeders": c.complete,
                    "leechers": c.incomplete,
                    "downloaded": c.downloaded,
                }
            )
        return {"swarms": out}

    return api


def _refused(state: TrackerState, e: Immutable) -> ApiError:
    """A registration that would change a commit or a file's torrent: one loud line, a metric, a 409."""
    log.warning("event=registration_refused what=%s detail=%r", e.what, str(e))
    state.metrics.refused.labels(e.what).inc()
    return ApiError(409, "Conflict", str(e))
