"""What the agent reports on GET /v1/status: its pulls in flight (PullBoard) and node_status()."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict

from hfbt.agent.node import Node
from hfbt.agent.protocol import Emit, PullRequest
from hfbt.gc import inventory


class PullBoard:
    """The agent's pulls in flight: started by its API, followed through their progress events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pulls: dict[int, dict] = {}

    def track(self, req: PullRequest, emit: Emit) -> tuple[int, Emit]:
        pid = next(self._ids)
        with self._lock:
            self._pulls[pid] = {
                "repo_type": req.repo_type,
                "repo_id": req.repo_id,
                "revision": req.revision,
                "started": time.time(),
                "state": "waiting",
                "done": 0,
                "total": None,
                "files_done": 0,
                "files_total": None,
                "rate": 0,
            }

        def observe(ev: dict) -> None:
            with self._lock:
                entry = self._pulls.get(pid)
                if entry is not None and ev.get("event") == "progress":
                    entry.update({k: ev[k] for k in ("done", "total", "files_done", "files_total", "rate")})
                    entry["state"] = "pulling"
                elif entry is not None and ev.get("event") == "waiting":
                    entry["state"] = ev.get("detail", "waiting")
            emit(ev)

        return pid, observe

    def finish(self, pid: int) -> None:
        with self._lock:
            self._pulls.pop(pid, None)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [dict(p) for p in self._pulls.values()]


def node_status(node: Node, board: PullBoard | None = None) -> dict:
    """The agent's view: torrents with rates and peers, the repos/revisions of its cache, pulls running."""
    by_hash = {rec.info_hash: rec for rec in node.published_blobs()}
    torrents = []
    for st in node.torrents():
        row = asdict(st)
        rec = by_hash.get(st.info_hash)
        row["path"] = rec.path if rec else None
        torrents.append(row)
    seeding_paths = {t["path"] for t in torrents if t["path"]}
    inv = inventory(node.cfg.cache_dir)
    repos: dict[tuple[str, str], dict] = {}
    sizes = {b.path: b.size for b in inv.blobs}
    for rev in sorted(inv.revisions, key=lambda r: (r.repo_type, r.repo_id, -r.last_access)):
        repo = repos.setdefault(
            rev.key,
            {"repo_type": rev.repo_type, "repo_id": rev.repo_id, "size": 0, "revisions": [], "_blobs": set()},
        )
        repo["_blobs"] |= rev.blobs
        repo["revisions"].append(
            {
                "commit": rev.commit,
                "refs": sorted(rev.refs),
                "files": rev.files,
                "blobs": len(rev.blobs),
                "size": sum(sizes[p] for p in rev.blobs),
                "last_access": rev.last_access,
                "seeding": len(rev.blobs & seeding_paths),
            }
        )
    for repo in repos.values():
        blobs = repo.pop("_blobs")
        repo["size"] = sum(sizes[p] for p in blobs)
    return {
        "node": {
            "name": node.cfg.node_name,
            "cache_dir": str(node.cfg.cache_dir),
            "listen_port": node.listen_port,
            "cache_size": inv.size(),
        },
        "totals": node.totals(),
        "rates": {
            "download": sum(t["download_rate"] for t in torrents),
            "upload": sum(t["upload_rate"] for t in torrents),
        },
        "peers": sum(t["peers"] for t in torrents),
        "torrents": torrents,
        "repos": list(repos.values()),
        "pulls": board.snapshot() if board else [],
        "warnings": list(inv.warnings),
    }
