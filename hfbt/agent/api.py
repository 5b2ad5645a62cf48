"""The agent's local control API (127.0.0.1): health, pull with streamed progress, status."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hfbt import __version__
from hfbt.agent.node import Node, PullRequest
from hfbt.errors import HfbtError

_END = object()


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="hfbt agent", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/v1/health")
    def health() -> dict:
        return {
            "ok": True,
            "version": __version__,
            "cache_dir": str(node.cfg.cache_dir),
            "listen_port": node.swarm.listen_port,
        }

    @app.get("/v1/status")
    def status() -> dict:
        torrents = []
        for ih in node.swarm.info_hashes():
            st = node.swarm.status(ih)
            torrents.append(
                {k: getattr(st, k) for k in ("info_hash", "total", "done", "seeding", "peers", "uploaded")}
            )
        return {"totals": node.swarm.totals(), "torrents": torrents}

    @app.post("/v1/pull")
    async def pull(request: Request) -> Response:
        try:
            body = await request.json()
            req = PullRequest(
                repo_id=str(body["repo_id"]),
                repo_type=str(body.get("repo_type", "model")),
                revision=str(body.get("revision", "main")),
                include=tuple(body.get("include") or ()),
                exclude=tuple(body.get("exclude") or ()),
                timeout=body.get("timeout"),
                token=body.get("token"),
            ).validate()
        except HfbtError as e:
            return JSONResponse({"error": e.code, "detail": e.message}, status_code=422)
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse(
                {"error": "BadRequest", "detail": f"malformed pull request: {e!r}"}, status_code=422
            )
        return StreamingResponse(_run_pull(node, req), media_type="application/x-ndjson")

    return app


def _run_pull(node: Node, req: PullRequest) -> Iterator[bytes]:
    # The pull runs in its own thread so it completes (and the node seeds it) even if the caller leaves.
    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            snap = node.pull(req, events.put)
            events.put({"event": "done", "snapshot": str(snap)})
        except HfbtError as e:
            events.put({"event": "error", "code": e.code, "message": e.message})
        except Exception as e:  # reported to the caller as one line; the agent keeps running
            events.put({"event": "error", "code": "Internal", "message": f"{type(e).__name__}: {e}"})
        events.put(_END)

    threading.Thread(target=work, name=f"pull-{req.repo_id}", daemon=True).start()
    while (ev := events.get()) is not _END:
        yield (json.dumps(ev) + "\n").encode()
