"""The agent's local control API (127.0.0.1): health, pull with streamed progress, status."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from hfbt import __version__
from hfbt.agent.node import Node
from hfbt.agent.protocol import PullRequest
from hfbt.agent.report import PullBoard, node_status
from hfbt.errors import HfbtError
from hfbt.metrics import CONTENT_TYPE, agent_registry, render

_END = object()


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="hfbt agent", version=__version__, docs_url=None, redoc_url=None)
    board = PullBoard()
    metrics = agent_registry(node.totals, node.torrents)

    @app.get("/v1/health")
    def health() -> dict:
        return {
            "ok": True,
            "version": __version__,
            "cache_dir": str(node.cfg.cache_dir),
            "listen_port": node.listen_port,
        }

    @app.get("/v1/status")
    def status() -> dict:
        # totals + torrents as before, plus rates, peers, the cache's repos/revisions, pulls in flight.
        return node_status(node, board)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(render(metrics), media_type=CONTENT_TYPE)

    @app.post("/v1/forget")
    async def forget(request: Request) -> Response:
        # `hfbt gc` runs on this node: nobody else may make the agent stop seeding.
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            return JSONResponse({"error": "Forbidden", "detail": "forget is local-only"}, status_code=403)
        try:
            paths = [str(p) for p in (await request.json())["paths"]]
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": "BadRequest", "detail": f"expected {{paths: [...]}}: {e!r}"}, 422)
        return JSONResponse(await run_in_threadpool(node.forget, paths))

    @app.post("/v1/pull")
    async def pull(request: Request) -> Response:
        try:
            req = PullRequest.from_json(await request.json())
        except ValueError as e:  # not JSON at all
            return JSONResponse(
                {"error": "BadRequest", "detail": f"malformed pull request: {e!r}"}, status_code=422
            )
        except HfbtError as e:
            return JSONResponse({"error": e.code, "detail": e.message}, status_code=422)
        return StreamingResponse(_run_pull(node, req, board), media_type="application/x-ndjson")

    return app


def _run_pull(node: Node, req: PullRequest, board: PullBoard | None = None) -> Iterator[bytes]:
    # The pull runs in its own thread so it completes (and the node seeds it) even if the caller leaves.
    events: queue.Queue = queue.Queue()

    def work() -> None:
        pid, emit = board.track(req, events.put) if board else (0, events.put)
        try:
            snap = node.pull(req, emit)
            events.put({"event": "done", "snapshot": str(snap)})
        except HfbtError as e:
            events.put({"event": "error", "code": e.code, "message": e.message})
        except Exception as e:  # reported to the caller as one line; the agent keeps running
            events.put({"event": "error", "code": "Internal", "message": f"{type(e).__name__}: {e}"})
        finally:
            if board:
                board.finish(pid)
        events.put(_END)

    threading.Thread(target=work, name=f"pull-{req.repo_id}", daemon=True).start()
    while (ev := events.get()) is not _END:
        yield (json.dumps(ev) + "\n").encode()
