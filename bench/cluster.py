"""An emulated cluster: hfbt (cold, warm) vs plain HTTP vs the Kumar–Ross bound.

    python -m bench.cluster --nodes 8 --origin-mbit 50 --node-mbit 100 --size-mb 256 --mode all
    python -m bench.cluster --series            # the default series: N = 2, 4, 8, 12, every mode

Each endpoint (origin, tracker, seed, node agents) is a real `python -m hfbt ...` process in its own
network namespace on a private bridge, its link shaped with tc HTB (see bench/net.py). All nodes pull
at the same moment; the run reports the time until the last node completes, origin bytes, seed upload
bytes, the bound T*, wall / T* and the machine's CPU use (a CPU-saturated run is flagged: it measures
the 2 cores, not the network). One JSON line per run goes to stdout and to bench/results/cluster.jsonl.

Without root or network namespaces it says so and stops, unless --loopback is given: then everything
runs on 127.0.0.1 with no network shaping at all; only the programs' own rate limits apply (origin
`--max-mbit B`, libtorrent `--upload-mbit/--download-mbit U`), which is not the same as a link.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench import metrics, net
from hfbt import __version__
from hfbt.cluster import LocalCluster, free_port
from hfbt.config import (
    AGENT_BT_PORT,
    AGENT_PORT,
    LINGER_S,
    ORIGIN_PORT,
    SEED_BT_PORT,
    SEED_PIECE_PORT,
    TRACKER_PORT,
)
from hfbt.errors import HfbtError
from hfbt.synth import make_model_repo

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SERIES = (2, 4, 8, 12)
REPO_ID = "bench/synth"
PREMIRROR_MBIT = 10_000  # warm runs: the seed mirrors before the clock starts, over an unshaped link


class BenchError(RuntimeError):
    pass


@dataclass
class Options:
    nodes: int
    origin_mbit: float = 50.0
    node_mbit: float = 100.0
    size_mb: int = 256
    loopback: bool = False
    mtu: int = 1500
    label: str = ""
    timeout: float | None = None
    data_dir: Path = Path(tempfile.gettempdir()) / "hfbt-bench-data"
    results: Path | None = RESULTS / "cluster.jsonl"
    keep: bool = False
    seed_args: list[str] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)
    tracker_args: list[str] = field(default_factory=list)
    quiet: bool = False
    trace: str | None = None
    zones: int = 1  # 2: two zones joined by a link of zone_mbit (bench/net.py)
    zone_mbit: float = 0.0  # 0: B/2


def log(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- the synthetic repo --------------------------------------------------------------------------


def ensure_repo(data_dir: Path, size_mb: int) -> tuple[Path, int]:
    """Two safetensors shards + small files, ≈ size_mb MiB in all (deterministic, reused across runs)."""
    dest = data_dir / f"synth-{size_mb}"
    marker = dest / ".sizes.json"
    if marker.exists():
        sizes = json.loads(marker.read_text())
    else:
        if dest.exists():
            shutil.rmtree(dest)
        # make_model_repo writes shards of shard_mb and 0.9 × shard_mb MiB
        sizes = make_model_repo(dest, shard_mb=size_mb / 1.9)
        marker.write_text(json.dumps(sizes))
    return dest, sum(sizes.values())


# --- where each process runs ---------------------------------------------------------------------


class Deployment:
    """Addresses and command prefixes of the endpoints, for netns or loopback."""

    def __init__(self, opts: Options, network: net.Network | None) -> None:
        self.opts = opts
        self.net = network
        names = ["origin", "tracker", "seed"] + [f"n{i:02d}" for i in range(1, opts.nodes + 1)]
        self.ip = {n: (network.endpoints[n].ip if network else "127.0.0.1") for n in names}
        fixed = {"origin": ORIGIN_PORT, "tracker": TRACKER_PORT}
        self.port = {n: (fixed.get(n, 0) if network else free_port()) for n in names}
        self.bt_port = {n: (AGENT_BT_PORT if network else free_port()) for n in names}
        self.bt_port["seed"] = SEED_BT_PORT if network else free_port()
        self.nodes = names[3:]

    def prefix(self, name: str) -> tuple[str, ...]:
        return tuple(self.net.endpoints[name].prefix()) if self.net else ()

    def url(self, name: str) -> str:
        return f"http://{self.ip[name]}:{self.port[name]}"

    def agent_url(self, name: str) -> str:
        # the control API stays on the node's own loopback
        return f"http://127.0.0.1:{self.port[name] or AGENT_PORT}"

    def zone_env(self, name: str) -> dict[str, str]:
        """HFBT_ZONE for an endpoint's hfbt processes when the network has zones."""
        if self.net is None or self.net.zones == 1:
            return {}
        return {"HFBT_ZONE": self.net.endpoints[name].zone}

    def helper(self, name: str, *args: str, stderr: Path | None = None) -> subprocess.Popen:
        err = open(stderr, "ab") if stderr else subprocess.PIPE  # noqa: SIM115 - the child owns it
        return subprocess.Popen(
            [*self.prefix(name), sys.executable, "-m", "bench.node", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "HF_HUB_DISABLE_TELEMETRY": "1",
                **self.zone_env(name),
            },
            start_new_session=True,
        )

    def call(self, name: str, *args: str, timeout: float = 120) -> str:
        p = self.helper(name, *args)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(p)
            raise BenchError(f"helper {args[0]} in {name} timed out") from None
        if p.returncode != 0:
            raise BenchError(f"helper {' '.join(args)} in {name} failed: {err.strip()[-500:] or out}")
        return out

    def get_json(self, name: str, url: str, method: str = "GET") -> dict:
        return json.loads(self.call(name, "get", url, "--method", method))


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass


class Helpers:
    """The per-node helpers of one run: started together, released together ("go"), read in threads."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.events: queue.Queue = queue.Queue()

    def start(self, dep: Deployment, name: str, *args: str) -> None:
        p = dep.helper(name, *args, stderr=self.logs / f"helper-{name}.log")
        self.procs[name] = p
        threading.Thread(target=self._read, args=(name, p), daemon=True).start()

    def _read(self, name: str, p: subprocess.Popen) -> None:
        assert p.stdout
        for line in p.stdout:
            try:
                self.events.put((name, json.loads(line)))
            except ValueError:
                continue
        self.events.put((name, {"event": "exit", "code": p.wait()}))

    def wait_all(self, event: str, timeout: float) -> dict[str, dict]:
        got: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(self.procs) - set(got))
                raise BenchError(f"timed out waiting for {event!r} from {', '.join(missing)}")
            try:
                name, ev = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if name in got:
                continue
            if ev.get("event") == event:
                got[name] = ev
            elif ev.get("event") in ("error", "exit"):
                log = self.logs / f"helper-{name}.log"
                err = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise BenchError(f"{name}: {ev.get('message') or ev} {err}")
        return got

    def send(self, line: str) -> None:
        for p in self.procs.values():
            try:
                assert p.stdin
                p.stdin.write(line + "\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                if p.stdin:
                    p.stdin.close()
            except OSError:
                pass
        for p in self.procs.values():
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                _kill(p)
        self.procs.clear()


# --- one run -------------------------------------------------------------------------------------


def run_once(opts: Options, mode: str) -> dict:
    repo_dir, size_bytes = ensure_repo(opts.data_dir, opts.size_mb)
    workdir = Path(tempfile.mkdtemp(prefix=f"{net.PREFIX}{os.getpid()}-", dir=tempfile.gettempdir()))
    network = None
    if not opts.loopback:
        zone_mbit = opts.zone_mbit or opts.origin_mbit / 2
        network = net.Network(opts.origin_mbit, opts.node_mbit, opts.nodes, opts.mtu, opts.zones, zone_mbit)
    lc = LocalCluster(workdir, env={"HFBT_LOG_LEVEL": "info"})
    helpers = Helpers(workdir / "logs")
    expected_http = opts.nodes * size_bytes * 8 / (opts.origin_mbit * 1e6)
    timeout = opts.timeout or max(180.0, 3 * expected_http)
    try:
        if network:
            log(opts, f"creating {len(network.endpoints) + 1} namespaces ({network.tag}-*)")
            network.create()
        dep = Deployment(opts, network)
        rec = _run(opts, mode, dep, lc, helpers, repo_dir, size_bytes, timeout)
    except BaseException:
        if opts.keep or not opts.quiet:
            print(f"[bench] logs in {workdir / 'logs'}", file=sys.stderr)
            for f in sorted((workdir / "logs").glob("*.log")):
                tail = f.read_text(errors="replace").splitlines()[-8:]
                print(f"--- {f.name}\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        helpers.stop()
        lc.stop(timeout=5)
        if network:
            network.destroy()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return rec


def _run(
    opts: Options,
    mode: str,
    dep: Deployment,
    lc: LocalCluster,
    helpers: Helpers,
    repo_dir: Path,
    size_bytes: int,
    timeout: float,
) -> dict:
    wd = lc.workdir
    origin_url = dep.url("origin")
    tracker_url = dep.url("tracker")
    loop = opts.loopback

    # origin: in loopback the only emulated link is its own pacing (off for warm: it mirrors before t0)
    args = ["serve-dir", str(repo_dir), "--repo", REPO_ID, "--host", dep.ip["origin"]]
    args += ["--port", str(dep.port["origin"])]
    if loop and mode != "warm":
        args += ["--max-mbit", str(opts.origin_mbit)]
    lc.spawn("origin", *args, prefix=dep.prefix("origin"))
    dep.call("origin", "wait", f"{origin_url}/_hfbt/stats")
    # serve-dir hashes the files on first use; the Hub has its hashes already: not part of the run
    dep.call("origin", "get", f"{origin_url}/api/models/{REPO_ID}/tree/main?recursive=true", timeout=300)

    if mode == "http":
        for n in dep.nodes:
            helpers.start(
                dep, n, "http", "--endpoint", origin_url, "--repo", REPO_ID, "--cache-dir", str(wd / n / "hf")
            )
    else:
        lc.spawn(
            "tracker",
            "tracker", "--host", dep.ip["tracker"], "--port", str(dep.port["tracker"]),
            "--db", str(wd / "tracker.db"), "--ref-ttl", "3600", *opts.tracker_args,
            prefix=dep.prefix("tracker"),
        )  # fmt: skip
        dep.call("tracker", "wait", f"{tracker_url}/healthz")
        seed_args = ["--bt-host", dep.ip["seed"], "--bt-port", str(dep.bt_port["seed"])]
        if loop:
            # The piece server (HTTP) is not under libtorrent's rate limit: without shaping it is off.
            seed_args += ["--upload-mbit", str(opts.node_mbit), "--piece-port", "0"]
        else:
            seed_args += ["--piece-host", dep.ip["seed"], "--piece-port", str(SEED_PIECE_PORT)]
        seed = lc.spawn(
            "seed",
            "seed", "--tracker", tracker_url, "--origin", origin_url, "--data-dir", str(wd / "seed"),
            "--seed-id", "seed", *seed_args, *opts.seed_args,
            prefix=dep.prefix("seed"), env=dep.zone_env("seed"),
        )  # fmt: skip
        lc._wait_log(seed, "event=seed_registered")
        if mode in ("warm", "embedded"):
            _premirror(opts, dep, tracker_url)
    if mode == "embedded":
        for n in dep.nodes:
            helpers.start(
                dep, n, "embedded", "--tracker", tracker_url, "--repo", REPO_ID,
                "--cache-dir", str(wd / n / "hub"), "--state-dir", str(wd / n / "state"), "--node-name", n,
                "--bt-host", dep.ip[n], "--bt-port", str(dep.bt_port[n]),
            )  # fmt: skip
    elif mode != "http":
        for n in dep.nodes:
            agent_args = ["--bt-host", dep.ip[n], "--bt-port", str(dep.bt_port[n])]
            if loop:
                agent_args += ["--upload-mbit", str(opts.node_mbit), "--download-mbit", str(opts.node_mbit)]
            lc.spawn(
                n,
                "agent", "--tracker", tracker_url, "--cache-dir", str(wd / n / "hub"),
                "--state-dir", str(wd / n / "state"), "--host", "127.0.0.1",
                "--port", str(dep.port[n] or AGENT_PORT), "--node-name", n, *agent_args, *opts.agent_args,
                prefix=dep.prefix(n), env=dep.zone_env(n),
            )  # fmt: skip
        for n in dep.nodes:
            helpers.start(dep, n, "pull", "--agent", dep.agent_url(n), "--repo", REPO_ID)

    helpers.wait_all("ready", 120)
    origin_before = dep.get_json("origin", f"{origin_url}/_hfbt/stats")["total_bytes"]
    seed_tx0 = dep.net.tx_bytes("seed") if dep.net else None
    origin_tx0 = dep.net.tx_bytes("origin") if dep.net else None
    cross0 = dep.net.cross_zone_bytes() if dep.net else 0

    log(opts, f"{mode} N={opts.nodes}: go")
    pids = {p.name: p.popen.pid for p in lc.procs}
    pids.update({f"helper-{n}": h.pid for n, h in helpers.procs.items()})
    proc_cpu0 = metrics.process_cpu_seconds(pids)
    cpu = metrics.CpuSampler().start()
    tracer = _LinkTrace(dep.net, opts.trace) if (opts.trace and dep.net) else None
    t0 = time.time()
    helpers.send("go")
    try:
        done = helpers.wait_all("done", timeout)
    finally:
        cpu_stats = cpu.stop()
        if tracer:
            tracer.stop()
    proc_cpu1 = metrics.process_cpu_seconds(pids)
    by_role: dict[str, float] = {}
    for name, sec in proc_cpu1.items():
        role = "agents" if name in dep.nodes else "helpers" if name.startswith("helper-") else name
        by_role[role] = round(by_role.get(role, 0.0) + sec - proc_cpu0.get(name, 0.0), 1)
    cpu_stats["cpu_seconds_by_role"] = by_role
    t_end = max(ev["t"] for ev in done.values())
    wall = t_end - t0
    per_node = {n: round(ev["t"] - t0, 2) for n, ev in sorted(done.items())}
    log(opts, f"{mode} N={opts.nodes}: last node done after {wall:.1f}s")

    origin_stats = dep.get_json("origin", f"{origin_url}/_hfbt/stats")
    extra: dict = {}
    seed_upload = None
    if mode != "http":
        helpers.send("stats")
        # embedded pulls report once they exit: after their linger (hfbt.config.LINGER_S at most)
        stats = helpers.wait_all("stats", 30 + (LINGER_S if mode == "embedded" else 0))
        down = sum(s["downloaded"] for s in stats.values())
        up = sum(s["uploaded"] for s in stats.values())
        # every payload byte a node received came from another node or the seed
        seed_upload = max(0, down - up)
        extra["nodes_payload_down_bytes"] = down
        extra["nodes_payload_up_bytes"] = up
    if dep.net:
        extra["seed_wire_tx_bytes"] = dep.net.tx_bytes("seed") - seed_tx0
        extra["origin_wire_tx_bytes"] = dep.net.tx_bytes("origin") - origin_tx0
        if dep.net.zones > 1:
            crossed = dep.net.cross_zone_bytes() - cross0
            extra.update(zones=dep.net.zones, zone_mbit=dep.net.zone_mbit, cross_zone_bytes=crossed)
            extra["cross_zone_copies"] = round(crossed / size_bytes, 2)
    extra["origin_bytes_during_pull"] = origin_stats["total_bytes"] - origin_before

    return metrics.make_record(
        mode=mode,
        nodes=opts.nodes,
        size_bytes=size_bytes,
        origin_mbit=opts.origin_mbit,
        node_mbit=opts.node_mbit,
        wall_s=wall,
        origin_bytes=origin_stats["total_bytes"],
        seed_upload_bytes=seed_upload,
        cpu=cpu_stats,
        per_node_s=per_node,
        network="loopback (no shaping; app rate limits only)" if opts.loopback else "netns+htb",
        mtu=None if opts.loopback else opts.mtu,
        size_mb=opts.size_mb,
        label=opts.label,
        seed_args=opts.seed_args,
        agent_args=opts.agent_args,
        tracker_args=opts.tracker_args,
        hfbt_version=__version__,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    )


class _LinkTrace:
    """Diagnostics (--trace FILE): every endpoint's link rates once a second, as JSON lines."""

    def __init__(self, network: net.Network, path: str) -> None:
        self.net = network
        self.out = open(path, "a")  # noqa: SIM115 - closed in stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, ep in self.net.endpoints.items():
            r = subprocess.run(["ip", "-n", ep.ns, "-j", "-s", "link", "show", "eth0"], capture_output=True)
            st = json.loads(r.stdout)[0]["stats64"]
            out[name] = (st["tx"]["bytes"], st["rx"]["bytes"])
        return out

    def _run(self) -> None:
        t0 = time.time()
        prev, tp = self._sample(), time.time()
        while not self._stop.wait(1.0):
            cur, tc = self._sample(), time.time()
            dt = tc - tp
            rates = {
                n: [
                    round((cur[n][0] - prev[n][0]) * 8 / dt / 1e6),
                    round((cur[n][1] - prev[n][1]) * 8 / dt / 1e6),
                ]
                for n in cur
            }
            self.out.write(json.dumps({"t": round(tc - t0, 1), "tx_rx_mbit": rates}) + "\n")
            prev, tp = cur, tc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.out.close()


def _premirror(opts: Options, dep: Deployment, tracker_url: str) -> None:
    """Warm runs: let the seed mirror the revision before the clock starts, over a temporarily fast link."""
    if dep.net:
        dep.net.shape(dep.net.endpoints["origin"], PREMIRROR_MBIT)
        dep.net.shape(dep.net.endpoints["seed"], PREMIRROR_MBIT)
    try:
        url = f"{tracker_url}/api/v1/manifest?repo_type=model&repo_id={REPO_ID}&revision=main&wait=30"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            reply = dep.get_json("seed", url)
            if reply.get("status") == "complete":
                return
            time.sleep(0.5)
        raise BenchError("the seed did not mirror the repo within 600 s")
    finally:
        if dep.net:
            dep.net.shape(dep.net.endpoints["origin"])
            dep.net.shape(dep.net.endpoints["seed"])


# --- output --------------------------------------------------------------------------------------


def emit(opts: Options, rec: dict) -> None:
    line = json.dumps(rec, sort_keys=False)
    print(line, flush=True)
    if opts.results:
        opts.results.parent.mkdir(parents=True, exist_ok=True)
        with open(opts.results, "a") as f:
            f.write(line + "\n")


def summary(rec: dict) -> str:
    return (
        f"{rec['mode']:>4} N={rec['nodes']:<2} wall={rec['wall_s']:6.1f}s T*={rec['bound_s']:5.1f}s "
        f"wall/T*={rec['wall_over_bound']:.2f} origin={rec['origin_copies']:.2f}×S "
        f"seed_up={rec['seed_upload_copies'] if rec['seed_upload_copies'] is not None else '-'}×S "
        f"cpu={rec['cpu_busy_mean']:.0%}{' SATURATED' if rec['cpu_saturated'] else ''}"
        + (f" cross_zone={rec['cross_zone_copies']:.2f}×S" if "cross_zone_copies" in rec else "")
        + (f" [{' '.join(rec['tracker_args'])}]" if rec.get("tracker_args") else "")
    )


# --- CLI -----------------------------------------------------------------------------------------


def _on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, action="append", help="N (repeatable; default: the series 2 4 8 12)")
    p.add_argument("--origin-mbit", type=float, default=50.0, help="B: the origin's link (default 50)")
    p.add_argument("--node-mbit", type=float, default=100.0, help="U: every node's link (default 100)")
    p.add_argument("--size-mb", type=int, default=256, help="S in MiB (default 256)")
    p.add_argument(
        "--mode", choices=[*metrics.MODES, "all"], action="append", help="repeatable (default: all)"
    )
    p.add_argument("--loopback", action="store_true", help="no namespaces and no shaping (see --help)")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--label", default="", help="free text stored in the record (e.g. the lever tried)")
    p.add_argument("--timeout", type=float, help="seconds for one run (default: 3 × the HTTP time)")
    p.add_argument("--results", default=str(RESULTS / "cluster.jsonl"), help="'' = do not append")
    p.add_argument("--data-dir", default=str(Options.data_dir), help="where the synthetic repo is kept")
    p.add_argument("--keep", action="store_true", help="keep the run's folder and logs")
    p.add_argument("--trace", help="diagnostics: append per-second link rates to this file (costs CPU)")
    p.add_argument("--zones", type=int, choices=(1, 2), default=1, help="2: odd nodes in zone a, even in b")
    p.add_argument("--zone-mbit", type=float, default=0.0, help="the link between the zones (default B/2)")
    p.add_argument(
        "--zone-gateways",
        action="append",
        help="the tracker's --zone-gateways (repeatable: each value one run, side by side)",
    )
    for role in ("seed", "agent", "tracker"):
        p.add_argument(f"--{role}-args", default="", help=f"extra flags for every `hfbt {role}`")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    loopback = a.loopback
    if not loopback:
        ok, why = net.netns_available()
        if not ok:
            print(
                f"bench: cannot emulate a network here: {why}.\n"
                "  Run as root on Linux with iproute2, or pass --loopback to run every process on\n"
                "  127.0.0.1 WITHOUT network shaping (only the programs' own rate limits apply; the\n"
                "  numbers are then not a network measurement).",
                file=sys.stderr,
            )
            return 2
        stale = net.cleanup_stale()
        if stale:
            print(f"[bench] removed {len(stale)} namespaces left by a killed run", file=sys.stderr)
    else:
        print("[bench] LOOPBACK MODE: no namespaces, no tc shaping; app rate limits only", file=sys.stderr)
    wanted = a.mode or ["all"]
    modes = [m for m in metrics.MODES if m in wanted or "all" in wanted]
    if loopback and "embedded" in modes:
        # embedded pulls take no rate limit: only a shaped link holds them
        if "embedded" in wanted:
            print("[bench] --mode embedded needs network namespaces, not --loopback", file=sys.stderr)
            return 2
        modes.remove("embedded")
    if loopback and a.zones > 1:
        print("[bench] --zones needs network namespaces, not --loopback", file=sys.stderr)
        return 2
    failures = 0
    variants = [["--zone-gateways", g] for g in a.zone_gateways] if a.zone_gateways else [[]]
    try:
        for n, mode, variant, _ in itertools.product(
            a.nodes or DEFAULT_SERIES, modes, variants, range(a.repeat)
        ):
            opts = Options(
                nodes=n,
                origin_mbit=a.origin_mbit,
                node_mbit=a.node_mbit,
                size_mb=a.size_mb,
                loopback=loopback,
                mtu=a.mtu,
                label=a.label,
                timeout=a.timeout,
                data_dir=Path(a.data_dir),
                results=Path(a.results) if a.results else None,
                keep=a.keep,
                trace=a.trace,
                seed_args=shlex.split(a.seed_args),
                agent_args=shlex.split(a.agent_args),
                tracker_args=shlex.split(a.tracker_args) + variant,
                zones=a.zones,
                zone_mbit=a.zone_mbit,
            )
            try:
                rec = run_once(opts, mode)
            except (BenchError, HfbtError, net.NetError) as e:
                failures += 1
                print(f"[bench] {mode} N={n} {' '.join(variant)} failed: {e}", file=sys.stderr)
                continue
            emit(opts, rec)
            print(f"[bench] {summary(rec)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("[bench] interrupted; everything was cleaned up", file=sys.stderr)
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
