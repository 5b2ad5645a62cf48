"""Every setting once: its flag, its HFBT_* variable, its help text, its default, and the dataclass
each role is started with.

The CLI (hfbt/cli.py) builds its options from the Setting constants below and maps them onto these
dataclasses; nothing else reads the environment, except the Hugging Face variables huggingface_hub
itself defines (HF_TOKEN, HF_HOME, HF_HUB_CACHE). README.md's configuration table lists every variable
(tests/test_config.py checks both).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hfbt.errors import HfbtError
from hfbt.wire import ZONE_RULE, node_token_name


@dataclass(frozen=True)
class Setting:
    """One command-line option: its flag, its environment variable (None: flag only) and its --help."""

    flag: str  # as typer declares it: "--dry-run", or "--super-seed/--no-super-seed" for an on/off pair
    env: str | None
    help: str
    short: str | None = None  # e.g. "-q"


# --- addresses ----------------------------------------------------------------------------------

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
DEFAULT_REVISION = "main"
DEFAULT_REPO_TYPE = "model"

# --- every command ------------------------------------------------------------------------------

LOG_LEVEL = "info"
# pull and gc print their own result; their logs are for trouble only.
QUIET_LOG_LEVEL = "warning"

OPT_LOG_LEVEL = Setting("--log-level", "HFBT_LOG_LEVEL", "debug, info, warning.")
OPT_HOST = Setting("--host", "HFBT_HOST", "Address the HTTP API binds to.")
OPT_TRACKER = Setting("--tracker", "HFBT_TRACKER", "Tracker base URL.")
OPT_REPO_TYPE = Setting("--repo-type", None, "model or dataset.")


@dataclass(frozen=True)
class Secret:
    """A credential: read from its environment variable only, never a flag (argv is world-readable
    in /proc and ends up in shell history, `ps` and crash reports)."""

    env: str
    help: str


SECRET_OPERATOR_TOKEN = Secret(
    "HFBT_OPERATOR_TOKEN",
    "Operator credential: node identities, jobs and listings. Set on the tracker (with "
    "HFBT_SEED_TOKEN it closes the tracker) and for `hfbt tracker node ...` and `hfbt status`.",
)
SECRET_SEED_TOKEN = Secret(
    "HFBT_SEED_TOKEN", "Seed credential: registers revisions and torrents. Set on the tracker and the seeds."
)
SECRET_NODE_TOKEN = Secret(
    "HFBT_NODE_TOKEN",
    "This node's credential, from `hfbt tracker node add NAME`; it names the node. Agent, pull, prefetch.",
)
SECRET_REDIS_PASSWORD = Secret(
    "HFBT_REDIS_PASSWORD", "Tracker: the password of the Redis server named by --peer-store (AUTH)."
)
SECRET_PG_PASSWORD = Secret(
    "HFBT_PG_PASSWORD",
    "Tracker: the password of the PostgreSQL role named by --db (libpq's PGPASSWORD / PGPASSFILE work too).",
)
SECRET_ORIGIN_TOKEN = Secret(
    "HFBT_ORIGIN_TOKEN", "serve-dir: serve the repos as private, readable only with this Bearer token."
)


def read_secret(secret: Secret) -> str | None:
    """The credential from `ENV`, else from the file `ENV_FILE` names (Docker/Kubernetes secrets, systemd
    LoadCredential=). A world-readable file is refused: the credential would be everyone's. (Group bits
    are allowed: Kubernetes hands a non-root pod its secret volume through fsGroup.)"""
    value = os.environ.get(secret.env)
    if value:
        return value
    path = os.environ.get(secret.env + "_FILE")
    if not path:
        return None
    try:
        world = os.stat(path).st_mode & 0o007
    except OSError as e:
        raise HfbtError("BadSecret", f"cannot read {secret.env}_FILE {path}: {e.strerror}") from None
    if world:
        raise HfbtError(
            "InsecureSecret", f"{path} ({secret.env}_FILE) is readable by other users: chmod 600 it"
        )
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise HfbtError("BadSecret", f"cannot read {secret.env}_FILE {path}: {e.strerror}") from None
    if not value:
        # An empty file is a provisioning mistake, not "unset": a tracker would start open.
        raise HfbtError("BadSecret", f"{path} ({secret.env}_FILE) is empty")
    return value


# One variable, worded for each command that reads it: the same value (the Hub, the user's Hub token,
# the node's agent) seen from different roles. Any other variable belongs to exactly one Setting.
SHARED_ENV = frozenset({"HFBT_ORIGIN", "HF_TOKEN", "HFBT_AGENT"})

# --- the BitTorrent session (seed, agent, pull) -------------------------------------------------

# A peer connection carries both directions: a node's requests and HAVEs to a peer queue behind the
# piece data it is sending that peer. The kernel's autotuned buffer held ~1 MB unsent per connection
# (≈ 0.5 s at a peer's share of a 100 Mbit link); 128 KiB keeps the wait short and still covers the
# bandwidth-delay product of a LAN flow (5 Gbit/s at 200 µs RTT). Raise it on links of 25 Gbit/s+.
SOCKET_BUFFER_KB = 128

OPT_BT_HOST = Setting("--bt-host", "HFBT_BT_HOST", "BitTorrent listen address.")
OPT_BT_PORT = Setting("--bt-port", "HFBT_BT_PORT", "BitTorrent listen port (0 = ephemeral).")
OPT_UPLOAD_MBIT = Setting("--upload-mbit", "HFBT_UPLOAD_MBIT", "Upload cap in Mbit/s (0 = none).")
OPT_ZONE = Setting(
    "--zone",
    "HFBT_ZONE",
    "Where this node is (a zone or rack; the DaemonSet reads topology.kubernetes.io/zone): peers are"
    " handed out from the same zone first.",
)
OPT_DOWNLOAD_MBIT = Setting("--download-mbit", "HFBT_DOWNLOAD_MBIT", "Download cap in Mbit/s (0 = none).")
OPT_SOCKET_BUFFER_KB = Setting(
    "--socket-buffer-kb",
    "HFBT_SOCKET_BUFFER_KB",
    "Kernel send buffer per peer connection in KiB (0 = OS autotuning). Small keeps a node's "
    "requests from waiting behind the data it uploads; raise it on links of 25 Gbit/s and more.",
)
OPT_LT_SETTING = Setting(
    "--lt-setting", None, "Expert: a libtorrent settings_pack value NAME=VALUE, applied last (repeatable)."
)


@dataclass
class SwarmConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 0  # 0 = ephemeral, so pulls and agents can share one machine
    upload_mbit: float = 0.0  # 0 = unlimited
    download_mbit: float = 0.0
    zone: str = ""  # announced as zone=; "" : unsaid
    super_seed: bool = False  # seeds only: hand each peer pieces nobody has yet (≈ one copy out)
    # Kernel send buffer per peer connection (0 = the OS's autotuning); see swarm.session_settings.
    socket_buffer_kb: int = SOCKET_BUFFER_KB
    # Raw libtorrent settings_pack overrides (--lt-setting NAME=VALUE), applied last: for tuning.
    lt_settings: dict[str, int | bool | str] = field(default_factory=dict)
    disk_io: str = "posix"  # libtorrent's disk backend, one of DISK_IO_BACKENDS


# libtorrent 2.1's disk backends. "posix" (plain pread/pwrite, no cache of its own) is the default: it
# halves a node's and a seed's peak memory for the same intake within noise (bench/README.md).
DISK_IO_BACKENDS = ("default", "pread", "posix", "mmap")
OPT_DISK_IO = Setting(
    "--disk-io",
    "HFBT_DISK_IO",
    "libtorrent disk backend: posix (least memory), default (libtorrent's own), pread or mmap.",
)


def check_disk_io(name: str) -> str:
    if name not in DISK_IO_BACKENDS:
        raise HfbtError("BadRequest", f"--disk-io wants one of {', '.join(DISK_IO_BACKENDS)}, got {name!r}")
    return name


def check_zone(zone: str) -> str:
    if zone and not re.fullmatch(ZONE_RULE, zone):
        raise HfbtError("BadRequest", f"--zone wants a label value ({ZONE_RULE}), got {zone!r}")
    return zone


def parse_lt_settings(items: list[str] | None) -> dict[str, int | bool | str]:
    """--lt-setting NAME=VALUE items: true/false become bools, integers ints, anything else a string."""
    out: dict[str, int | bool | str] = {}
    for item in items or ():
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise HfbtError("BadRequest", f"--lt-setting wants NAME=VALUE, got {item!r}")
        value: int | bool | str = raw.strip()
        if raw.strip().lower() in ("true", "false"):
            value = raw.strip().lower() == "true"
        else:
            try:
                value = int(raw.strip())
            except ValueError:
                pass
        out[name.strip()] = value
    return out


# --- hfbt tracker -------------------------------------------------------------------------------

TRACKER_DB = Path("tracker.db")
REF_TTL_S = 30.0
ANNOUNCE_INTERVAL_S = 30

OPT_DB = Setting(
    "--db",
    "HFBT_DB",
    "Registry: a SQLite file, or postgresql://user@host/db shared by tracker replicas (the password from"
    " HFBT_PG_PASSWORD, PGPASSWORD or PGPASSFILE, never in the URL).",
)
OPT_PEER_STORE = Setting(
    "--peer-store",
    "HFBT_PEER_STORE",
    "Peer table: local (this process) or redis://host:6379/0 shared by tracker replicas (the password"
    " from HFBT_REDIS_PASSWORD, never in the URL).",
)
OPT_SEEDER_INTERVAL = Setting(
    "--seeder-interval",
    "HFBT_SEEDER_INTERVAL",
    "Seconds between a seeder's announces (0: as --announce-interval; an hour suits a shared --peer-store).",
)
OPT_ZONE_GATEWAYS = Setting(
    "--zone-gateways",
    "HFBT_ZONE_GATEWAYS",
    "Peers per zone and blob handed peers of other zones (0: zones ignored); the rest stay in their zone.",
)
OPT_TRACKER_PORT = Setting("--port", "HFBT_TRACKER_PORT", "HTTP port.")
OPT_PUBLIC_URL = Setting(
    "--public-url", "HFBT_PUBLIC_URL", "Base URL written into .torrent files (default: the caller's)."
)
OPT_TRACKER_ORIGIN = Setting(
    "--origin",
    "HFBT_ORIGIN",
    "Hub endpoint that decides who may read a private or gated repo (the one the seeds mirror from).",
)
OPT_REF_TTL = Setting("--ref-ttl", "HFBT_REF_TTL", "Seconds a resolved branch/tag stays fresh.")
OPT_ANNOUNCE_INTERVAL = Setting(
    "--announce-interval", "HFBT_ANNOUNCE_INTERVAL", "Seconds between a leecher's announces."
)
OPT_HANDOUT = Setting("--handout", "HFBT_HANDOUT", "Peer handout policy: random-mix or seed-fanout.")
OPT_TICKET_KEY = Setting(
    "--ticket-key",
    "HFBT_TICKET_KEY",
    "Ed25519 key file signing tickets, created mode 0600 if absent (default: beside --db).",
)
OPT_TICKET_TTL = Setting(
    "--ticket-ttl", "HFBT_TICKET_TTL", "Seconds a node's ticket for one torrent is valid (nodes renew it)."
)
OPT_TRUST_ANNOUNCE_IP = Setting(
    "--trust-announce-ip/--no-trust-announce-ip",
    "HFBT_TRUST_ANNOUNCE_IP",
    "Hand out the address an announce names in ip= instead of the one it came from (nodes behind NAT).",
)
TICKET_TTL_S = 600.0


@dataclass
class TrackerConfig:
    db: str  # a SQLite path or a postgresql:// URL (tracker/db.py)
    host: str = DEFAULT_HOST
    port: int = TRACKER_PORT
    # Where users' Hub tokens are checked: the tracker's own setting, never what a seed reports.
    origin: str = DEFAULT_ORIGIN
    # Both set: closed (every call needs a role's credential, announces a ticket). Neither: open, for
    # one machine. One without the other is refused at start.
    operator_token: str | None = field(default=None, repr=False)
    seed_token: str | None = field(default=None, repr=False)
    ticket_key: Path | None = None  # None: beside db
    ticket_ttl: float = TICKET_TTL_S
    trust_announce_ip: bool = False
    public_url: str | None = None  # base URL written into .torrent files; default: the URL the caller used
    ref_ttl: float = REF_TTL_S
    announce_interval: int = ANNOUNCE_INTERVAL_S  # leechers
    seeder_interval: int = 0  # 0: as announce_interval
    peer_store: str = "local"  # or a redis:// URL (tracker/peerstore/)
    redis_password: str | None = field(default=None, repr=False)
    pg_password: str | None = field(default=None, repr=False)  # None: libpq's PGPASSWORD / PGPASSFILE
    handout: str = "random-mix"  # peer handout policy, one of tracker.handout.POLICIES
    zone_gateways: int = 2  # tracker.handout.by_zone


# --- hfbt serve-dir -----------------------------------------------------------------------------

OPT_REPO = Setting("--repo", None, "Repo id the folder is served as.")
OPT_ORIGIN_PORT = Setting("--port", "HFBT_ORIGIN_PORT", "HTTP port.")
OPT_ORIGIN_MAX_MBIT = Setting(
    "--max-mbit", "HFBT_ORIGIN_MAX_MBIT", "Pace all downloads to this many Mbit/s (0 = unlimited)."
)
OPT_REF = Setting(
    "--ref", None, "Another branch/tag/PR name for the current commit, e.g. refs/pr/1 (repeatable)."
)


@dataclass
class ServeDirConfig:
    directory: Path
    repo: str | None = None  # None: directory holds models/<org>/<name> and datasets/<org>/<name>
    repo_type: str = DEFAULT_REPO_TYPE
    host: str = DEFAULT_HOST
    port: int = ORIGIN_PORT
    max_mbit: float = 0.0  # pace all responses together, like one slow uplink; 0 = unlimited
    token: str | None = field(default=None, repr=False)  # set: every repo is private, readable with it
    refs: tuple[str, ...] = ()  # more branch/tag/PR names (e.g. refs/pr/1) for the current commit


# --- hfbt seed ----------------------------------------------------------------------------------

SEED_DATA_DIR = Path("seed-data")
# Seed metrics (the tracker and agent serve /metrics on their own HTTP port; the seed has no HTTP
# server, so it opens prometheus_client's own one, off unless a port is given: a fixed default
# port would collide when several seeds or test clusters share a host).
METRICS_HOST = "0.0.0.0"
METRICS_PORT_OFF = 0
# The seed's piece server (hfbt/seed/pieces.py); port 0 = off (nodes then take every piece over BT).
PIECE_HOST = "0.0.0.0"

OPT_SEED_ORIGIN = Setting("--origin", "HFBT_ORIGIN", "Hub endpoint to mirror from.")
OPT_DATA_DIR = Setting("--data-dir", "HFBT_DATA_DIR", "Where mirrored blobs are kept.")
OPT_SEED_TOKEN = Setting("--token", "HF_TOKEN", "Hub token for the origin.")
OPT_SEED_ID = Setting("--seed-id", "HFBT_SEED_ID", "Name of this seed.")
OPT_PARALLEL_FILES = Setting(
    "--parallel-files", "HFBT_PARALLEL_FILES", "Files fetched from the origin at once."
)
OPT_METRICS_PORT = Setting(
    "--metrics-port", "HFBT_METRICS_PORT", "Serve Prometheus /metrics on this port (0 = off)."
)
OPT_METRICS_HOST = Setting("--metrics-host", "HFBT_METRICS_HOST", "Address /metrics binds to.")
OPT_PIECE_PORT = Setting(
    "--piece-port",
    "HFBT_PIECE_PORT",
    "Hand each piece of a blob to one node over HTTP on this port; the nodes trade the rest "
    "(0 = off: nodes take every piece over BitTorrent).",
)
OPT_PIECE_HOST = Setting("--piece-host", "HFBT_PIECE_HOST", "Address the piece server binds to.")
OPT_PIECE_URL = Setting(
    "--piece-url",
    "HFBT_PIECE_URL",
    "URL nodes use for the piece server (default: --piece-port on the seed's address).",
)
OPT_SUPER_SEED = Setting(
    "--super-seed/--no-super-seed",
    "HFBT_SUPER_SEED",
    "Super seeding: upload about one copy and let the nodes trade the rest.",
)


@dataclass
class SeedConfig:
    tracker: str
    data_dir: Path
    origin: str = DEFAULT_ORIGIN
    token: str | None = field(default=None, repr=False)
    seed_token: str | None = field(default=None, repr=False)
    seed_id: str | None = None
    swarm: SwarmConfig = field(default_factory=lambda: SwarmConfig(listen_port=SEED_BT_PORT))
    # One file at a time: shard 1 is published sooner, and nodes start on it sooner (bench/README.md).
    parallel_files: int = 1
    metrics_host: str = METRICS_HOST
    metrics_port: int = METRICS_PORT_OFF  # 0 = no /metrics server
    piece_host: str = PIECE_HOST
    piece_port: int = SEED_PIECE_PORT  # asked for; hfbt.seed.daemon decides what is served
    piece_url: str | None = None  # what nodes use; default: this port on the address the tracker sees


# --- a node: hfbt agent, pull, prefetch, gc -----------------------------------------------------

STALL_TIMEOUT_S = 300.0
# hfbt prefetch / hfbt gc: node-wide maintenance lock and pin records, both in the state dir.
MAINTENANCE_LOCK = "locks/maintenance.lock"
PINS_DIR = "pins"

OPT_CACHE_DIR = Setting(
    "--cache-dir", "HFBT_CACHE_DIR", "HF cache (default: HF_HUB_CACHE, else HF_HOME/hub)."
)
OPT_STATE_DIR = Setting(
    "--state-dir", "HFBT_STATE_DIR", "hfbt's own state (default: .hfbt-<cache name> beside the cache)."
)
OPT_NODE_NAME = Setting("--node-name", "HFBT_NODE_NAME", "Name sent to the tracker (default: hostname).")
OPT_STALL_TIMEOUT = Setting(
    "--stall-timeout",
    "HFBT_STALL_TIMEOUT",
    "Fail a pull after this many seconds without progress (0 = never).",
)
OPT_FALLBACK_ORIGIN = Setting(
    "--fallback-origin",
    "HFBT_FALLBACK_ORIGIN",
    "Hub endpoint to fetch a file from when the swarm stalls on it (default: fail the pull).",
)
# prefetch, gc, status: which agent to talk to (pull words it for what it does; see agent_choice).
OPT_AGENT = Setting(
    "--agent",
    "HFBT_AGENT",
    "Agent URL; 'auto' uses the default one if it serves this cache; 'none' never uses one.",
)
AGENT_AUTO = "auto"
AGENT_NONE = "none"


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


def agent_choice(value: str) -> tuple[str | None, bool]:
    """--agent VALUE as (agent URL or None, required).

    'auto': the default agent, used only if it serves this cache; 'none': no agent; anything else is a
    URL the caller asked for by name, so not reaching it is an error rather than a silent fallback.
    """
    if value == AGENT_AUTO:
        return DEFAULT_AGENT, False
    if value == AGENT_NONE:
        return None, False
    return value, True


@dataclass
class NodeConfig:
    """What a pull or an agent needs: where the cache is and how to reach the tracker."""

    tracker: str
    cache_dir: Path
    state_dir: Path
    node_token: str | None = field(default=None, repr=False)
    node_name: str = "anonymous"
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    stall_timeout: float = STALL_TIMEOUT_S  # a pull with no progress for this long fails (0 = never)
    # P2P must never be worse than direct: with this set, a stalled file is fetched from this origin
    # (through huggingface_hub, checked against the manifest) instead of failing the pull.
    fallback_origin: str | None = None


def node_config(
    tracker: str = DEFAULT_TRACKER,
    cache_dir: Path | None = None,
    state_dir: Path | None = None,
    *,
    node_token: str | None = None,
    node_name: str | None = None,
    swarm: SwarmConfig | None = None,
    stall_timeout: float = STALL_TIMEOUT_S,
    fallback_origin: str | None = None,
) -> NodeConfig:
    """NodeConfig from command-line values, None meaning the default: the HF cache, the state dir
    beside it, the node's name from its token (else the hostname). Paths are made absolute: an agent
    and a pull must agree on them."""
    cache = (cache_dir or default_hf_cache()).expanduser().resolve()
    return NodeConfig(
        tracker=tracker,
        cache_dir=cache,
        state_dir=(state_dir or default_state_dir(cache)).expanduser().resolve(),
        node_token=node_token,
        node_name=node_name or node_token_name(node_token) or socket.gethostname(),
        swarm=swarm if swarm is not None else SwarmConfig(),
        stall_timeout=stall_timeout,
        fallback_origin=fallback_origin,
    )


# --- hfbt agent ---------------------------------------------------------------------------------

OPT_AGENT_PORT = Setting("--port", "HFBT_AGENT_PORT", "Control API port.")
OPT_SHIM_PORT = Setting(
    "--shim-port",
    "HFBT_SHIM_PORT",
    "Port of the HF_ENDPOINT-compatible API (HF_ENDPOINT=http://127.0.0.1:<port>).",
)
OPT_SHIM_ORIGIN = Setting(
    "--origin", "HFBT_ORIGIN", "Hub endpoint the shim forwards what it does not serve to."
)


@dataclass
class AgentConfig:
    node: NodeConfig
    host: str = DEFAULT_HOST
    port: int = AGENT_PORT
    shim_port: int = SHIM_PORT  # the HF_ENDPOINT-compatible API, on the same host
    origin: str = DEFAULT_ORIGIN  # where the shim forwards what it does not serve (whoami, uploads, ...)


# --- hfbt pull ----------------------------------------------------------------------------------

OPT_REVISION = Setting("--revision", None, "Branch, tag or commit.")
OPT_INCLUDE = Setting("--include", None, "Only files matching this glob (repeatable).")
OPT_EXCLUDE = Setting("--exclude", None, "Skip files matching this glob (repeatable).")
OPT_PULL_AGENT = Setting(
    "--agent",
    "HFBT_AGENT",
    "Agent URL to hand the pull to; 'auto' tries the default and falls back to an embedded session;"
    " 'none' never uses one.",
)
OPT_PULL_TOKEN = Setting("--token", "HF_TOKEN", "Your Hub token: needed for private or gated repos.")
OPT_PULL_TIMEOUT = Setting("--timeout", None, "Give up after this many seconds.")
# Without an agent, a pull that exits when done strands the nodes still downloading its pieces.
LINGER_S = 30.0
OPT_LINGER = Setting(
    "--linger",
    "HFBT_LINGER",
    "Without an agent: once done, keep serving up to this many seconds while other nodes still ask "
    "for pieces (0 = exit at once).",
)
OPT_QUIET = Setting("--quiet", None, "No progress bar.", short="-q")

# --- hfbt prefetch ------------------------------------------------------------------------------

OPT_PREFETCH_CONFIG = Setting("--config", "HFBT_PREFETCH_CONFIG", "TOML file listing the repos.")
OPT_CRON = Setting("--cron", None, "Print the crontab line running this prefetch on a schedule, and exit.")
OPT_PREFETCH_TOKEN = Setting("--token", "HF_TOKEN", "Hub token for private or gated repos.")
OPT_PREFETCH_TIMEOUT = Setting("--timeout", None, "Give up on one repo after this many seconds.")

# --- hfbt gc ------------------------------------------------------------------------------------

OPT_GC_MAX_SIZE = Setting(
    "--max-size",
    "HFBT_GC_MAX_SIZE",
    "Cache budget, e.g. 500G (K/M/G/T = powers of 1024; KB/MB/GB/TB = of 1000).",
)
OPT_GC_KEEP_REVISIONS = Setting(
    "--keep-revisions",
    "HFBT_GC_KEEP_REVISIONS",
    "Keep at most this many revisions per repo (the most recently used).",
)
OPT_DRY_RUN = Setting("--dry-run", None, "Only print what would be evicted.")

# --- hfbt status --------------------------------------------------------------------------------

OPT_JSON = Setting("--json", None, "Machine-readable output.")

# --- hfbt demo ----------------------------------------------------------------------------------

DEMO_SIZE_MB = 300
DEMO_NODES = 3

OPT_DEMO_SIZE_MB = Setting("--size-mb", None, "Approximate size of the synthetic model.")
OPT_DEMO_NODES = Setting("--nodes", None, "Node agents to start.")
OPT_DEMO_WORKDIR = Setting("--workdir", None, "Keep everything here (default: a temp dir, removed).")
