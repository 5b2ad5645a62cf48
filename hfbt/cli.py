"""The `hfbt` command: one thin function per command; flags map onto hfbt.config dataclasses.

Every flag has an HFBT_* environment variable (shown in --help); Hugging Face's own variables
(HF_TOKEN, HF_HOME, HF_HUB_CACHE) are honoured where the Hub client would honour them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from hfbt import config as C
from hfbt.errors import HfbtError

app = typer.Typer(
    help=(
        "Hugging Face repos as private torrents: mirror once from the Hub, spread inside the cluster.\n\n"
        "Every flag can also be set by the HFBT_* environment variable shown in each command's --help;"
        " HF_TOKEN, HF_HOME and HF_HUB_CACHE mean what they mean to huggingface_hub."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Host = Annotated[str, typer.Option("--host", help="Address the HTTP API binds to.", envvar="HFBT_HOST")]
AuthToken = Annotated[
    str | None,
    typer.Option(
        "--auth-token",
        help="Cluster token protecting the tracker API and announces.",
        envvar="HFBT_AUTH_TOKEN",
    ),
]
TrackerUrl = Annotated[str, typer.Option("--tracker", help="Tracker base URL.", envvar="HFBT_TRACKER")]
BtPort = Annotated[
    int, typer.Option("--bt-port", help="BitTorrent listen port (0 = ephemeral).", envvar="HFBT_BT_PORT")
]
BtHost = Annotated[str, typer.Option("--bt-host", help="BitTorrent listen address.", envvar="HFBT_BT_HOST")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning.", envvar="HFBT_LOG_LEVEL")]


def _fail(e: HfbtError) -> None:
    typer.echo(f"hfbt: error: {e.message} [{e.code}]", err=True)
    raise typer.Exit(1)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _setup_logs(level: str) -> None:
    from hfbt import log

    log.setup(level)


@app.command()
def tracker(
    db: Annotated[Path, typer.Option("--db", help="SQLite registry file.", envvar="HFBT_DB")] = Path(
        "tracker.db"
    ),
    host: Host = C.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", help="HTTP port.", envvar="HFBT_TRACKER_PORT")
    ] = C.TRACKER_PORT,
    auth_token: AuthToken = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="Base URL written into .torrent files (default: the caller's).",
            envvar="HFBT_PUBLIC_URL",
        ),
    ] = None,
    ref_ttl: Annotated[
        float,
        typer.Option("--ref-ttl", help="Seconds a resolved branch/tag stays fresh.", envvar="HFBT_REF_TTL"),
    ] = C.REF_TTL_S,
    announce_interval: Annotated[
        int,
        typer.Option(
            "--announce-interval", help="Seconds between announces.", envvar="HFBT_ANNOUNCE_INTERVAL"
        ),
    ] = C.ANNOUNCE_INTERVAL_S,
    handout: Annotated[
        str,
        typer.Option(
            "--handout", help="Peer handout policy: random-mix or seed-fanout.", envvar="HFBT_HANDOUT"
        ),
    ] = C.TrackerConfig.handout,
    log_level: LogLevel = "info",
) -> None:
    """Run the private tracker, revision registry and mirror scheduler."""
    _setup_logs(log_level)
    from tracker.handout import POLICIES
    from tracker.server import serve

    if handout not in POLICIES:
        _fail(HfbtError("BadRequest", f"--handout must be one of {', '.join(POLICIES)}, not {handout!r}"))

    cfg = C.TrackerConfig(
        db=db,
        host=host,
        port=port,
        auth_token=auth_token,
        public_url=public_url,
        ref_ttl=ref_ttl,
        announce_interval=announce_interval,
        handout=handout,
    )
    serve(cfg)


SocketBufferKb = Annotated[
    int,
    typer.Option(
        "--socket-buffer-kb",
        help="Kernel send buffer per peer connection in KiB (0 = OS autotuning). Small keeps a node's "
        "requests from waiting behind the data it uploads; raise it on links of 25 Gbit/s and more.",
        envvar="HFBT_SOCKET_BUFFER_KB",
        min=0,
    ),
]

LtSettings = Annotated[
    list[str] | None,
    typer.Option(
        "--lt-setting",
        help="Expert: a libtorrent settings_pack value NAME=VALUE, applied last (repeatable).",
    ),
]


def _lt_settings(items: list[str] | None) -> dict[str, int | bool | str]:
    out: dict[str, int | bool | str] = {}
    for item in items or ():
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            _fail(HfbtError("BadRequest", f"--lt-setting wants NAME=VALUE, got {item!r}"))
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


@app.command()
def seed(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    origin: Annotated[
        str, typer.Option("--origin", help="Hub endpoint to mirror from.", envvar="HFBT_ORIGIN")
    ] = C.DEFAULT_ORIGIN,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where mirrored blobs are kept.", envvar="HFBT_DATA_DIR")
    ] = Path("seed-data"),
    token: Annotated[
        str | None, typer.Option("--token", help="Hub token for the origin.", envvar="HF_TOKEN")
    ] = None,
    auth_token: AuthToken = None,
    seed_id: Annotated[
        str | None, typer.Option("--seed-id", help="Name of this seed.", envvar="HFBT_SEED_ID")
    ] = None,
    bt_host: BtHost = "0.0.0.0",
    bt_port: BtPort = C.SEED_BT_PORT,
    upload_mbit: Annotated[
        float,
        typer.Option("--upload-mbit", help="Upload cap in Mbit/s (0 = none).", envvar="HFBT_UPLOAD_MBIT"),
    ] = 0.0,
    parallel_files: Annotated[
        int,
        typer.Option(
            "--parallel-files", help="Files fetched from the origin at once.", envvar="HFBT_PARALLEL_FILES"
        ),
    ] = C.SeedConfig.parallel_files,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus /metrics on this port (0 = off).",
            envvar="HFBT_METRICS_PORT",
        ),
    ] = C.METRICS_PORT_OFF,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address /metrics binds to.", envvar="HFBT_METRICS_HOST")
    ] = C.METRICS_HOST,
    piece_port: Annotated[
        int,
        typer.Option(
            "--piece-port",
            help="Hand each piece of a blob to one node over HTTP on this port; the nodes trade the rest "
            "(0 = off: nodes take every piece over BitTorrent).",
            envvar="HFBT_PIECE_PORT",
        ),
    ] = C.SEED_PIECE_PORT,
    piece_host: Annotated[
        str, typer.Option("--piece-host", help="Address the piece server binds to.", envvar="HFBT_PIECE_HOST")
    ] = C.PIECE_HOST,
    piece_url: Annotated[
        str | None,
        typer.Option(
            "--piece-url",
            help="URL nodes use for the piece server (default: --piece-port on the seed's address).",
            envvar="HFBT_PIECE_URL",
        ),
    ] = None,
    super_seed: Annotated[
        bool,
        typer.Option(
            "--super-seed/--no-super-seed",
            help="Super seeding: upload about one copy and let the nodes trade the rest.",
            envvar="HFBT_SUPER_SEED",
        ),
    ] = False,
    socket_buffer_kb: SocketBufferKb = C.SOCKET_BUFFER_KB,
    lt_setting: LtSettings = None,
    log_level: LogLevel = "info",
) -> None:
    """Mirror revisions from the origin on demand and seed their torrents."""
    _setup_logs(log_level)
    from hfbt.seed.service import SeedService

    cfg = C.SeedConfig(
        tracker=tracker,
        data_dir=data_dir,
        origin=origin,
        token=token,
        auth_token=auth_token,
        seed_id=seed_id,
        swarm=C.SwarmConfig(
            listen_host=bt_host,
            listen_port=bt_port,
            upload_mbit=upload_mbit,
            super_seed=super_seed,
            socket_buffer_kb=socket_buffer_kb,
            lt_settings=_lt_settings(lt_setting),
        ),
        parallel_files=parallel_files,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        piece_host=piece_host,
        piece_port=piece_port,
        piece_url=piece_url,
    )
    service = SeedService(cfg)
    if cfg.piece_port:
        from hfbt.seed.pieces import serve as serve_pieces

        try:
            serve_pieces(
                service.pieces, cfg.piece_host, cfg.piece_port, cfg.auth_token, service.metrics.piece_served
            )
        except OSError as e:
            # A second seed on the same host (or a taken port) still seeds: its nodes then take every
            # piece over BitTorrent, as before the piece server existed.
            logging.getLogger("hfbt.seed").warning(
                "event=piece_server_off port=%d error=%r (nodes take every piece over BitTorrent)",
                cfg.piece_port,
                str(e),
            )
            cfg.piece_port = 0
    if cfg.metrics_port:
        from hfbt.metrics import serve as serve_metrics

        serve_metrics(service.metrics.registry, cfg.metrics_host, cfg.metrics_port)
    stop = _stop_on_signals()
    try:
        service.run(stop)
    finally:
        service.close()


def _node_config(
    tracker: str,
    cache_dir: Path | None,
    state_dir: Path | None,
    auth_token: str | None,
    node_name: str | None,
    swarm: C.SwarmConfig,
    stall_timeout: float,
    fallback_origin: str | None = None,
) -> C.NodeConfig:
    cache = (cache_dir or C.default_hf_cache()).expanduser().resolve()
    return C.NodeConfig(
        tracker=tracker,
        cache_dir=cache,
        state_dir=(state_dir or C.default_state_dir(cache)).expanduser().resolve(),
        auth_token=auth_token,
        node_name=node_name or socket.gethostname(),
        swarm=swarm,
        stall_timeout=stall_timeout,
        fallback_origin=fallback_origin,
    )


FallbackOrigin = Annotated[
    str | None,
    typer.Option(
        "--fallback-origin",
        help="Hub endpoint to fetch a file from when the swarm stalls on it (default: fail the pull).",
        envvar="HFBT_FALLBACK_ORIGIN",
    ),
]
StallTimeout = Annotated[
    float,
    typer.Option(
        "--stall-timeout",
        help="Fail a pull after this many seconds without progress (0 = never).",
        envvar="HFBT_STALL_TIMEOUT",
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="HF cache (default: HF_HUB_CACHE, else HF_HOME/hub).", envvar="HFBT_CACHE_DIR"
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="hfbt's own state (default: .hfbt-<cache name> beside the cache).",
        envvar="HFBT_STATE_DIR",
    ),
]
NodeName = Annotated[
    str | None,
    typer.Option(
        "--node-name", help="Name sent to the tracker (default: hostname).", envvar="HFBT_NODE_NAME"
    ),
]


@app.command()
def agent(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    host: Host = C.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", help="Control API port.", envvar="HFBT_AGENT_PORT")
    ] = C.AGENT_PORT,
    bt_host: BtHost = "0.0.0.0",
    bt_port: BtPort = C.AGENT_BT_PORT,
    shim_port: Annotated[
        int,
        typer.Option(
            "--shim-port",
            help="Port of the HF_ENDPOINT-compatible API (HF_ENDPOINT=http://127.0.0.1:<port>).",
            envvar="HFBT_SHIM_PORT",
        ),
    ] = C.SHIM_PORT,
    origin: Annotated[
        str,
        typer.Option(
            "--origin", help="Hub endpoint the shim forwards what it does not serve to.", envvar="HFBT_ORIGIN"
        ),
    ] = C.DEFAULT_ORIGIN,
    auth_token: AuthToken = None,
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    upload_mbit: Annotated[
        float,
        typer.Option("--upload-mbit", help="Upload cap in Mbit/s (0 = none).", envvar="HFBT_UPLOAD_MBIT"),
    ] = 0.0,
    download_mbit: Annotated[
        float,
        typer.Option(
            "--download-mbit", help="Download cap in Mbit/s (0 = none).", envvar="HFBT_DOWNLOAD_MBIT"
        ),
    ] = 0.0,
    socket_buffer_kb: SocketBufferKb = C.SOCKET_BUFFER_KB,
    lt_setting: LtSettings = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the node daemon: pulls into the HF cache and keeps seeding every completed blob."""
    _setup_logs(log_level)
    from hfbt.agent.daemon import serve

    swarm = C.SwarmConfig(
        listen_host=bt_host,
        listen_port=bt_port,
        upload_mbit=upload_mbit,
        download_mbit=download_mbit,
        socket_buffer_kb=socket_buffer_kb,
        lt_settings=_lt_settings(lt_setting),
    )
    node = _node_config(
        tracker, cache_dir, state_dir, auth_token, node_name, swarm, stall_timeout, fallback_origin
    )
    serve(C.AgentConfig(node=node, host=host, port=port, shim_port=shim_port, origin=origin))


@app.command()
def pull(
    repo_id: Annotated[str, typer.Argument(help="Repo id, e.g. meta-llama/Llama-3.1-8B.")],
    revision: Annotated[str, typer.Option("--revision", help="Branch, tag or commit.")] = "main",
    repo_type: Annotated[str, typer.Option("--repo-type", help="model or dataset.")] = "model",
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Skip files matching this glob (repeatable).")
    ] = None,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    auth_token: AuthToken = None,
    agent: Annotated[
        str,
        typer.Option(
            "--agent",
            help=(
                "Agent URL to hand the pull to; 'auto' tries the default and falls back to an"
                " embedded session; 'none' never uses one."
            ),
            envvar="HFBT_AGENT",
        ),
    ] = "auto",
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Your Hub token: needed for private or gated repos.", envvar="HF_TOKEN"),
    ] = None,
    bt_port: BtPort = 0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after this many seconds.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    log_level: LogLevel = "warning",
) -> None:
    """Pull a revision into the HF cache through the swarm; prints the snapshot path last."""
    _setup_logs(log_level)
    from hfbt.agent.protocol import PullRequest
    from hfbt.progress import PullProgress
    from hfbt.pull import run_pull

    swarm = C.SwarmConfig(listen_port=bt_port)
    node = _node_config(
        tracker, cache_dir, state_dir, auth_token, node_name, swarm, stall_timeout, fallback_origin
    )
    req = PullRequest(
        repo_id, repo_type, revision, tuple(include or ()), tuple(exclude or ()), timeout, token
    )
    agent_url = {"auto": C.DEFAULT_AGENT, "none": None}.get(agent, agent)
    try:
        with PullProgress(f"{repo_id}@{revision}", enabled=not quiet) as emit:
            snap = run_pull(node, req, agent_url, emit, agent_required=agent not in ("auto", "none"))
    except HfbtError as e:
        _fail(e)
    except KeyboardInterrupt:
        typer.echo("hfbt: interrupted; partial data is kept and the next pull resumes it", err=True)
        raise typer.Exit(130) from None
    typer.echo(str(snap))


@app.command("serve-dir")
def serve_dir(
    directory: Annotated[
        Path,
        typer.Argument(help="Folder to serve (one repo with --repo; else models/ and datasets/ below it)."),
    ],
    repo: Annotated[str | None, typer.Option("--repo", help="Repo id the folder is served as.")] = None,
    repo_type: Annotated[str, typer.Option("--repo-type", help="model or dataset.")] = "model",
    host: Host = C.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", help="HTTP port.", envvar="HFBT_ORIGIN_PORT")
    ] = C.ORIGIN_PORT,
    max_mbit: Annotated[
        float,
        typer.Option(
            "--max-mbit",
            help="Pace all downloads to this many Mbit/s (0 = unlimited).",
            envvar="HFBT_ORIGIN_MAX_MBIT",
        ),
    ] = 0.0,
    ref: Annotated[
        list[str] | None,
        typer.Option(
            "--ref", help="Another branch/tag/PR name for the current commit, e.g. refs/pr/1 (repeatable)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Serve the repos as private: readable only with this Bearer token.",
            envvar="HFBT_ORIGIN_TOKEN",
        ),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Serve a folder as a Hugging Face Hub-compatible repo (an origin for the seed, tests and demos)."""
    _setup_logs(log_level)
    from hfbt.hub.servedir import serve

    if not directory.is_dir():
        _fail(HfbtError("BadRequest", f"{directory} is not a folder"))
    serve(
        C.ServeDirConfig(
            directory=directory,
            repo=repo,
            repo_type=repo_type,
            host=host,
            port=port,
            max_mbit=max_mbit,
            token=token,
            refs=tuple(ref or ()),
        )
    )


@app.command()
def demo(
    size_mb: Annotated[int, typer.Option("--size-mb", help="Approximate size of the synthetic model.")] = 300,
    nodes: Annotated[int, typer.Option("--nodes", help="Node agents to start.")] = 3,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Keep everything here (default: a temp dir, removed).")
    ] = None,
) -> None:
    """One-machine, no-internet demo: origin + tracker + seed + node agents, three pulls at once."""
    from hfbt.demo import run_demo

    try:
        run_demo(size_mb=size_mb, nodes=nodes, workdir=workdir)
    except HfbtError as e:
        _fail(e)


AgentOpt = Annotated[
    str,
    typer.Option(
        "--agent",
        help="Agent URL; 'auto' uses the default one if it serves this cache; 'none' never uses one.",
        envvar="HFBT_AGENT",
    ),
]
EXIT_BUSY = 75  # EX_TEMPFAIL: another prefetch/gc holds the node's lock; the next timer tick retries


def _agent_url(agent: str) -> str | None:
    return {"auto": C.DEFAULT_AGENT, "none": None}.get(agent, agent)


def _fail_busy_aware(e: HfbtError) -> None:
    if e.code == "Busy":
        typer.echo(f"hfbt: {e.message}", err=True)
        raise typer.Exit(EXIT_BUSY)
    _fail(e)


@app.command()
def prefetch(
    config: Annotated[
        Path, typer.Option("--config", help="TOML file listing the repos.", envvar="HFBT_PREFETCH_CONFIG")
    ],
    cron: Annotated[
        str | None,
        typer.Option("--cron", help="Print the crontab line running this prefetch on a schedule, and exit."),
    ] = None,
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    auth_token: AuthToken = None,
    agent: AgentOpt = "auto",
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Hub token for private or gated repos.", envvar="HF_TOKEN"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up on one repo after this many seconds.")
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Pull the repos listed in a TOML file (cron/systemd timer); skips complete ones, records pins."""
    _setup_logs(log_level)
    from hfbt import prefetch as P
    from hfbt.nodelock import maintenance_lock

    try:
        spec = P.load(config)
        if cron:
            argv = [*P.hfbt_argv(), "prefetch", "--config", str(config.expanduser().resolve())]
            if tracker != C.DEFAULT_TRACKER and not spec.tracker:
                argv += ["--tracker", tracker]
            for flag, value in (("--cache-dir", cache_dir), ("--state-dir", state_dir)):
                if value is not None:
                    argv += [flag, str(value.expanduser().resolve())]
            if agent != "auto":
                argv += ["--agent", agent]
            if node_name:
                argv += ["--node-name", node_name]
            typer.echo(P.cron_line(cron, argv))  # tokens stay in the environment, never in a crontab
            return
        swarm = C.SwarmConfig(listen_port=0)
        node = _node_config(
            spec.tracker or tracker,
            cache_dir,
            state_dir,
            auth_token,
            node_name,
            swarm,
            stall_timeout,
            fallback_origin,
        )
        run = P.PrefetchRun(node, _agent_url(agent), agent not in ("auto", "none"), timeout, token)
        with maintenance_lock(node.state_dir, "prefetch"):
            outcomes = P.run(spec, run)
    except HfbtError as e:
        _fail_busy_aware(e)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        typer.echo(f"hfbt: prefetch failed: {o.entry.label}: {o.error} [{o.code}]", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def gc(
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            help="Cache budget, e.g. 500G (K/M/G/T = powers of 1024; KB/MB/GB/TB = of 1000).",
            envvar="HFBT_GC_MAX_SIZE",
        ),
    ] = None,
    keep_revisions: Annotated[
        int | None,
        typer.Option(
            "--keep-revisions",
            help="Keep at most this many revisions per repo (the most recently used).",
            envvar="HFBT_GC_KEEP_REVISIONS",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would be evicted.")] = False,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    agent: AgentOpt = "auto",
    log_level: LogLevel = "warning",
) -> None:
    """Evict least recently used revisions until the cache fits; pinned revisions always stay."""
    _setup_logs(log_level)
    from rich.table import Table

    from hfbt import gc as G
    from hfbt.sizes import human, parse_size

    node = _node_config(C.DEFAULT_TRACKER, cache_dir, state_dir, None, None, C.SwarmConfig(), 0)
    try:
        budget = parse_size(max_size) if max_size is not None else None
        required = agent not in ("auto", "none")
        result = G.run_gc(node, budget, keep_revisions, dry_run, _agent_url(agent), required)
    except HfbtError as e:
        _fail_busy_aware(e)
    plan = result.plan
    console = _console()
    if plan.evictions:
        table = Table(title="would evict" if dry_run else "evicted", title_justify="left")
        for col in ("revision", "reason", "last used"):
            table.add_column(col)
        for ev in plan.evictions:
            table.add_row(ev.revision.label, ev.reason, _when(ev.revision.last_access))
        console.print(table)
    verb = "would free" if dry_run else "freed"
    budget_note = f" (budget {human(plan.max_size)})" if plan.max_size is not None else ""
    typer.echo(
        f"cache {human(plan.size_before)} → {human(plan.size_after)}{budget_note}:"
        f" {len(plan.evictions)} revision(s), {len(plan.remove_blobs)} blob(s), {verb} {human(plan.freed)}"
        + (f"; pinned {len(plan.pinned)}" if plan.pinned else "")
        + (f"; agent stopped seeding {result.stopped}, moved {result.moved}" if result.agent else "")
    )
    if plan.over_budget:
        typer.echo(
            "hfbt: warning: still over budget: what remains is pinned, within --keep-revisions,"
            " or being downloaded",
            err=True,
        )


def _console():
    # Piped output (cron mail, `| less`) would be cut at rich's default 80 columns: repo ids get long.
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@app.command()
def status(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    agent: AgentOpt = "auto",
    auth_token: AuthToken = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What this node's agent holds (repos, revisions, rates, peers) and what the tracker sees.

    --agent none / --tracker none leave that half out.
    """
    import json

    from hfbt.status import collect, render

    report = collect(_agent_url(agent), None if tracker == "none" else tracker, auth_token)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        render(report, _console())
    if report["node"] is None and report["tracker"] is None:
        raise typer.Exit(1)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
