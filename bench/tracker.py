"""Announce load: `hfbt tracker` and opentracker side by side, in one run, on the same load.

    python -m bench.tracker [--nodes 100,1000,5000] [--torrents 500] [--duration 10] [--modes open,closed]
    python -m bench.tracker --quick          # smoke: K=20, M=10, 2 s per run
    python -m bench.tracker --soak 30        # one long run at K=5000, M=500, sampled every 10 s

Needs `wrk` and `opentracker` (`apt-get install wrk opentracker`). Everything binds to 127.0.0.1.

Load: K simulated nodes x M torrents. Each wrk request (bench/tracker_load.lua) is one announce of a
random (node, torrent) pair with that node's stable peer_id and port; even nodes are seeders (left=0),
numwant=50, compact=1. wrk -t2 -c32. Before each measured run a warm-up (capped at --warmup seconds)
walks the pairs in order, torrent fastest, so all swarms fill at the same pace; K*M pairs (2.5 M at
K=5000) do not fit in the cap, so the record says how many pairs the warm-up reached and the swarm
sizes after the measured run (hfbt: /api/v1/swarms; opentracker: scrape).

Both trackers get the same M torrents: hfbt through its HTTP API (one revision of M files, one blob
torrent each, as a seed registers them), opentracker (Debian's build is whitelist-only) through a
whitelist of the same info_hashes. Modes of hfbt: "open" (no tokens, /announce) and "closed"
(HFBT_OPERATOR_TOKEN/HFBT_SEED_TOKEN set; announces carry a real ticket, /announce/<ticket>). A ticket is
per (node, torrent), minted by GET /api/v1/tickets/<info_hash> with the node's token: K*M of them is too
many, so --ticket-nodes real nodes are enrolled and simulated node k announces with real node k % N's
tickets (every announce still verifies a signed ticket and the node's liveness). opentracker has no
closed mode: each point runs it once, and its row is the reference for both hfbt modes.

Every (tracker, mode, K) run starts a fresh tracker process (empty swarms; hfbt keeps its SQLite
registry and ticket key between runs). With 2+ CPUs the tracker is pinned to the last CPU and wrk to
the others (taskset), so both trackers get one core and wrk does not steal it. Per run: announces/s,
latency p50/p90/p99 (wrk, not corrected for coordinated omission), non-2xx and socket errors, bodies
with a bencoded "failure reason", mean peers handed out, tracker CPU seconds during the measured run
and its peak RSS (VmHWM). Writes bench/results/tracker.json and tracker.png (matplotlib).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
from fastbencode import bdecode, bencode

from bench.throughput import cpu_seconds, peak_rss_mb
from hfbt.cluster import free_port
from hfbt.config import SECRET_OPERATOR_TOKEN, SECRET_SEED_TOKEN
from hfbt.manifest import PIECE_LENGTH

RESULTS = Path(__file__).resolve().parent / "results"
LUA = Path(__file__).resolve().parent / "tracker_load.lua"
REPO_ID = "bench/tracker-load"
COMMIT = "b" * 40
STARTUP_TIMEOUT_S = 30.0
TICKET_TTL_S = 7200.0  # tickets are minted once per mode; a default 600 s one would expire in a soak


# --- the load ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Torrent:
    path: str
    size: int
    etag: str
    raw: bytes  # bencoded {"info": ...}
    info_hash: bytes


def make_torrents(m: int) -> list[Torrent]:
    """M distinct one-piece blob torrents; the tracker checks shape, name and length, never the bytes."""
    out = []
    for i in range(m):
        etag = hashlib.sha256(f"hfbt-bench-tracker-{i}".encode()).hexdigest()
        size = 1024 + i
        info = {
            b"length": size,
            b"name": etag.encode(),
            b"piece length": PIECE_LENGTH,
            b"pieces": hashlib.sha1(etag.encode()).digest(),
            b"private": 1,
        }
        raw = bencode({b"info": info})
        out.append(
            Torrent(f"blobs/{i:05d}.safetensors", size, etag, raw, hashlib.sha1(bencode(info)).digest())
        )
    return out


def node_line(k: int) -> str:
    """Node k's stable peer_id, port and left: even nodes seed. Ports differ per node because
    opentracker keys a peer by ip:port (everything here is 127.0.0.1), hfbt by peer_id."""
    peer_id = f"-BN0001-{k:012d}".encode()
    return f"P {quote_from_bytes(peer_id, safe='')} {10000 + k} {0 if k % 2 == 0 else 1 << 20}"


def write_load(path: Path, torrents: list[Torrent], k: int, tickets: list[str] | None) -> Path:
    lines = [f"H {quote_from_bytes(t.info_hash, safe='')}" for t in torrents]
    lines += [node_line(i) for i in range(k)]
    lines += [f"T {t}" for t in tickets or []]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- processes ---------------------------------------------------------------------------------------


def cpu_split() -> tuple[list[str], list[str]]:
    """(tracker prefix, wrk prefix): the tracker on the last CPU, wrk on the rest, when there are 2+."""
    n = os.cpu_count() or 1
    if n < 2 or not shutil.which("taskset"):
        return [], []
    return ["taskset", "-c", str(n - 1)], ["taskset", "-c", f"0-{n - 2}"]


@dataclass
class Server:
    name: str
    popen: subprocess.Popen
    url: str
    log: Path
    headers: dict[str, str] = field(default_factory=dict)  # operator credential, closed hfbt only

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def spawn(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple:
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=workdir,
            start_new_session=True,  # its own group: stop() signals it without touching us
        )
    return popen, log


def wait_http(popen: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise SystemExit(
                f"{url}: exited with {popen.returncode}:\n{log.read_text(errors='replace')[-2000:]}"
            )
        try:
            httpx.get(url, timeout=1.0)
            return  # any answer: it listens
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {STARTUP_TIMEOUT_S:.0f} s; log: {log}")


@dataclass(frozen=True)
class Credentials:
    operator: str
    seed: str


def start_hfbt(workdir: Path, creds: Credentials | None, prefix: list[str]) -> Server:
    port = free_port()
    args = [
        *prefix, sys.executable, "-m", "hfbt", "tracker",
        "--host", "127.0.0.1", "--port", str(port),
        "--db", str(workdir / "tracker.db"),
        "--ref-ttl", "3600",
        "--ticket-ttl", str(TICKET_TTL_S),
    ]  # fmt: skip
    env = {"PYTHONUNBUFFERED": "1"}
    headers = {}
    if creds:
        env |= {SECRET_OPERATOR_TOKEN.env: creds.operator, SECRET_SEED_TOKEN.env: creds.seed}
        headers = {"Authorization": f"Bearer {creds.operator}"}
    popen, log = spawn("hfbt", args, workdir, env)
    url = f"http://127.0.0.1:{port}"
    wait_http(popen, f"{url}/healthz", log)
    return Server("hfbt", popen, url, log, headers)


def start_opentracker(workdir: Path, torrents: list[Torrent], prefix: list[str]) -> Server:
    """opentracker chroots to -d and drops to `nobody`: the whitelist is named relative to that folder."""
    workdir.chmod(0o755)
    (workdir / "whitelist.txt").write_text("".join(t.info_hash.hex() + "\n" for t in torrents))
    port = free_port()
    # -P: opentracker also serves UDP; without it, it binds UDP 6969 on every address.
    args = [*prefix, "opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
    args += ["-d", str(workdir), "-w", "whitelist.txt"]
    popen, log = spawn("opentracker", args, workdir)
    url = f"http://127.0.0.1:{port}"
    wait_http(popen, f"{url}/scrape", log)
    return Server("opentracker", popen, url, log)


# --- hfbt setup through its API ----------------------------------------------------------------------


def register(url: str, torrents: list[Torrent], creds: Credentials | None) -> None:
    """One revision holding the M files, then each file's blob torrent: what a seed does."""
    headers = {"Authorization": f"Bearer {creds.seed}"} if creds else {}
    files = [{"path": t.path, "size": t.size, "etag": t.etag, "sha256": t.etag} for t in torrents]
    manifest = {"repo_type": "model", "repo_id": REPO_ID, "commit": COMMIT, "files": files}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        r = c.post("/api/v1/revisions", json={"job_id": None, "ref": "main", "manifest": manifest})
        r.raise_for_status()
        for t in torrents:
            body = {
                "repo_type": "model",
                "repo_id": REPO_ID,
                "commit": COMMIT,
                "path": t.path,
                "torrent": base64.b64encode(t.raw).decode(),
            }
            r = c.post("/api/v1/torrents", json=body)
            r.raise_for_status()
            assert r.json()["info_hash"] == t.info_hash.hex(), r.text


def enroll_and_mint(url: str, creds: Credentials, n: int, torrents: list[Torrent]) -> list[str]:
    """n real node identities (POST /api/v1/nodes) and each one's ticket for every torrent, node-major."""
    op = {"Authorization": f"Bearer {creds.operator}"}
    with httpx.Client(base_url=url, timeout=60) as c:
        tokens = []
        for i in range(n):
            r = c.post("/api/v1/nodes", json={"name": f"bench-{i:04d}"}, headers=op)
            r.raise_for_status()
            tokens.append(r.json()["token"])

        def mint(job: tuple[int, int]) -> str:
            node, m = job
            auth = {"Authorization": f"Bearer {tokens[node]}"}
            r = c.get(f"/api/v1/tickets/{torrents[m].info_hash.hex()}", headers=auth)
            r.raise_for_status()
            return r.json()["ticket"]

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(mint, [(i, m) for i in range(n) for m in range(len(torrents))]))


# --- measuring ---------------------------------------------------------------------------------------


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_wrk(
    url: str, load: Path, phase: str, seconds: float, prefix: list[str], threads: int, conns: int
) -> dict:
    """One wrk run; the Lua done() line as a dict (latencies in microseconds)."""
    args = [
        *prefix, "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(LUA), url, "--", str(load), phase, str(secrets.randbelow(1 << 30)), str(threads),
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise SystemExit(f"wrk gave no result ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def swarm_sizes(server: Server, torrents: list[Torrent]) -> dict:
    """Peers per swarm (seeders + leechers) over the M torrents: min / mean / max / total."""
    sizes: list[int] = []
    # opentracker closes every connection after its answer without saying so: no keep-alive for it
    close = {"Connection": "close"} if server.name == "opentracker" else {}
    with httpx.Client(base_url=server.url, timeout=30, headers=close) as c:
        if server.name == "hfbt":
            r = c.get("/api/v1/swarms", headers=server.headers)
            r.raise_for_status()
            found = {s["info_hash"]: s["seeders"] + s["leechers"] for s in r.json()["swarms"]}
            sizes = [found.get(t.info_hash.hex(), 0) for t in torrents]
        else:
            for t in torrents:
                # one info_hash a scrape: opentracker's multi-scrape dict is not in bencode key order,
                # which fastbencode refuses
                q = f"info_hash={quote_from_bytes(t.info_hash, safe='')}"
                f = bdecode(c.get(f"/scrape?{q}").content).get(b"files", {}).get(t.info_hash, {})
                sizes.append(f.get(b"complete", 0) + f.get(b"incomplete", 0))
    return {
        "min": min(sizes),
        "mean": round(sum(sizes) / len(sizes), 1),
        "max": max(sizes),
        "total": sum(sizes),
    }


def summarize_wrk(w: dict, closes: bool = False) -> dict:
    """wrk's counts as a row. `closes`: the tracker closes the connection after every answer
    (opentracker, no keep-alive); wrk counts each such EOF as a read error after the complete response,
    so only read errors beyond the completed announces count as errors there."""
    secs = w["duration_us"] / 1e6
    read = max(0, w["read"] - w["requests"]) if closes else w["read"]
    socket_errors = w["connect"] + read + w["write"] + w["timeout"]
    return {
        "announces": w["requests"],
        "announces_per_s": round(w["requests"] / secs, 1),
        "p50_ms": round(w["p50_us"] / 1000, 2),
        "p90_ms": round(w["p90_us"] / 1000, 2),
        "p99_ms": round(w["p99_us"] / 1000, 2),
        "max_ms": round(w["max_us"] / 1000, 2),
        "non_2xx": w["status"],
        "socket_errors": socket_errors,
        "wrk_read_errors": w["read"],
        "failure_bodies": w["failures"],
        # non-2xx and "failure reason" bodies overlap on hfbt (a refusal is a 4xx with a reason)
        "errors": max(w["status"], w["failures"]) + socket_errors,
        "first_failure": w.get("first_failure", ""),  # status and start of the first refused answer
        "mean_peers_returned": round(w["peers_sum"] / w["bodies"], 1) if w["bodies"] else 0.0,
    }


@dataclass(frozen=True)
class Load:
    torrents: list[Torrent]
    k: int
    duration: float
    warmup: float
    threads: int
    conns: int
    tracker_cpu: list[str]
    wrk_cpu: list[str]


def measure(server: Server, load_file: Path, lo: Load) -> dict:
    """Warm-up (capped), then the measured random run; the tracker's CPU over the latter only."""
    row: dict = {}
    closes = server.name == "opentracker"
    if lo.warmup > 0:
        w = run_wrk(server.url, load_file, "warm", lo.warmup, lo.wrk_cpu, lo.threads, lo.conns)
        pairs = lo.k * len(lo.torrents)
        row["warmup"] = {
            "seconds": lo.warmup,
            "announces": w["requests"],
            "pairs_reached": min(w["requests"], pairs),
            "pairs_total": pairs,
            "errors": summarize_wrk(w, closes)["errors"],
        }
        row["swarms_after_warmup"] = swarm_sizes(server, lo.torrents)
    cpu0 = cpu_seconds(server.pid)
    w = run_wrk(server.url, load_file, "rand", lo.duration, lo.wrk_cpu, lo.threads, lo.conns)
    cpu = cpu_seconds(server.pid) - cpu0
    row |= summarize_wrk(w, closes)
    row["tracker_cpu_s"] = round(cpu, 2)
    # below ~0.9 of its one CPU the tracker was not the bound: wrk (on the other CPU) was
    row["tracker_cpu_share"] = round(cpu / (w["duration_us"] / 1e6), 2)
    row["tracker_cpu_ms_per_1k_announces"] = round(1e6 * cpu / max(1, w["requests"]), 1)
    row["tracker_peak_rss_mb"] = round(peak_rss_mb(server.pid), 1)
    row["tracker_rss_mb"] = round(proc_rss_mb(server.pid), 1)
    row["swarms"] = swarm_sizes(server, lo.torrents)
    return row


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Setup:
    """Per hfbt mode: a work folder whose registry (and nodes, tickets) outlive each fresh process."""

    mode: str
    workdir: Path
    creds: Credentials | None
    tickets: list[str] | None = None
    ticket_nodes: int = 0


def prepare_hfbt(
    workdir: Path, mode: str, torrents: list[Torrent], ticket_nodes: int, cpu: list[str]
) -> Setup:
    workdir.mkdir(parents=True, exist_ok=True)
    creds = Credentials(secrets.token_urlsafe(24), secrets.token_urlsafe(24)) if mode == "closed" else None
    setup = Setup(mode, workdir, creds)
    t0 = time.perf_counter()
    with running(start_hfbt(workdir, creds, cpu)) as s:
        register(s.url, torrents, creds)
        if creds:
            setup.tickets = enroll_and_mint(s.url, creds, ticket_nodes, torrents)
            setup.ticket_nodes = ticket_nodes
    print(f"hfbt {mode}: registered {len(torrents)} torrents"
          + (f", {len(setup.tickets or [])} tickets for {ticket_nodes} nodes" if creds else "")
          + f" in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    return setup


def one_point(work: Path, setups: list[Setup], trackers: list[str], lo: Load) -> list[dict]:
    rows = []
    if "opentracker" in trackers:
        ot_dir = work / f"opentracker-k{lo.k}"
        ot_dir.mkdir(parents=True, exist_ok=True)
        load_file = write_load(ot_dir / "load.txt", lo.torrents, lo.k, None)
        with running(start_opentracker(ot_dir, lo.torrents, lo.tracker_cpu)) as s:
            rows.append({"tracker": "opentracker", "mode": "open", **measure(s, load_file, lo)})
        print(json.dumps(rows[-1]), flush=True)
    for st in setups if "hfbt" in trackers else []:
        load_file = write_load(st.workdir / f"load-k{lo.k}.txt", lo.torrents, lo.k, st.tickets)
        with running(start_hfbt(st.workdir, st.creds, lo.tracker_cpu)) as s:
            row = {"tracker": "hfbt", "mode": st.mode, **measure(s, load_file, lo)}
        if st.tickets:
            row["ticket_nodes"] = st.ticket_nodes
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["nodes"], r["torrents"] = lo.k, len(lo.torrents)
    return rows


def soak(work: Path, setups: list[Setup], trackers: list[str], lo: Load, minutes: float) -> list[dict]:
    """Consecutive 10 s wrk runs for `minutes` per tracker: throughput, p99, RSS and CPU per sample."""
    out = []
    targets: list[tuple[str, str, Setup | None]] = []
    if "opentracker" in trackers:
        targets.append(("opentracker", "open", None))
    targets += [("hfbt", st.mode, st) for st in setups if "hfbt" in trackers]
    for name, mode, st in targets:
        if st is None:
            d = work / "opentracker-soak"
            d.mkdir(parents=True, exist_ok=True)
            load_file = write_load(d / "load.txt", lo.torrents, lo.k, None)
            server = start_opentracker(d, lo.torrents, lo.tracker_cpu)
        else:
            load_file = write_load(st.workdir / "load-soak.txt", lo.torrents, lo.k, st.tickets)
            server = start_hfbt(st.workdir, st.creds, lo.tracker_cpu)
        samples = []
        with running(server) as s:
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                cpu0 = cpu_seconds(s.pid)
                raw = run_wrk(s.url, load_file, "rand", 10, lo.wrk_cpu, lo.threads, lo.conns)
                w = summarize_wrk(raw, closes=name == "opentracker")
                samples.append(
                    {
                        "t_s": round(minutes * 60 - (end - time.monotonic()), 1),
                        "announces_per_s": w["announces_per_s"],
                        "p99_ms": w["p99_ms"],
                        "errors": w["errors"],
                        "cpu_s": round(cpu_seconds(s.pid) - cpu0, 2),
                        "rss_mb": round(proc_rss_mb(s.pid), 1),
                    }
                )
                print(json.dumps({"tracker": name, "mode": mode, **samples[-1]}), flush=True)
            swarms = swarm_sizes(s, lo.torrents)
        out.append({"tracker": name, "mode": mode, "nodes": lo.k, "samples": samples, "swarms": swarms})
    return out


# --- the record --------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """The points as a Markdown table (for bench/README.md)."""
    lines = [
        "| K | tracker | mode | announces/s | p50 ms | p99 ms | errors | CPU s (share of 1 CPU)"
        " | peak RSS MB | warm-up pairs | swarm mean (max) |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sw, warm = r["swarms"], r.get("warmup", {})
        share = r.get(
            "tracker_cpu_share", r["tracker_cpu_s"] / max(1e-9, r["announces"] / r["announces_per_s"])
        )
        lines.append(
            f"| {r['nodes']} | {r['tracker']} | {r['mode']} | {r['announces_per_s']:.0f} | {r['p50_ms']} |"
            f" {r['p99_ms']} | {r['errors']} | {r['tracker_cpu_s']} ({share:.2f}) |"
            f" {r['tracker_peak_rss_mb']} |"
            f" {warm.get('pairs_reached', 0)} / {warm.get('pairs_total', 0)} | {sw['mean']} ({sw['max']}) |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> Path | None:
    """announces/s and p99 vs K, one line per (tracker, mode). bench/plot.py draws cluster runs only."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["tracker"], r["mode"]) for r in rows})
    for tracker, mode in series:
        pts = sorted((r["nodes"], r) for r in rows if (r["tracker"], r["mode"]) == (tracker, mode))
        label = tracker if tracker == "opentracker" else f"hfbt {mode}"
        xs = [k for k, _ in pts]
        ax.plot(xs, [r["announces_per_s"] for _, r in pts], "o-", label=label)
        ax2.plot(xs, [r["p99_ms"] for _, r in pts], "o-", label=label)
    m = rows[0]["torrents"] if rows else 0
    ax.set_title(f"announces/s, M = {m} torrents, wrk -t2 -c32, tracker on 1 CPU")
    ax.set_ylabel("announces/s")
    ax2.set_title("p99 latency")
    ax2.set_ylabel("ms")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("simulated nodes K")
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="100,1000,5000", help="comma-separated K points")
    ap.add_argument("--torrents", type=int, default=500, help="M")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (<= 15)")
    ap.add_argument("--warmup", type=float, default=5.0, help="cap in seconds of the warm-up per run")
    ap.add_argument("--modes", default="open,closed", help="hfbt modes: open, closed")
    ap.add_argument("--trackers", default="hfbt,opentracker")
    ap.add_argument("--ticket-nodes", type=int, default=20, help="real enrolled nodes in closed mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the tracker and wrk to CPUs")
    ap.add_argument("--quick", action="store_true", help="smoke test: K=20, M=10, 2 s runs")
    ap.add_argument("--soak", type=float, metavar="MINUTES", help="one long run at K=5000 instead")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    trackers = [t for t in a.trackers.split(",") if t]
    for tool in ["wrk"] + [t for t in trackers if t == "opentracker"]:
        if not shutil.which(tool):
            ap.error(f"{tool} is not installed (apt-get install {tool})")
    if a.quick:
        a.nodes, a.torrents, a.duration, a.warmup = "20", 10, 2.0, 1.0
    ks = [5000] if a.soak else [int(x) for x in a.nodes.split(",")]
    if a.duration > 15 and not a.soak:
        ap.error("--duration is capped at 15 s per run")
    modes = [m for m in a.modes.split(",") if m]
    out = a.out or RESULTS / ("tracker-soak.json" if a.soak else "tracker.json")
    tracker_cpu, wrk_cpu = ([], []) if a.no_pin else cpu_split()
    torrents = make_torrents(a.torrents)
    record: dict = {
        "bench": "tracker-soak" if a.soak else "tracker",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load": {
            "torrents": a.torrents,
            "nodes": ks,
            "seeders": "half the nodes (even k), left=0",
            "numwant": 50,
            "compact": 1,
            "wrk": f"-t{a.threads} -c{a.connections} -d{a.duration:g}s",
            "warmup_cap_s": a.warmup,
            "tracker_cpu": " ".join(tracker_cpu) or "unpinned",
            "wrk_cpu": " ".join(wrk_cpu) or "unpinned",
            "ticket_nodes": a.ticket_nodes if "closed" in modes else None,
        },
    }
    with tempfile.TemporaryDirectory(prefix="hfbt-bench-tracker-", dir=a.workdir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # opentracker runs as nobody inside its folder
        setups = []
        if "hfbt" in trackers:
            setups = [
                prepare_hfbt(work / f"hfbt-{m}", m, torrents, a.ticket_nodes, tracker_cpu) for m in modes
            ]
        if a.soak:
            lo = Load(torrents, 5000, 10, 0, a.threads, a.connections, tracker_cpu, wrk_cpu)
            record["soak"] = soak(work, setups, trackers, lo, a.soak)
        else:
            rows = []
            for k in ks:
                lo = Load(torrents, k, a.duration, a.warmup, a.threads, a.connections, tracker_cpu, wrk_cpu)
                rows += one_point(work, setups, trackers, lo)
            record["points"] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    drawn = None if a.soak else plot(record["points"], out.with_suffix(".png"))
    if not a.soak:
        print(table(record["points"]))
    print(f"wrote {out}" + (f" and {drawn}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
