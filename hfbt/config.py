"""Every setting once: its default, its HFBT_* variable and the dataclass each role is started with.

The CLI (hfbt/cli.py) maps flags onto these dataclasses; nothing else reads the environment, except the
Hugging Face variables huggingface_hub itself defines (HF_TOKEN, HF_HOME, HF_HUB_CACHE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
TRACKER_PORT = 6969
ORIGIN_PORT = 8090
AGENT_PORT = 6970
SHIM_PORT = 6971
AGENT_BT_PORT = 6881
SEED_BT_PORT = 6882
SEED_PIECE_PORT = 6883
DEFAULT_TRACKER = f"http://{DEFAULT_HOST}:{TRACKER_PORT}"
DEFAULT_AGENT = f"http://{DEFAULT_HOST}:{AGENT_PORT}"
DEFAULT_ORIGIN = "https://huggingface.co"
REF_TTL_S = 30.0
ANNOUNCE_INTERVAL_S = 30
STALL_TIMEOUT_S = 300.0
# Seed metrics (the tracker and agent serve /metrics on their own HTTP port; the seed has no HTTP
# server, so it opens prometheus_client's own one, off unless a port is given: a fixed default
# port would collide when several seeds or test clusters share a host).
METRICS_HOST = "0.0.0.0"
METRICS_PORT_OFF = 0
# A peer connection carries both directions: a node's requests and HAVEs to a peer queue behind the
# piece data it is sending that peer. The kernel's autotuned buffer held ~1 MB unsent per connection
# (≈ 0.5 s at a peer's share of a 100 Mbit link); 128 KiB keeps the wait short and still covers the
# bandwidth-delay product of a LAN flow (5 Gbit/s at 200 µs RTT). Raise it on links of 25 Gbit/s+.
SOCKET_BUFFER_KB = 128

# The seed's piece server (hfbt/seed/pieces.py); port 0 = off (nodes then take every piece over BT).
PIECE_HOST = "0.0.0.0"
# hfbt prefetch / hfbt gc: node-wide maintenance lock and pin records, both in the state dir.
MAINTENANCE_LOCK = "locks/maintenance.lock"
PINS_DIR = "pins"


def default_hf_cache() -> Path:
    """The Hub client's own rule: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def default_state_dir(cache_dir: Path) -> Path:
    # Beside the cache, not in it: scan_cache_dir() flags every unknown folder inside the cache as corrupt.
    cache_dir = cache_dir.expanduser().resolve()
    return cache_dir.parent / f".hfbt-{cache_dir.name}"


@dataclass
class TrackerConfig:
    db: Path
    host: str = DEFAULT_HOST
    port: int = TRACKER_PORT
    auth_token: str | None = None
    public_url: str | None = None  # base URL written into .torrent files; default: the URL the caller used
    ref_ttl: float = REF_TTL_S
    announce_interval: int = ANNOUNCE_INTERVAL_S
    handout: str = "random-mix"  # peer handout policy, one of tracker.handout.POLICIES


@dataclass
class ServeDirConfig:
    directory: Path
    repo: str | None = None  # None: directory holds models/<org>/<name> and datasets/<org>/<name>
    repo_type: str = "model"
    host: str = DEFAULT_HOST
    port: int = ORIGIN_PORT
    max_mbit: float = 0.0  # pace all responses together, like one slow uplink; 0 = unlimited
    token: str | None = field(default=None, repr=False)  # set: every repo is private, readable with it
    refs: tuple[str, ...] = ()  # more branch/tag/PR names (e.g. refs/pr/1) for the current commit


@dataclass
class SwarmConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 0  # 0 = ephemeral, so pulls and agents can share one machine
    upload_mbit: float = 0.0  # 0 = unlimited
    download_mbit: float = 0.0
    super_seed: bool = False  # seeds only: hand each peer pieces nobody has yet (≈ one copy out)
    # Kernel send buffer per peer connection (0 = the OS's autotuning); see swarm.session_settings.
    socket_buffer_kb: int = SOCKET_BUFFER_KB
    # Raw libtorrent settings_pack overrides (--lt-setting NAME=VALUE), applied last: for tuning.
    lt_settings: dict[str, int | bool | str] = field(default_factory=dict)


@dataclass
class SeedConfig:
    tracker: str
    data_dir: Path
    origin: str = DEFAULT_ORIGIN
    token: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    seed_id: str | None = None
    swarm: SwarmConfig = field(default_factory=lambda: SwarmConfig(listen_port=SEED_BT_PORT))
    # One file at a time: shard 1 is published sooner, and nodes start on it sooner (bench/README.md).
    parallel_files: int = 1
    metrics_host: str = METRICS_HOST
    metrics_port: int = METRICS_PORT_OFF  # 0 = no /metrics server
    piece_host: str = PIECE_HOST
    piece_port: int = SEED_PIECE_PORT
    piece_url: str | None = None  # what nodes use; default: this port on the address the tracker sees


@dataclass
class NodeConfig:
    """What a pull or an agent needs: where the cache is and how to reach the tracker."""

    tracker: str
    cache_dir: Path
    state_dir: Path
    auth_token: str | None = field(default=None, repr=False)
    node_name: str = "anonymous"
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    stall_timeout: float = STALL_TIMEOUT_S  # a pull with no progress for this long fails (0 = never)
    # P2P must never be worse than direct: with this set, a stalled file is fetched from this origin
    # (through huggingface_hub, checked against the manifest) instead of failing the pull.
    fallback_origin: str | None = None


@dataclass
class AgentConfig:
    node: NodeConfig
    host: str = DEFAULT_HOST
    port: int = AGENT_PORT
    shim_port: int = SHIM_PORT  # the HF_ENDPOINT-compatible API, on the same host
    origin: str = DEFAULT_ORIGIN  # where the shim forwards what it does not serve (whoami, uploads, ...)
