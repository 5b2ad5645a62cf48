"""`hfbt pull`: hand the pull to the node's agent when one serves this cache, else run it embedded."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hfbt import cache
from hfbt.agent.client import AgentClient, local_agent
from hfbt.agent.linger import linger
from hfbt.agent.node import open_node
from hfbt.agent.protocol import Emit, PullRequest
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError

log = logging.getLogger("hfbt.pull")


def run_pull(
    cfg: NodeConfig,
    req: PullRequest,
    agent_url: str | None,
    emit: Emit,
    agent_required: bool = False,
    linger_s: float = 0.0,
) -> Path:
    """Through the agent serving this cache, else embedded; an embedded pull then serves its pieces
    for up to `linger_s` while other nodes still ask for them (the agent keeps seeding anyway)."""
    req.validate()
    url = local_agent(cfg.cache_dir, agent_url, agent_required)
    if url:
        emit({"event": "agent", "url": url})
        return _via_agent(AgentClient(url), req, emit)
    return pull_embedded(cfg, req, emit, linger_s)


def _via_agent(agent: AgentClient, req: PullRequest, emit: Emit) -> Path:
    for ev in agent.pull(req):
        if ev["event"] == "done":
            return Path(ev["snapshot"])
        if ev["event"] == "error":
            raise HfbtError(ev.get("code", "AgentError"), ev.get("message", "the agent's pull failed"))
        emit(ev)
    raise HfbtError("AgentError", "the agent closed the pull without a result")


def pull_embedded(cfg: NodeConfig, req: PullRequest, emit: Emit, linger_s: float = 0.0) -> Path:
    with _repo_lock(cfg, req), open_node(cfg) as node:
        started = time.monotonic()
        snapshot = node.pull(req, emit)
        log.info("event=pull_done repo=%s seconds=%.2f", req.repo_id, time.monotonic() - started)
        served = linger(node.asking, linger_s, emit)
        # What this process gave the swarm and took from it (the cluster bench counts the seed's copies
        # from these): payload bytes, the linger's included.
        t = node.totals()
        log.info(
            "event=pull_exit lingered_s=%s lingered_uploaded=%d uploaded=%d downloaded=%d"
            " from_piece_servers=%d",
            served["seconds"], served["uploaded"], t["uploaded"], t["downloaded"], t["from_piece_servers"],
        )  # fmt: skip
        return snapshot


@contextmanager
def _repo_lock(cfg: NodeConfig, req: PullRequest) -> Iterator[None]:
    # Two embedded pulls of one repo would write the same partial blob from two sessions.
    folder = cfg.state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(
        folder / f"{cache.repo_folder_name(req.repo_type, req.repo_id)}.lock", os.O_CREAT | os.O_RDWR
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
