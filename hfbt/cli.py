"""The `hfbt` command: typer signatures, and per command a config built from them and one call.

Flags, their HFBT_* environment variables, help texts and defaults live in hfbt.config; option() turns
one of its Settings into a typer option. Hugging Face's own variables (HF_TOKEN, HF_HOME, HF_HUB_CACHE)
are honoured where the Hub client would honour them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

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

EXIT_BUSY = 75  # EX_TEMPFAIL: another prefetch/gc holds the node's lock; the next timer tick retries


def option(s: C.Setting, **kw: Any) -> Any:
    """The typer option for a Setting of hfbt.config (its flag, environment variable and help)."""
    names = (s.flag, s.short) if s.short else (s.flag,)
    return typer.Option(*names, help=s.help, envvar=s.env, **kw)


# Options several commands share (each command still picks its own default).
Host = Annotated[str, option(C.OPT_HOST)]
TrackerUrl = Annotated[str, option(C.OPT_TRACKER)]
LogLevel = Annotated[str, option(C.OPT_LOG_LEVEL)]
RepoType = Annotated[str, option(C.OPT_REPO_TYPE)]
BtHost = Annotated[str, option(C.OPT_BT_HOST)]
Linger = Annotated[float, option(C.OPT_LINGER)]
DiskIo = Annotated[str, option(C.OPT_DISK_IO)]
BtPort = Annotated[int, option(C.OPT_BT_PORT)]
UploadMbit = Annotated[float, option(C.OPT_UPLOAD_MBIT)]
Zone = Annotated[str, option(C.OPT_ZONE)]
SocketBufferKb = Annotated[int, option(C.OPT_SOCKET_BUFFER_KB, min=0)]
LtSettings = Annotated[list[str] | None, option(C.OPT_LT_SETTING)]
CacheDir = Annotated[Path | None, option(C.OPT_CACHE_DIR)]
StateDir = Annotated[Path | None, option(C.OPT_STATE_DIR)]
NodeName = Annotated[str | None, option(C.OPT_NODE_NAME)]
StallTimeout = Annotated[float, option(C.OPT_STALL_TIMEOUT)]
FallbackOrigin = Annotated[str | None, option(C.OPT_FALLBACK_ORIGIN)]
AgentOpt = Annotated[str, option(C.OPT_AGENT)]


def _fail(e: HfbtError) -> NoReturn:
    typer.echo(f"hfbt: error: {e.message} [{e.code}]", err=True)
    raise typer.Exit(1)


def _fail_busy_aware(e: HfbtError) -> NoReturn:
    if e.code == "Busy":
        typer.echo(f"hfbt: {e.message}", err=True)
        raise typer.Exit(EXIT_BUSY)
    _fail(e)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _setup_logs(level: str) -> None:
    from hfbt import log

    log.setup(level)


def _secret(secret: C.Secret) -> str | None:
    try:
        return C.read_secret(secret)
    except HfbtError as e:
        _fail(e)


def _disk_io(name: str) -> str:
    try:
        return C.check_disk_io(name)
    except HfbtError as e:
        _fail(e)


def _zone(zone: str) -> str:
    try:
        return C.check_zone(zone)
    except HfbtError as e:
        _fail(e)


def _lt_settings(items: list[str] | None) -> dict[str, int | bool | str]:
    try:
        return C.parse_lt_settings(items)
    except HfbtError as e:
        _fail(e)


def _console():
    # Piped output (cron mail, `| less`) would be cut at rich's default 80 columns: repo ids get long.
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


tracker_app = typer.Typer(
    help="Run the private tracker, revision registry and mirror scheduler; `node` manages node identities.",
    no_args_is_help=False,
)
app.add_typer(tracker_app, name="tracker")
node_app = typer.Typer(
    help="Node identities (needs HFBT_OPERATOR_TOKEN): each node's own credential, revocable.",
    no_args_is_help=True,
)
tracker_app.add_typer(node_app, name="node")


@tracker_app.callback(invoke_without_command=True)
def tracker(
    ctx: typer.Context,
    db: Annotated[str, option(C.OPT_DB)] = str(C.TRACKER_DB),
    peer_store: Annotated[str, option(C.OPT_PEER_STORE)] = C.TrackerConfig.peer_store,
    host: Host = C.DEFAULT_HOST,
    port: Annotated[int, option(C.OPT_TRACKER_PORT)] = C.TRACKER_PORT,
    public_url: Annotated[str | None, option(C.OPT_PUBLIC_URL)] = None,
    origin: Annotated[str, option(C.OPT_TRACKER_ORIGIN)] = C.DEFAULT_ORIGIN,
    ref_ttl: Annotated[float, option(C.OPT_REF_TTL)] = C.REF_TTL_S,
    announce_interval: Annotated[int, option(C.OPT_ANNOUNCE_INTERVAL, min=1)] = C.ANNOUNCE_INTERVAL_S,
    seeder_interval: Annotated[int, option(C.OPT_SEEDER_INTERVAL, min=0)] = C.TrackerConfig.seeder_interval,
    handout: Annotated[str, option(C.OPT_HANDOUT)] = C.TrackerConfig.handout,
    zone_gateways: Annotated[int, option(C.OPT_ZONE_GATEWAYS)] = C.TrackerConfig.zone_gateways,
    ticket_key: Annotated[Path | None, option(C.OPT_TICKET_KEY)] = None,
    ticket_ttl: Annotated[float, option(C.OPT_TICKET_TTL, min=5.0)] = C.TICKET_TTL_S,
    trust_announce_ip: Annotated[bool, option(C.OPT_TRUST_ANNOUNCE_IP)] = False,
    log_level: LogLevel = C.LOG_LEVEL,
) -> None:
    """Run the private tracker, revision registry and mirror scheduler."""
    if ctx.invoked_subcommand is not None:
        return
    _setup_logs(log_level)
    from tracker.handout import POLICIES
    from tracker.server import serve
    from tracker.unavailable import StoreUnavailable

    if handout not in POLICIES:
        _fail(HfbtError("BadRequest", f"--handout must be one of {', '.join(POLICIES)}, not {handout!r}"))
    cfg = C.TrackerConfig(
        db=db,
        host=host,
        port=port,
        public_url=public_url,
        origin=origin,
        operator_token=_secret(C.SECRET_OPERATOR_TOKEN),
        seed_token=_secret(C.SECRET_SEED_TOKEN),
        ticket_key=ticket_key,
        ticket_ttl=ticket_ttl,
        trust_announce_ip=trust_announce_ip,
        ref_ttl=ref_ttl,
        announce_interval=announce_interval,
        seeder_interval=seeder_interval,
        peer_store=peer_store,
        redis_password=_secret(C.SECRET_REDIS_PASSWORD),
        pg_password=_secret(C.SECRET_PG_PASSWORD),
        handout=handout,
        zone_gateways=zone_gateways,
    )
    try:
        serve(cfg)
    except StoreUnavailable as e:
        _fail(HfbtError("Unavailable", str(e)))
    except (HfbtError, ValueError) as e:
        _fail(e if isinstance(e, HfbtError) else HfbtError("BadConfig", str(e)))


def _operator(tracker: str) -> Any:
    from hfbt.operator import OperatorClient

    token = _secret(C.SECRET_OPERATOR_TOKEN)
    if not token:
        _fail(HfbtError("Unauthorized", f"set {C.SECRET_OPERATOR_TOKEN.env} to manage node identities"))
    return OperatorClient(tracker, token)


@node_app.command("add")
def node_add(name: str, tracker: TrackerUrl = C.DEFAULT_TRACKER) -> None:
    """Issue NAME's credential and print it once (give it to the node as HFBT_NODE_TOKEN)."""
    try:
        typer.echo(_operator(tracker).add_node(name))
    except HfbtError as e:
        _fail(e)


@node_app.command("revoke")
def node_revoke(name: str, tracker: TrackerUrl = C.DEFAULT_TRACKER) -> None:
    """Revoke NAME's credential: its API calls and announces stop at once (other replicas: within
    seconds), its tickets at the seeds' piece servers within --ticket-ttl."""
    try:
        _operator(tracker).revoke_node(name)
    except HfbtError as e:
        _fail(e)
    typer.echo(f"revoked {name}")


@node_app.command("list")
def node_list(tracker: TrackerUrl = C.DEFAULT_TRACKER) -> None:
    """Every node identity, live or revoked."""
    try:
        nodes = _operator(tracker).list_nodes()
    except HfbtError as e:
        _fail(e)
    for n in nodes:
        typer.echo(f"{n['name']}\t{'revoked' if n['revoked'] else 'live'}")


@app.command()
def seed(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    origin: Annotated[str, option(C.OPT_SEED_ORIGIN)] = C.DEFAULT_ORIGIN,
    data_dir: Annotated[Path, option(C.OPT_DATA_DIR)] = C.SEED_DATA_DIR,
    token: Annotated[str | None, option(C.OPT_SEED_TOKEN)] = None,
    seed_id: Annotated[str | None, option(C.OPT_SEED_ID)] = None,
    bt_host: BtHost = C.SwarmConfig.listen_host,
    bt_port: BtPort = C.SEED_BT_PORT,
    upload_mbit: UploadMbit = C.SwarmConfig.upload_mbit,
    parallel_files: Annotated[int, option(C.OPT_PARALLEL_FILES)] = C.SeedConfig.parallel_files,
    metrics_port: Annotated[int, option(C.OPT_METRICS_PORT)] = C.METRICS_PORT_OFF,
    metrics_host: Annotated[str, option(C.OPT_METRICS_HOST)] = C.METRICS_HOST,
    piece_port: Annotated[int, option(C.OPT_PIECE_PORT)] = C.SEED_PIECE_PORT,
    piece_host: Annotated[str, option(C.OPT_PIECE_HOST)] = C.PIECE_HOST,
    piece_url: Annotated[str | None, option(C.OPT_PIECE_URL)] = None,
    super_seed: Annotated[bool, option(C.OPT_SUPER_SEED)] = C.SwarmConfig.super_seed,
    zone: Zone = C.SwarmConfig.zone,
    socket_buffer_kb: SocketBufferKb = C.SOCKET_BUFFER_KB,
    lt_setting: LtSettings = None,
    disk_io: DiskIo = C.SwarmConfig.disk_io,
    log_level: LogLevel = C.LOG_LEVEL,
) -> None:
    """Mirror revisions from the origin on demand and seed their torrents."""
    _setup_logs(log_level)
    from hfbt.seed.daemon import serve

    swarm = C.SwarmConfig(
        listen_host=bt_host,
        listen_port=bt_port,
        upload_mbit=upload_mbit,
        super_seed=super_seed,
        zone=_zone(zone),
        socket_buffer_kb=socket_buffer_kb,
        lt_settings=_lt_settings(lt_setting),
        disk_io=_disk_io(disk_io),
    )
    cfg = C.SeedConfig(
        tracker=tracker,
        data_dir=data_dir,
        origin=origin,
        token=token,
        seed_token=_secret(C.SECRET_SEED_TOKEN),
        seed_id=seed_id,
        swarm=swarm,
        parallel_files=parallel_files,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        piece_host=piece_host,
        piece_port=piece_port,
        piece_url=piece_url,
    )
    serve(cfg, _stop_on_signals())


@app.command()
def agent(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    host: Host = C.DEFAULT_HOST,
    port: Annotated[int, option(C.OPT_AGENT_PORT)] = C.AGENT_PORT,
    bt_host: BtHost = C.SwarmConfig.listen_host,
    bt_port: BtPort = C.AGENT_BT_PORT,
    shim_port: Annotated[int, option(C.OPT_SHIM_PORT)] = C.SHIM_PORT,
    origin: Annotated[str, option(C.OPT_SHIM_ORIGIN)] = C.DEFAULT_ORIGIN,
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    upload_mbit: UploadMbit = C.SwarmConfig.upload_mbit,
    download_mbit: Annotated[float, option(C.OPT_DOWNLOAD_MBIT)] = C.SwarmConfig.download_mbit,
    zone: Zone = C.SwarmConfig.zone,
    socket_buffer_kb: SocketBufferKb = C.SOCKET_BUFFER_KB,
    lt_setting: LtSettings = None,
    disk_io: DiskIo = C.SwarmConfig.disk_io,
    log_level: LogLevel = C.LOG_LEVEL,
) -> None:
    """Run the node daemon: pulls into the HF cache and keeps seeding every completed blob."""
    _setup_logs(log_level)
    from hfbt.agent.daemon import serve

    swarm = C.SwarmConfig(
        listen_host=bt_host,
        listen_port=bt_port,
        upload_mbit=upload_mbit,
        download_mbit=download_mbit,
        zone=_zone(zone),
        socket_buffer_kb=socket_buffer_kb,
        lt_settings=_lt_settings(lt_setting),
        disk_io=_disk_io(disk_io),
    )
    node = C.node_config(
        tracker,
        cache_dir,
        state_dir,
        node_token=_secret(C.SECRET_NODE_TOKEN),
        node_name=node_name,
        swarm=swarm,
        stall_timeout=stall_timeout,
        fallback_origin=fallback_origin,
    )
    serve(C.AgentConfig(node=node, host=host, port=port, shim_port=shim_port, origin=origin))


@app.command()
def pull(
    repo_id: Annotated[str, typer.Argument(help="Repo id, e.g. meta-llama/Llama-3.1-8B.")],
    revision: Annotated[str, option(C.OPT_REVISION)] = C.DEFAULT_REVISION,
    repo_type: RepoType = C.DEFAULT_REPO_TYPE,
    include: Annotated[list[str] | None, option(C.OPT_INCLUDE)] = None,
    exclude: Annotated[list[str] | None, option(C.OPT_EXCLUDE)] = None,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    agent: Annotated[str, option(C.OPT_PULL_AGENT)] = C.AGENT_AUTO,
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    token: Annotated[str | None, option(C.OPT_PULL_TOKEN)] = None,
    bt_port: BtPort = C.SwarmConfig.listen_port,
    bt_host: BtHost = C.SwarmConfig.listen_host,
    zone: Zone = C.SwarmConfig.zone,
    timeout: Annotated[float | None, option(C.OPT_PULL_TIMEOUT)] = None,
    linger: Linger = C.LINGER_S,
    disk_io: DiskIo = C.SwarmConfig.disk_io,
    quiet: Annotated[bool, option(C.OPT_QUIET)] = False,
    log_level: LogLevel = C.QUIET_LOG_LEVEL,
) -> None:
    """Pull a revision into the HF cache through the swarm; prints the snapshot path last."""
    _setup_logs(log_level)
    from hfbt.agent.protocol import PullRequest
    from hfbt.progress import PullProgress
    from hfbt.pull import run_pull

    node = C.node_config(
        tracker,
        cache_dir,
        state_dir,
        node_token=_secret(C.SECRET_NODE_TOKEN),
        node_name=node_name,
        swarm=C.SwarmConfig(
            listen_port=bt_port, listen_host=bt_host, zone=_zone(zone), disk_io=_disk_io(disk_io)
        ),
        stall_timeout=stall_timeout,
        fallback_origin=fallback_origin,
    )
    req = PullRequest(
        repo_id, repo_type, revision, tuple(include or ()), tuple(exclude or ()), timeout, token
    )
    agent_url, required = C.agent_choice(agent)
    try:
        with PullProgress(f"{repo_id}@{revision}", enabled=not quiet) as emit:
            snap = run_pull(node, req, agent_url, emit, agent_required=required, linger_s=linger)
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
    repo: Annotated[str | None, option(C.OPT_REPO)] = None,
    repo_type: RepoType = C.DEFAULT_REPO_TYPE,
    host: Host = C.DEFAULT_HOST,
    port: Annotated[int, option(C.OPT_ORIGIN_PORT)] = C.ORIGIN_PORT,
    max_mbit: Annotated[float, option(C.OPT_ORIGIN_MAX_MBIT)] = C.ServeDirConfig.max_mbit,
    ref: Annotated[list[str] | None, option(C.OPT_REF)] = None,
    log_level: LogLevel = C.LOG_LEVEL,
) -> None:
    """Serve a folder as a Hugging Face Hub-compatible repo (an origin for the seed, tests and demos).
    HFBT_ORIGIN_TOKEN (env or _FILE) serves every repo as private."""
    _setup_logs(log_level)
    from hfbt.hub.servedir import serve

    if not directory.is_dir():
        _fail(HfbtError("BadRequest", f"{directory} is not a folder"))
    cfg = C.ServeDirConfig(
        directory=directory,
        repo=repo,
        repo_type=repo_type,
        host=host,
        port=port,
        max_mbit=max_mbit,
        token=_secret(C.SECRET_ORIGIN_TOKEN),
        refs=tuple(ref or ()),
    )
    serve(cfg)


@app.command()
def demo(
    size_mb: Annotated[int, option(C.OPT_DEMO_SIZE_MB)] = C.DEMO_SIZE_MB,
    nodes: Annotated[int, option(C.OPT_DEMO_NODES)] = C.DEMO_NODES,
    workdir: Annotated[Path | None, option(C.OPT_DEMO_WORKDIR)] = None,
) -> None:
    """One-machine, no-internet demo: origin + tracker + seed + node agents, three pulls at once."""
    from hfbt.demo import run_demo

    try:
        run_demo(size_mb=size_mb, nodes=nodes, workdir=workdir)
    except HfbtError as e:
        _fail(e)


@app.command()
def prefetch(
    config: Annotated[Path, option(C.OPT_PREFETCH_CONFIG)],
    cron: Annotated[str | None, option(C.OPT_CRON)] = None,
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    agent: AgentOpt = C.AGENT_AUTO,
    node_name: NodeName = None,
    stall_timeout: StallTimeout = C.STALL_TIMEOUT_S,
    fallback_origin: FallbackOrigin = None,
    token: Annotated[str | None, option(C.OPT_PREFETCH_TOKEN)] = None,
    timeout: Annotated[float | None, option(C.OPT_PREFETCH_TIMEOUT)] = None,
    linger: Linger = C.LINGER_S,
    disk_io: DiskIo = C.SwarmConfig.disk_io,
    log_level: LogLevel = C.LOG_LEVEL,
) -> None:
    """Pull the repos listed in a TOML file (cron/systemd timer); skips complete ones, records pins."""
    _setup_logs(log_level)
    from hfbt import prefetch as P
    from hfbt.nodelock import maintenance_lock

    try:
        spec = P.load(config)
        if cron:
            argv = P.cron_argv(config, spec, tracker, cache_dir, state_dir, agent, node_name)
            typer.echo(P.cron_line(cron, argv))
            return
        node = C.node_config(
            spec.tracker or tracker,
            cache_dir,
            state_dir,
            node_token=_secret(C.SECRET_NODE_TOKEN),
            node_name=node_name,
            swarm=C.SwarmConfig(listen_port=0, disk_io=_disk_io(disk_io)),
            stall_timeout=stall_timeout,
            fallback_origin=fallback_origin,
        )
        agent_url, required = C.agent_choice(agent)
        run = P.PrefetchRun(node, agent_url, required, timeout, token, linger_s=linger)
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
    max_size: Annotated[str | None, option(C.OPT_GC_MAX_SIZE)] = None,
    keep_revisions: Annotated[int | None, option(C.OPT_GC_KEEP_REVISIONS)] = None,
    dry_run: Annotated[bool, option(C.OPT_DRY_RUN)] = False,
    cache_dir: CacheDir = None,
    state_dir: StateDir = None,
    agent: AgentOpt = C.AGENT_AUTO,
    log_level: LogLevel = C.QUIET_LOG_LEVEL,
) -> None:
    """Evict least recently used revisions until the cache fits; pinned revisions always stay."""
    _setup_logs(log_level)
    from hfbt import gc as G
    from hfbt.sizes import parse_size

    node = C.node_config(C.DEFAULT_TRACKER, cache_dir, state_dir)
    agent_url, required = C.agent_choice(agent)
    try:
        budget = parse_size(max_size) if max_size is not None else None
        result = G.run_gc(node, budget, keep_revisions, dry_run, agent_url, required)
    except HfbtError as e:
        _fail_busy_aware(e)
    G.render(result, _console())
    if result.plan.over_budget:
        typer.echo(
            "hfbt: warning: still over budget: what remains is pinned, within --keep-revisions,"
            " or being downloaded",
            err=True,
        )


@app.command()
def status(
    tracker: TrackerUrl = C.DEFAULT_TRACKER,
    agent: AgentOpt = C.AGENT_AUTO,
    as_json: Annotated[bool, option(C.OPT_JSON)] = False,
) -> None:
    """What this node's agent holds (repos, revisions, rates, peers) and what the tracker sees.

    --agent none / --tracker none leave that half out.
    """
    import json

    from hfbt.status import collect, render

    agent_url, _ = C.agent_choice(agent)
    report = collect(agent_url, None if tracker == "none" else tracker, _secret(C.SECRET_OPERATOR_TOKEN))
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
