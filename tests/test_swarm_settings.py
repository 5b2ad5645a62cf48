"""The libtorrent session an agent or seed runs holds the LAN buffering hfbt configures."""

from __future__ import annotations

from hfbt.config import SOCKET_BUFFER_KB, SwarmConfig
from hfbt.swarm import Swarm


def _settings(cfg: SwarmConfig) -> dict:
    swarm = Swarm(cfg)
    try:
        return swarm._ses.get_settings()
    finally:
        swarm.close(save_resume=False)


def test_peer_connections_queue_little_ahead_of_requests() -> None:
    got = _settings(SwarmConfig(listen_host="127.0.0.1"))
    # requests and HAVEs share each connection with outgoing piece data: keep that queue short
    assert got["send_socket_buffer_size"] == SOCKET_BUFFER_KB * 1024
    assert got["send_buffer_watermark_factor"] == 1
    assert got["send_buffer_low_watermark"] == 16 * 1024


def test_socket_buffer_is_configurable_and_zero_means_the_os_default() -> None:
    assert _settings(SwarmConfig(listen_host="127.0.0.1", socket_buffer_kb=512))[
        "send_socket_buffer_size"
    ] == (512 * 1024)
    assert _settings(SwarmConfig(listen_host="127.0.0.1", socket_buffer_kb=0))["send_socket_buffer_size"] == 0
    # an expert override still wins
    cfg = SwarmConfig(listen_host="127.0.0.1", lt_settings={"send_buffer_watermark_factor": 150})
    assert _settings(cfg)["send_buffer_watermark_factor"] == 150
