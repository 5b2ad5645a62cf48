"""`hfbt pull`: hand the pull to the node's agent when one serves this cache, else run it embedded."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hfbt import cache
from hfbt.agent.client import AgentClient, local_agent
from hfbt.agent.node import open_node
from hfbt.agent.protocol import Emit, PullRequest
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError


def run_pull(
    cfg: NodeConfig, req: PullRequest, agent_url: str | None, emit: Emit, agent_required: bool = False
) -> Path:
    req.validate()
    url = local_agent(cfg.cache_dir, agent_url, agent_required)
    if url:
        emit({"event": "agent", "url": url})
        return _via_agent(AgentClient(url), req, emit)
    return pull_embedded(cfg, req, emit)


def _via_agent(agent: AgentClient, req: PullRequest, emit: Emit) -> Path:
    for ev in agent.pull(req):
        if ev["event"] == "done":
            return Path(ev["snapshot"])
        if ev["event"] == "error":
            raise HfbtError(ev.get("code", "AgentError"), ev.get("message", "the agent's pull failed"))
        emit(ev)
    raise HfbtError("AgentError", "the agent closed the pull without a result")


def pull_embedded(cfg: NodeConfig, req: PullRequest, emit: Emit) -> Path:
    with _repo_lock(cfg, req), open_node(cfg) as node:
        return node.pull(req, emit)


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
