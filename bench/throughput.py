"""Line rate on one machine: every way of getting one file, in one run, on the same bytes.

    python -m bench.throughput [--size-mb 1024] [--runs 2] [--cases curl,hf_hub,...]

127.0.0.1, no shaping: the bound is the machine (CPU, memory bandwidth), which is what a 25-400 Gbit/s
link leaves as the bound in a real cluster. Real processes (`hfbt serve-dir`, a closed tracker, a
seed, agents, embedded `hfbt pull`s, curl, huggingface_hub). Cases, in this order per run:

- curl: `curl -o /dev/null` from serve-dir (the machine's ceiling for one HTTP stream);
- cp: `cp` of the origin's file into a new folder (what writing the bytes costs here: every client
  below writes them; on this VM, fresh page-cache pages cost ~4-5 s of system CPU per GiB when the
  host has reclaimed them, which is why each case's system CPU is listed apart);
- hf_hub: `huggingface_hub.snapshot_download` from serve-dir (what users do without hfbt);
- pull_cold: `hfbt pull` while the seed mirrors the file (it also makes the seed warm);
- pull_1: `hfbt pull`, warm seed -> 1 node;
- pull_2: two `hfbt pull`s at once from the warm seed (the intake of each node);
- shim_cold / shim_cached: httpx streams the file through an agent's HF_ENDPOINT shim, first while the
  node fetches it, then from its cache; servedir_httpx: the same client on serve-dir;
- holders_2_to_1: the seed stopped, two agents hold the file, one `hfbt pull` takes it from them
  (BitTorrent between nodes only).

Per case: MB/s (file bytes / wall time of the whole command, Python start-up included where the
command is Python), CPU-seconds per GiB per role (node, seed, tracker, holders) and peak RSS per
process (a finished command's from wait4; a running server's VmHWM, reset before each case). Writes
bench/results/throughput.json and throughput.png (with `.[bench]`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hfbt.cluster import Agent, LocalCluster, Proc
from hfbt.synth import write_random_file

REPO = "bench/line-rate"
NAME = "model.safetensors"
RESULTS = Path(__file__).resolve().parent / "results"
CASES = (
    "curl",
    "cp",
    "hf_hub",
    "pull_cold",
    "pull_1",
    "pull_2",
    "shim_cold",
    "shim_cached",
    "servedir_httpx",
    "holders_2_to_1",
)
GIB = 1024**3
_TICK = os.sysconf("SC_CLK_TCK")


# --- what a process costs ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: "5" to clear_refs), so a case sees its own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@dataclass
class Watched:
    """Long-running servers whose CPU and peak RSS a case is charged with, by role."""

    roles: dict[str, list[int]] = field(default_factory=dict)

    @contextmanager
    def case(self) -> Iterator[dict]:
        pids = [p for ps in self.roles.values() for p in ps]
        for pid in pids:
            reset_peak(pid)
        before = {pid: cpu_seconds(pid) for pid in pids}
        out: dict = {}
        yield out
        for role, ps in self.roles.items():
            out[role] = {
                "cpu_s": round(sum(cpu_seconds(p) - before[p] for p in ps), 2),
                "peak_rss_mb": round(max(peak_rss_mb(p) for p in ps), 1),
            }


@dataclass
class Finished:
    wall_s: float
    cpu_s: float
    sys_s: float
    peak_rss_mb: float
    output: str


def run_command(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Finished:
    """Run to completion; its own CPU and peak RSS from wait4 (children it waited for included)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{args[:4]} did not finish in {timeout:.0f} s")
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed ({proc.returncode}):\n{text[-3000:]}")
    return Finished(wall, usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_maxrss / 1024, text)


# --- the clients ------------------------------------------------------------------------------------


def hfbt_pull(cluster: LocalCluster, name: str, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "hfbt", "pull", REPO,
        "--tracker", cluster.tracker_url,
        "--cache-dir", str(cache),
        "--agent", "none",
        "--node-name", name,
        "--bt-host", "127.0.0.1",
        "--quiet",
    ]  # fmt: skip


HF_HUB = (
    "import sys; from huggingface_hub import snapshot_download;"
    "snapshot_download(sys.argv[1], endpoint=sys.argv[2], cache_dir=sys.argv[3])"
)


def stream(url: str) -> tuple[float, int]:
    """The wall time and bytes of one httpx stream of `url` (the client both shim cases use)."""
    start = time.perf_counter()
    n = 0
    with httpx.stream("GET", url, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            n += len(chunk)
    return time.perf_counter() - start, n


def wait_complete(agent: Agent, size: int, timeout: float = 600) -> None:
    blobs = agent.cache_dir / f"models--{REPO.replace('/', '--')}" / "blobs"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if blobs.is_dir() and any(len(p.name) == 64 and p.stat().st_size == size for p in blobs.iterdir()):
            return
        time.sleep(0.1)
    raise SystemExit(f"{agent.name} never completed the file")


# --- one run ----------------------------------------------------------------------------------------


def _row(case: str, size: int, wall: float, node: dict | None, servers: dict, nodes: int = 1) -> dict:
    gib = size * nodes / GIB
    row = {"case": case, "wall_s": round(wall, 3), "mb_per_s": round(size / wall / 1e6, 1)}
    roles = {**({"node": node} if node else {}), **servers}
    row["cpu_s_per_gib"] = {r: round(v["cpu_s"] / gib, 2) for r, v in roles.items()}
    if node and "sys_s" in node:
        row["node_sys_s_per_gib"] = round(node["sys_s"] / gib, 2)
    row["peak_rss_mb"] = {r: v["peak_rss_mb"] for r, v in roles.items()}
    return row


def one_run(work: Path, size: int, cases: set[str]) -> list[dict]:
    rows: list[dict] = []
    origin = work / "origin"
    write_random_file(origin / "models" / REPO / NAME, size, seed=11)
    (origin / "models" / REPO / "config.json").write_text('{"model_type": "bench"}\n')
    file_url = f"/{REPO}/resolve/main/{NAME}"

    def scratch(name: str) -> Path:
        d = work / "clients" / name
        shutil.rmtree(d, ignore_errors=True)
        return d

    with LocalCluster(work / "run") as cluster:
        origin_url = cluster.start_origin(origin)
        cluster.start_tracker(closed=True, ref_ttl=3600)
        seed = cluster.start_seed()
        tracker = next(p for p in cluster.procs if p.name == "tracker")
        origin_proc = next(p for p in cluster.procs if p.name == "origin")
        watched = Watched({"seed": [seed.popen.pid], "tracker": [tracker.popen.pid]})

        if "curl" in cases:
            with Watched({"origin": [origin_proc.popen.pid]}).case() as servers:
                f = run_command(["curl", "-sf", "-o", "/dev/null", origin_url + file_url])
            rows.append(_row("curl", size, f.wall_s, usage(f), servers))
        if "cp" in cases:
            copy = scratch("cp")
            copy.mkdir(parents=True)
            f = run_command(["cp", str(origin / "models" / REPO / NAME), str(copy / NAME)])
            rows.append(_row("cp", size, f.wall_s, usage(f), {}))
            shutil.rmtree(copy, ignore_errors=True)
        if "hf_hub" in cases:
            with Watched({"origin": [origin_proc.popen.pid]}).case() as servers:
                f = run_command([sys.executable, "-c", HF_HUB, REPO, origin_url, str(scratch("hf"))])
            rows.append(_row("hf_hub", size, f.wall_s, usage(f), servers))
            shutil.rmtree(work / "clients" / "hf", ignore_errors=True)

        # Always run: it makes the seed warm for every case after it.
        with watched.case() as servers:
            f = run_command(hfbt_pull(cluster, "cold", scratch("cold")), env=cluster.node_env("cold"))
        if "pull_cold" in cases:
            rows.append(_row("pull_cold", size, f.wall_s, usage(f), servers))
        shutil.rmtree(work / "clients" / "cold", ignore_errors=True)

        if "pull_1" in cases:
            with watched.case() as servers:
                f = run_command(hfbt_pull(cluster, "one", scratch("one")), env=cluster.node_env("one"))
            rows.append(_row("pull_1", size, f.wall_s, usage(f), servers))
            shutil.rmtree(work / "clients" / "one", ignore_errors=True)

        if "pull_2" in cases:
            rows.append(_two_at_once(cluster, watched, scratch, size))

        if cases & {"shim_cold", "shim_cached", "servedir_httpx", "holders_2_to_1"}:
            a = cluster.start_agent("holder-a")
            node_watch = Watched({**watched.roles, "node": [a.proc.popen.pid]})
            with node_watch.case() as servers:
                wall, n = stream(a.shim_url + file_url)
            assert n == size, n
            node = servers.pop("node")
            if "shim_cold" in cases:
                rows.append(_row("shim_cold", size, wall, node, servers))
            wait_complete(a, size)
            if "shim_cached" in cases:
                with node_watch.case() as servers:
                    wall, _ = stream(a.shim_url + file_url)
                rows.append(_row("shim_cached", size, wall, servers.pop("node"), servers))
            if "servedir_httpx" in cases:
                with Watched({"origin": [origin_proc.popen.pid]}).case() as servers:
                    wall, _ = stream(origin_url + file_url)
                rows.append(_row("servedir_httpx", size, wall, None, servers))
            if "holders_2_to_1" in cases:
                rows.append(_from_holders(cluster, a, seed, scratch, size))
    return rows


def usage(f: Finished) -> dict:
    return {"cpu_s": f.cpu_s, "sys_s": f.sys_s, "peak_rss_mb": round(f.peak_rss_mb, 1)}


def _two_at_once(cluster: LocalCluster, watched: Watched, scratch: Callable, size: int) -> dict:
    envs = {name: cluster.node_env(name) for name in ("two-a", "two-b")}
    with watched.case() as servers:
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(run_command, hfbt_pull(cluster, name, scratch(name)), envs[name]) for name in envs
            ]
            done = [f.result() for f in futures]
        wall = time.perf_counter() - start
    slowest = max(d.wall_s for d in done)
    node = {
        "cpu_s": sum(d.cpu_s for d in done),
        "sys_s": sum(d.sys_s for d in done),
        "peak_rss_mb": round(max(d.peak_rss_mb for d in done), 1),
    }
    row = _row("pull_2", size, slowest, node, servers, nodes=2)
    row["per_node_mb_per_s"] = [round(size / d.wall_s / 1e6, 1) for d in done]
    row["both_done_s"] = round(wall, 3)
    for name in envs:
        shutil.rmtree(scratch(name), ignore_errors=True)
    return row


def _from_holders(cluster: LocalCluster, a: Agent, seed: Proc, scratch: Callable, size: int) -> dict:
    b = cluster.start_agent("holder-b")
    for holder in (a, b):  # the whole revision, as an agent that pulled it holds it
        cmd = hfbt_pull(cluster, f"{holder.name}-cli", holder.cache_dir)
        cmd[cmd.index("none")] = holder.url
        run_command(cmd, env=cluster.node_env(f"{holder.name}-cli"))
    wait_complete(b, size)
    seed.popen.terminate()  # from here on, only the two holders have the bytes
    seed.popen.wait(30)
    tracker = next(p for p in cluster.procs if p.name == "tracker")
    watched = Watched({"holders": [a.proc.popen.pid, b.proc.popen.pid], "tracker": [tracker.popen.pid]})
    with watched.case() as servers:
        f = run_command(hfbt_pull(cluster, "taker", scratch("taker")), env=cluster.node_env("taker"))
    row = _row("holders_2_to_1", size, f.wall_s, usage(f), servers)
    # The holders' CPU is what two nodes spent to serve one copy between them.
    return row


# --- the record -------------------------------------------------------------------------------------


def summarize(runs: list[list[dict]]) -> dict:
    """Per case: the median run by MB/s (the other runs kept beside it)."""
    out = {}
    for case in CASES:
        rows = sorted((r for run in runs for r in run if r["case"] == case), key=lambda r: r["mb_per_s"])
        if rows:
            out[case] = {**rows[len(rows) // 2], "runs_mb_per_s": [r["mb_per_s"] for r in rows]}
    return out


def table(summary: dict) -> str:
    lines = [
        "| case | MB/s | node CPU s/GiB (system) | seed CPU s/GiB | node peak RSS MB | seed peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, r in summary.items():
        cpu, rss = r["cpu_s_per_gib"], r["peak_rss_mb"]
        serving = "seed" if "seed" in cpu else "holders" if "holders" in cpu else "origin"
        who = "" if serving == "seed" else f" ({serving})"
        lines.append(
            f"| {case} | {r['mb_per_s']} | {cpu.get('node', '–')}{sys_part(r)} | {cpu.get(serving, '–')}{who}"
            f" | {rss.get('node', '–')} | {rss.get(serving, '–')} |"
        )
    return "\n".join(lines)


def sys_part(row: dict) -> str:
    return f" ({row['node_sys_s_per_gib']})" if "node_sys_s_per_gib" in row else ""


def plot(summary: dict, out: Path, size: int) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(summary)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(cases, [summary[c]["mb_per_s"] for c in cases], color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("MB/s (file bytes / wall time)")
    ax.set_title(f"One {size / GIB:.0f} GiB file on 127.0.0.1, every case in each run (median run per case)")
    for i, c in enumerate(cases):
        ax.text(summary[c]["mb_per_s"], i, f" {summary[c]['mb_per_s']:.0f}", va="center")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = ap.parse_args(argv)
    cases = set(args.cases.split(","))
    if unknown := cases - set(CASES):
        ap.error(f"unknown cases: {sorted(unknown)}")
    if "curl" in cases and not shutil.which("curl"):
        ap.error("curl is not installed")
    size = args.size_mb * 1024 * 1024
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="hfbt-bench-tp-", dir=args.workdir) as tmp:
            runs.append(one_run(Path(tmp), size, cases))
        print(json.dumps({"run": i, "results": runs[-1]}), flush=True)
    summary = summarize(runs)
    record = {
        "bench": "throughput",
        "size_bytes": size,
        "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": summary,
        "all_runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    drawn = plot(summary, args.out.with_suffix(".png"), size)
    print(table(summary))
    print(f"wrote {args.out}" + (f" and {drawn}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
