"""`hfbt agent`: the node daemon, one libtorrent session seeding every completed blob of the cache."""

from __future__ import annotations

import logging
import threading

import uvicorn

from hfbt.agent.api import create_app
from hfbt.agent.node import Node, open_node
from hfbt.config import AgentConfig
from hfbt.shim.app import create_app as create_shim

log = logging.getLogger("hfbt.agent")


def serve(cfg: AgentConfig) -> None:
    node_cfg = cfg.node
    node_cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open_node(node_cfg) as node:
            _serve(cfg, node)
    finally:
        log.info("event=agent_stop")


def _serve(cfg: AgentConfig, node: Node) -> None:
    count = node.reseed()
    log.info(
        "event=agent_start api=%s:%d bt_port=%d cache=%s reseeded=%d",
        cfg.host,
        cfg.port,
        node.listen_port,
        cfg.node.cache_dir,
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
