"""`hfbt seed`: the seed service with its collaborators, its piece server and its /metrics."""

from __future__ import annotations

import logging
import socket
import threading
import uuid

from hfbt.config import SeedConfig
from hfbt.hub.client import HubClient
from hfbt.metrics import SeedMetrics
from hfbt.metrics import serve as serve_metrics
from hfbt.published import PublishedStore
from hfbt.seed.pieces import PieceBook
from hfbt.seed.pieces import serve as serve_pieces
from hfbt.seed.service import SeedService
from hfbt.swarm import Swarm
from hfbt.trackerclient import TrackerClient

log = logging.getLogger("hfbt.seed")


def serve(cfg: SeedConfig, stop: threading.Event) -> None:
    """Run the seed until `stop` is set."""
    service = build_seed(cfg)
    try:
        if cfg.metrics_port:
            serve_metrics(service.metrics.registry, cfg.metrics_host, cfg.metrics_port)
        service.run(stop)
    finally:
        service.close()


def build_seed(cfg: SeedConfig) -> SeedService:
    """The seed and everything it talks to; its piece server already listening, if it could."""
    seed_id = cfg.seed_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    swarm = Swarm(cfg.swarm)
    metrics = SeedMetrics(swarm)
    pieces = PieceBook()
    return SeedService(
        cfg,
        seed_id=seed_id,
        tracker=TrackerClient(cfg.tracker, cfg.seed_token, node_name=f"seed-{seed_id}", zone=cfg.swarm.zone),
        origin=HubClient(cfg.origin, cfg.token, cfg.data_dir / "hub"),
        store=PublishedStore(cfg.data_dir / "published"),
        swarm=swarm,
        metrics=metrics,
        pieces=pieces,
        piece_port=start_piece_server(cfg, pieces, metrics),
    )


def start_piece_server(cfg: SeedConfig, pieces: PieceBook, metrics: SeedMetrics) -> int:
    """Serve `pieces` on cfg.piece_port; the port now serving, 0 when off or it cannot listen."""
    if not cfg.piece_port:
        return 0
    try:
        # It refuses every request until the seed has registered and learned the tracker's ticket key.
        serve_pieces(pieces, cfg.piece_host, cfg.piece_port, metrics.piece_served)
    except OSError as e:
        # A second seed on the same host (or a taken port) still seeds: its nodes then take every
        # piece over BitTorrent, as before the piece server existed.
        log.warning(
            "event=piece_server_off port=%d error=%r (nodes take every piece over BitTorrent)",
            cfg.piece_port,
            str(e),
        )
        return 0
    return cfg.piece_port
