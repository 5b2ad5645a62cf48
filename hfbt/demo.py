"""`hfbt demo`: the whole system on one machine with no internet.

A synthetic model repo is served by a local HF-compatible origin; a tracker, a seed and N node
agents run as real subprocesses on 127.0.0.1; the N nodes pull at once; every node's cache is then
checked with huggingface_hub itself, and the origin's byte counter shows it served one copy.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from hfbt.agent.client import AgentClient
from hfbt.agent.protocol import PullRequest
from hfbt.cluster import LocalCluster
from hfbt.errors import HfbtError
from hfbt.hashing import sha256_file
from hfbt.synth import make_model_repo

DEMO_REPO = "hfbt-demo/synthetic-7b"


def run_demo(size_mb: int = 300, nodes: int = 3, workdir: Path | None = None) -> None:
    console = Console(stderr=False)
    keep = workdir is not None
    work = Path(workdir or tempfile.mkdtemp(prefix="hfbt-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _run(console, work, size_mb, nodes)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    console.print(f"[dim]{'kept' if keep else 'removed'} {work}[/dim]")


def _run(console: Console, work: Path, size_mb: int, nodes: int) -> None:
    console.rule("hfbt demo")
    src = work / "origin" / "models" / DEMO_REPO
    sizes = make_model_repo(src, shard_mb=max(1.0, (size_mb - 2) / 2))
    total = sum(sizes.values())
    console.print(f"synthetic repo [bold]{DEMO_REPO}[/bold]: {len(sizes)} files, {total / 1e6:.0f} MB")
    with LocalCluster(work) as cluster:
        console.print(
            f"origin   {cluster.start_origin(work / 'origin')}  (hfbt serve-dir, counts bytes served)"
        )
        console.print(
            f"tracker  {cluster.start_tracker(closed=True, ref_ttl=30)}  (closed: each node its own identity)"
        )
        cluster.start_seed()
        console.print("seed     registered")
        agents = [cluster.start_agent(f"node{i + 1}") for i in range(nodes)]
        for a in agents:
            console.print(f"{a.name:8} {a.url}  cache {a.cache_dir}")
        t0 = time.monotonic()
        snapshots = _pull_all(console, agents)
        wall = time.monotonic() - t0
        console.print(f"all {nodes} nodes complete in {wall:.1f}s")
        _verify(console, agents, src, snapshots)
        stats = httpx.get(f"{cluster.origin_url}/_hfbt/stats").json()
    table = Table(title="bytes")
    table.add_column("what")
    table.add_column("bytes", justify="right")
    table.add_column("copies of the repo", justify="right")
    table.add_row("served by the origin", f"{stats['total_bytes']:,}", f"{stats['total_bytes'] / total:.2f}")
    table.add_row("delivered to nodes", f"{total * nodes:,}", f"{nodes:.2f}")
    console.print(table)


def _pull_all(console: Console, agents: list) -> dict[str, Path]:
    results: dict[str, Path | HfbtError] = {}
    with Progress(
        TextColumn("{task.description:8}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
    ) as progress:
        tasks = {a.name: progress.add_task(a.name, total=None) for a in agents}

        def one(agent) -> None:
            try:
                for ev in AgentClient(agent.url).pull(PullRequest(DEMO_REPO)):
                    if ev["event"] == "progress":
                        progress.update(tasks[agent.name], total=ev["total"], completed=ev["done"])
                    elif ev["event"] == "done":
                        results[agent.name] = Path(ev["snapshot"])
                        t = progress.tasks[tasks[agent.name]]
                        progress.update(tasks[agent.name], completed=t.total or 0)
                    elif ev["event"] == "error":
                        results[agent.name] = HfbtError(ev["code"], ev["message"])
            except HfbtError as e:
                results[agent.name] = e

        threads = [threading.Thread(target=one, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name, r in results.items():
        if isinstance(r, HfbtError):
            raise HfbtError(r.code, f"{name}: {r.message}")
    missing = [a.name for a in agents if a.name not in results]
    if missing:
        raise HfbtError("DemoFailed", f"no result from {', '.join(missing)}")
    return results  # type: ignore[return-value]


def _verify(console: Console, agents: list, src: Path, snapshots: dict[str, Path]) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    want = {p.relative_to(src).as_posix(): sha256_file(p) for p in sorted(src.rglob("*")) if p.is_file()}
    for a in agents:
        snap = Path(snapshot_download(DEMO_REPO, cache_dir=a.cache_dir, local_files_only=True))
        got = {p.relative_to(snap).as_posix(): sha256_file(p) for p in sorted(snap.rglob("*")) if p.is_file()}
        report = scan_cache_dir(a.cache_dir)
        if got != want or report.warnings or snap != snapshots[a.name]:
            raise HfbtError("DemoFailed", f"{a.name}: cache differs from the origin or scan_cache_dir warned")
        console.print(
            f"{a.name:8} [green]verified[/green]: snapshot_download(local_files_only=True)"
            f" → {len(got)} files, bytes equal"
        )
