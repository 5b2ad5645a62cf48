"""`hfbt agent`: the node daemon, one libtorrent session seeding every completed blob of the cache."""

from __future__ import annotations

import logging
import threading

import uvicorn

from hfbt.agent.api import create_app
from hfbt.agent.node import Node
from hfbt.config import AgentConfig
from hfbt.shim.app import create_app as create_shim
from hfbt.swarm import Swarm

log = logging.getLogger("hfbt.agent")


def serve(cfg: AgentConfig) -> None:
    node_cfg = cfg.node
    node_cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    swarm = Swarm(node_cfg.swarm, resume_dir=node_cfg.state_dir / "resume")
    node = Node(node_cfg, swarm)
    try:
        count = node.reseed()
        log.info(
            "event=agent_start api=%s:%d bt_port=%d cache=%s reseeded=%d",
            cfg.host,
            cfg.port,
            swarm.listen_port,
            node_cfg.cache_dir,
            count,
        )
        shim = uvicorn.Server(
            uvicorn.Config(
                create_shim(node, cfg.origin),
                host=cfg.host,
                port=cfg.shim_port,
                log_level="warning",
                access_log=False,
            )
        )
        # The shim runs in a thread (uvicorn leaves signals to the main thread's server); both stop together.
        shim_thread = threading.Thread(target=shim.run, name="shim", daemon=True)
        shim_thread.start()
        log.info("event=shim_start url=http://%s:%d origin=%s", cfg.host, cfg.shim_port, cfg.origin)
        try:
            uvicorn.run(create_app(node), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
        finally:
            shim.should_exit = True
            shim_thread.join(timeout=5)
    finally:
        node.close()
        swarm.close()
        log.info("event=agent_stop")
