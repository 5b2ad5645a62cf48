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
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from hfbt.config import TrackerConfig
from hfbt.manifest import Manifest, check_repo_id, check_repo_type, check_revision, is_commit
from hfbt.metrics import CONTENT_TYPE, TrackerMetrics, render
from hfbt.tickets import TicketError, TicketSigner, load_or_create_key
from hfbt.torrents import TorrentError
from hfbt.wire import ROLE_PIECES, ROLE_SEED, ZONE_RULE, with_role
from tracker import announce as bt
from tracker.access import AccessChecker, probe_path, require_any_hub_access, require_hub_access
from tracker.auth import NODE, OPERATOR, SEED, Auth, Caller, new_node_token, valid_node_name
from tracker.db import is_url
from tracker.errors import ApiError, install_error_handlers
from tracker.gate import AuthGate, roles
from tracker.handout import POLICIES, Policy, by_zone, keep_roles_apart
from tracker.intervals import Intervals
from tracker.limits import DEFAULT_MAX_BYTES, TRACKER_BODY_LIMITS, BodyLimit
from tracker.mirror import SHARED_POLL_S, MirrorFailed, NotFound, Scheduler
from tracker.peerstore import Peer, PeerIdTaken, PeerStore, open_peer_store
from tracker.pieceservers import PieceServers, seed_piece_url
from tracker.registry import JOB_STATES, Immutable, Registry, open_registry
from tracker.requestlog import RequestLog
from tracker.torrentfile import torrent_file
from tracker.unavailable import StoreUnavailable

log = logging.getLogger("tracker.app")

HOUSEKEEPING_S = 5.0
BENCODE_TYPE = "text/plain"
_SEED_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


# Each route names the roles it serves (tracker/gate.py has checked the credential before the body).
AsNode = Annotated[Caller, Depends(roles(NODE))]
AsReader = Annotated[Caller, Depends(roles(NODE, OPERATOR))]
AsSeed = Annotated[Caller, Depends(roles(SEED))]
AsSeedOrOperator = Annotated[Caller, Depends(roles(SEED, OPERATOR))]
AsOperator = Annotated[Caller, Depends(roles(OPERATOR))]


class SeedIn(BaseModel):
    seed_id: str = Field(pattern=_SEED_ID)
    # Informational only (GET /seeds): access checks use the tracker's own --origin.
    origin: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")

    @field_validator("origin", "piece_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises on a port that is not a number
            except ValueError as e:
                raise ValueError(f"not a URL: {e}") from None
            if not parts.hostname:
                raise ValueError("not a URL: no host")
        return value

    # The seed's piece server (hfbt/seed/pieces.py): a full URL, or a port on the address it calls from.
    piece_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    piece_port: int | None = Field(default=None, ge=1, le=65535)
    zone: str = Field(default="", pattern=f"^({ZONE_RULE})?$")


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


class NodeIn(BaseModel):
    name: str = Field(max_length=64)


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
    intervals: Intervals  # how soon each announcing peer comes back


def ticket_key_path(cfg: TrackerConfig) -> Path:
    if cfg.ticket_key:
        return Path(cfg.ticket_key)
    if is_url(cfg.db):
        # Replicas must sign with one key, or a ticket from one is refused by the next.
        raise ValueError(
            "a closed tracker on a postgresql:// --db needs --ticket-key, the same file in every replica"
        )
    db = Path(cfg.db)
    return db.with_name(db.name + ".ticket-key")


def create_app(cfg: TrackerConfig) -> FastAPI:
    closed = bool(cfg.operator_token or cfg.seed_token)
    key = ticket_key_path(cfg) if closed else None  # before any connection: a bad config fails first
    registry = open_registry(cfg.db, cfg.pg_password)
    signer = TicketSigner(load_or_create_key(key)) if key else None
    auth = Auth(cfg.operator_token, cfg.seed_token, registry.node_hash, signer, cfg.ticket_ttl)
    peers = open_peer_store(cfg.peer_store, cfg.redis_password)
    scheduler = Scheduler(registry, ref_ttl=cfg.ref_ttl)
    leecher_s = max(1, int(cfg.announce_interval))
    state = TrackerState(
        cfg=cfg,
        registry=registry,
        peers=peers,
        piece_servers=PieceServers(),
        scheduler=scheduler,
        auth=auth,
        access=AccessChecker(cfg.origin),
        handout=POLICIES[cfg.handout],
        metrics=TrackerMetrics(peers, registry, JOB_STATES, scheduler.seed_timeout),
        intervals=Intervals(leecher_s, max(leecher_s, int(cfg.seeder_interval or leecher_s))),
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
    app.add_middleware(BodyLimit, max_bytes=DEFAULT_MAX_BYTES, per_path=TRACKER_BODY_LIMITS)
    app.add_middleware(AuthGate, auth=state.auth, on_denied=_denied(state))
    app.add_middleware(RequestLog, observe=state.metrics.observe_request)
    return app


def _denied(state: TrackerState) -> Callable[[str], None]:
    def count(reason: str) -> None:
        state.metrics.denied.labels(reason).inc()

    return count


# -- lifecycle -----------------------------------------------------------------------------------


def _housekeeping(state: TrackerState) -> None:
    state.scheduler.reap_dead_seeds()
    state.peers.expire(time.time())


async def _every(period: float, work: Callable[[], None], name: str) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            work()
        except StoreUnavailable as e:
            log.warning("event=%s_failed detail=%r", name, str(e))  # an outage: one line, retried
        except Exception:
            log.exception("event=%s_failed", name)


def _lifespan(state: TrackerState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()  # for the signal handler in tracker/server.py
        tasks = [asyncio.create_task(_every(HOUSEKEEPING_S, lambda: _housekeeping(state), "housekeeping"))]
        if state.registry.shared:
            poll = state.scheduler.poll_registry
            tasks.append(asyncio.create_task(_every(SHARED_POLL_S, poll, "registry_poll")))
        cfg = state.cfg
        log.info("event=tracker_started db=%s auth=%s ref_ttl=%s", cfg.db, state.auth.enabled, cfg.ref_ttl)
        if not state.auth.enabled:
            log.warning(
                "event=auth_off detail=%r",
                "open tracker: anyone who reaches it may register revisions and announce; set"
                " HFBT_OPERATOR_TOKEN and HFBT_SEED_TOKEN to close it",
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.access.aclose()
            state.registry.close()
            state.peers.close()

    return lifespan


# -- announce / scrape ---------------------------------------------------------------------------


def _bfail(reason: str, status: int = 400) -> Response:
    return Response(bt.failure(reason), status_code=status, media_type=BENCODE_TYPE)


def _bunavailable(e: StoreUnavailable) -> Response:
    """A shared store is down: one line, and a failure reason the client retries after."""
    log.warning("event=store_unavailable detail=%r", str(e))
    return _bfail(f"{e}; retry later", 503)


def _bittorrent_routes(state: TrackerState) -> APIRouter:
    router = APIRouter()
    peers, registry = state.peers, state.registry
    denied = _denied(state)

    @router.get("/announce")
    @router.get("/announce/{ticket}")
    async def announce(request: Request, ticket: str | None = None) -> Response:
        client = request.client.host if request.client else ""
        try:
            a = bt.parse_announce(
                request.scope.get("query_string", b""), client, trust_ip=state.cfg.trust_announce_ip
            )
        except bt.AnnounceError as e:
            return _bfail(str(e))
        try:
            grant = state.auth.check_ticket(ticket, a.info_hash.hex())
        except TicketError as e:
            denied("ticket")
            return _bfail(str(e), 403)
        try:
            if not registry.has_torrent(a.info_hash):
                return _bfail("unregistered torrent")
        except StoreUnavailable as e:
            return _bunavailable(e)
        node = grant.node if grant else ""
        if grant and a.role == ROLE_SEED and grant.role != SEED:
            denied("role")
            return _bfail("only a seed's ticket announces as the seed", 403)
        now = time.time()
        interval, min_interval = state.intervals.for_peer(a.left)
        try:
            if a.event == "stopped":
                peers.remove(a.info_hash, a.peer_id, node)
                chosen: list[Peer] = []
                counts = peers.counts(a.info_hash)
            else:
                ttl = Intervals.ttl(interval)
                me = Peer(a.peer_id, a.ip, a.port, a.left, now, a.role, node, ttl, a.zone)
                sample = peers.announce(a.info_hash, me, a.event == "completed", now)
                nearby = by_zone(me, a.info_hash, sample.peers, state.cfg.zone_gateways)
                chosen = state.handout(me, keep_roles_apart(me, nearby), a.numwant)
                counts = sample.counts
        except PeerIdTaken:
            denied("peer_id")
            return _bfail("this peer_id is another node's", 403)
        except StoreUnavailable as e:
            return _bunavailable(e)
        body = bt.announce_response(chosen, counts, interval, min_interval, a.compact, a.no_peer_id)
        return Response(body, media_type=BENCODE_TYPE)

    @router.get("/scrape")
    @router.get("/scrape/{ticket}")
    async def scrape(request: Request, ticket: str | None = None) -> Response:
        try:
            hashes = bt.parse_scrape(request.scope.get("query_string", b""))
        except bt.AnnounceError as e:
            return _bfail(str(e))
        if not hashes:
            # A full scrape would list every swarm, private ones too: operators read /api/v1/swarms.
            return _bfail("scrape needs info_hash: this tracker does not list its swarms")
        try:
            for h in hashes:
                state.auth.check_ticket(ticket, h.hex())
        except TicketError as e:
            denied("ticket")
            return _bfail(str(e), 403)
        try:
            files = {h: peers.counts(h) for h in hashes if registry.has_torrent(h)}
        except StoreUnavailable as e:
            return _bunavailable(e)
        return Response(bt.scrape_response(files), media_type=BENCODE_TYPE)

    return router


# -- /api/v1 -------------------------------------------------------------------------------------


def _announce_url(state: TrackerState, request: Request, ticket: str | None) -> str:
    """The announce URL carrying this ticket (an open tracker's: none)."""
    base = (state.cfg.public_url or str(request.base_url)).rstrip("/")
    return f"{base}/announce/{ticket}" if ticket else f"{base}/announce"


def _api_routes(state: TrackerState) -> APIRouter:
    registry, scheduler, auth = state.registry, state.scheduler, state.auth
    denied = _denied(state)
    api = APIRouter(prefix="/api/v1")

    async def torrent_access(info_hash: str, hf_token: str | None) -> None:
        """A blob only private repos hold: any one of them the Hub token can read will do."""
        holders = await run_in_threadpool(registry.revisions_of_torrent, info_hash)
        if holders and all(private for *_, private in holders):
            files = sorted({(t, r, c, path) for t, r, c, path, _ in holders})
            try:
                await require_any_hub_access(state.access, files, hf_token)
            except ApiError:
                denied("hub")
                raise

    def info_hash_of(name: str, suffix: str = "") -> str:
        m = re.match(rf"^([0-9a-fA-F]{{40}}){re.escape(suffix)}$", name)
        if not m:
            raise ApiError(404, "NotFound", f"expected a 40-hex info_hash{suffix}")
        return m.group(1).lower()

    @api.get("/manifest")
    async def manifest(
        caller: AsReader,
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
            m = found.manifest
            if m.private:
                try:
                    await require_hub_access(
                        state.access, repo_type, repo_id, m.commit, probe_path(m.files), x_hf_token
                    )
                except ApiError:
                    denied("hub")
                    raise
            # A 40k-file manifest takes ~0.2 s to render: not on the loop every announce waits on.
            body = await run_in_threadpool(_manifest_json, found.status, m)
            return Response(body, media_type="application/json")
        if found.job is None:
            raise ApiError(503, "OriginError", "no mirror job for this revision; retry")
        return JSONResponse(
            {
                "status": "pending",
                "job": {"id": found.job.id, "state": found.job.state, "seeds": found.seeds},
            },
            status_code=202,
        )

    @api.get("/torrents/{name}")
    async def get_torrent(
        caller: AsNode,
        request: Request,
        name: str,
        x_hf_token: str | None = Header(default=None),
        pieces: bool = Query(default=False),
        zone: str = Query(default="", pattern=f"^({ZONE_RULE})?$"),
    ) -> Response:
        info_hash = info_hash_of(name, ".torrent")
        info = await run_in_threadpool(registry.get_torrent_info, info_hash)
        if info is None:
            raise ApiError(404, "NotFound", f"no torrent with info_hash {info_hash}")
        await torrent_access(info_hash, x_hf_token)
        ticket, _ = auth.mint(caller, info_hash)
        announce = _announce_url(state, request, ticket)
        urls: list[str] = []
        if pieces:
            # A node that takes the seeds' pieces over HTTP must not also get the seeds as BT peers
            # (they would send those pieces again): its announces say so (handout.keep_roles_apart).
            urls = state.piece_servers.urls(scheduler.alive_seed_ids(), zone)
            if urls:
                announce = with_role(announce, ROLE_PIECES)
        return Response(torrent_file(announce, info, urls), media_type="application/x-bittorrent")

    @api.get("/tickets/{name}")
    async def get_ticket(
        caller: AsNode, request: Request, name: str, x_hf_token: str | None = Header(default=None)
    ) -> dict:
        """A fresh ticket for a torrent the node holds: Hub access is checked again, every renewal."""
        info_hash = info_hash_of(name)
        if not await run_in_threadpool(registry.has_torrent, bytes.fromhex(info_hash)):
            raise ApiError(404, "NotFound", f"no torrent with info_hash {info_hash}")
        await torrent_access(info_hash, x_hf_token)
        ticket, expires = auth.mint(caller, info_hash)
        return {"ticket": ticket, "announce": _announce_url(state, request, ticket), "expires": expires}

    @api.get("/announce-url")
    async def announce_url(caller: AsSeed, request: Request) -> dict:
        """The seed's announce URL: its ticket covers every torrent (it registered them)."""
        ticket, expires = auth.mint(caller, "*")
        return {"announce": _announce_url(state, request, ticket), "ticket": ticket, "expires": expires}

    @api.get("/ticket-key")
    async def ticket_key(caller: AsSeedOrOperator) -> dict:
        """What seeds check tickets with (null: an open tracker, no tickets)."""
        return {"public_key": auth.public_key}

    @api.post("/torrents")
    def post_torrent(caller: AsSeed, body: TorrentIn) -> dict:
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
    def post_seed(caller: AsSeed, request: Request, body: SeedIn) -> dict:
        scheduler.heartbeat(body.seed_id, body.origin)
        client_host = request.client.host if request.client else None
        url = seed_piece_url(body.piece_url, body.piece_port, client_host)
        state.piece_servers.set(body.seed_id, url, body.zone)
        return {"ok": True}

    @api.post("/seeds/{seed_id}/next-job")
    async def next_job(
        caller: AsSeed, request: Request, seed_id: str, wait: float = Query(default=25.0)
    ) -> Response:
        if not re.match(_SEED_ID, seed_id):
            raise ApiError(422, "BadRequest", "invalid seed_id")
        job = await scheduler.next_job(seed_id, wait, request.is_disconnected)
        if job is None:
            return Response(status_code=204)
        return JSONResponse(
            {"id": job.id, "repo_type": job.repo_type, "repo_id": job.repo_id, "revision": job.revision}
        )

    @api.post("/revisions")
    def post_revision(caller: AsSeed, body: RevisionIn) -> dict:
        # A plain def: FastAPI runs it in its threadpool, so a 40k-file manifest's SQLite work does not
        # stall the event loop (and every announce) meanwhile.
        manifest = Manifest.from_dict(body.manifest)
        if body.ref is not None:
            check_revision(body.ref)
        try:
            stored = scheduler.register_revision(manifest, body.job_id, body.ref)
        except Immutable as e:
            raise _refused(state, e) from None
        return {"manifest": stored.to_dict()}

    @api.post("/jobs/{job_id}/result")
    def job_result(caller: AsSeed, job_id: str, body: ResultIn) -> dict:
        if body.commit is not None and not is_commit(body.commit):
            raise ApiError(422, "BadRequest", "commit must be 40 lowercase hex characters")
        if not body.ok and body.error not in ("RepoNotFound", "RevisionNotFound", "OriginError"):
            raise ApiError(422, "BadRequest", "error must be RepoNotFound, RevisionNotFound or OriginError")
        try:
            job = scheduler.job_result(job_id, body.ok, body.commit, body.error, body.detail)
        except NotFound as e:
            raise ApiError(404, "NotFound", str(e)) from None
        return {"ok": True, "job": job.to_dict()}

    # --- operators: node identities and listings ---

    @api.post("/nodes", status_code=201)
    def add_node(caller: AsOperator, body: NodeIn) -> dict:
        if not valid_node_name(body.name):
            raise ApiError(422, "BadRequest", "node names are letters, digits, '.', '_', '-' (max 64)")
        if not auth.enabled:
            raise ApiError(409, "Conflict", "an open tracker issues no node identities: close it first")
        token, digest = new_node_token(body.name)
        if not registry.add_node(body.name, digest):
            raise ApiError(409, "Conflict", f"node {body.name} exists: revoke it first to issue a new token")
        auth.forget(body.name)
        log.info("event=node_added node=%s", body.name)
        return {"name": body.name, "token": token}

    @api.delete("/nodes/{name}")
    def revoke_node(caller: AsOperator, name: str) -> dict:
        if not valid_node_name(name) or not registry.revoke_node(name):
            raise ApiError(404, "NotFound", f"no live node named {name[:64]!r}")
        auth.forget(name)
        log.info("event=node_revoked node=%s", name)
        return {"ok": True}

    @api.get("/nodes")
    def list_nodes(caller: AsOperator) -> dict:
        return {"nodes": registry.list_nodes()}

    @api.get("/revisions")
    def list_revisions(caller: AsOperator, repo_type: str | None = None, repo_id: str | None = None) -> dict:
        return {"revisions": registry.list_revisions(repo_type, repo_id)}

    @api.get("/jobs")
    def list_jobs(
        caller: AsOperator, state: str | None = None, limit: int = Query(default=200, ge=1, le=10000)
    ) -> dict:
        # `state` is the query parameter (a job state), shadowing the TrackerState in here.
        if state is not None and state not in JOB_STATES:
            raise ApiError(422, "BadRequest", f"state must be one of {', '.join(JOB_STATES)}")
        return {"jobs": [j.to_dict() for j in registry.list_jobs(limit, state)]}

    @api.get("/seeds")
    def list_seeds(caller: AsOperator) -> dict:
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
    def swarms(caller: AsOperator) -> dict:
        out = []
        for h, c in state.peers.swarms().items():
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


def _manifest_json(status: str, manifest: Manifest) -> bytes:
    return json.dumps({"status": status, "manifest": manifest.to_dict()}).encode()


def _refused(state: TrackerState, e: Immutable) -> ApiError:
    """A registration that would change a commit or a file's torrent: one loud line, a metric, a 409."""
    log.warning("event=registration_refused what=%s detail=%r", e.what, str(e))
    state.metrics.refused.labels(e.what).inc()
    return ApiError(409, "Conflict", str(e))
