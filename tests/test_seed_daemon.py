"""hfbt.seed.daemon: the piece server's port is decided once and handed to the service."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from hfbt.config import SeedConfig, SwarmConfig
from hfbt.seed.daemon import build_seed, start_piece_server
from hfbt.seed.pieces import PieceBook
from hfbt.trackerclient import TicketGrant


class _Metrics:
    def piece_served(self, how: str, size: int) -> None:
        pass


class _Tracker:
    def __init__(self) -> None:
        self.seeds: list[tuple] = []

    def register_seed(self, *args) -> None:
        self.seeds.append(args)

    skew = 0.0

    def announce_url(self) -> TicketGrant:
        return TicketGrant(None, "http://t/announce", None)

    def ticket_key(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def _cfg(tmp_path: Path, piece_port: int) -> SeedConfig:
    return SeedConfig(
        tracker="http://127.0.0.1:9",
        data_dir=tmp_path / "seed",
        swarm=SwarmConfig(listen_host="127.0.0.1"),
        piece_host="127.0.0.1",
        piece_port=piece_port,
        piece_url=f"http://127.0.0.1:{piece_port}",
    )


def test_no_piece_port_starts_no_piece_server(tmp_path: Path) -> None:
    assert start_piece_server(_cfg(tmp_path, 0), PieceBook(), _Metrics()) == 0


# uvicorn ends its thread with SystemExit when it cannot bind: that is how pieces.serve learns it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_taken_piece_port_leaves_the_seed_without_piece_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _cfg(tmp_path, port)
        with caplog.at_level(logging.WARNING, logger="hfbt.seed"):
            service = build_seed(cfg)
        try:
            assert f"event=piece_server_off port={port}" in caplog.text
            assert service.piece_port == 0 and cfg.piece_port == port  # decided, the config untouched
            service.tracker = tracker = _Tracker()
            service._register()
            # Nodes must not be sent to a piece server that is not there: no port, no URL.
            assert tracker.seeds == [(service.seed_id, service.origin.endpoint, None, None)]
        finally:
            service.close()
