"""Time to first byte and throughput of a cold file read through the HF_ENDPOINT shim, next to the
same file read once it is complete in the agent's cache.

    python -m bench.shim [--size-mb 1024] [--runs 3]

Everything runs on 127.0.0.1 (origin, tracker, seed, one agent) as real processes. Cases:
- shim_cold_node: the seed already mirrored the file; the node has nothing. The GET starts the
  node's fetch and streams pieces as they are verified.
- shim_cold_all: nothing anywhere: the seed mirrors from the origin first (one file = one torrent,
  published when the whole file is mirrored and hashed).
- shim_cached: the blob is complete in the agent's cache; the shim serves it from disk.
- disk: the same blob read straight from the cache file (the floor).
Writes one JSON object per case to bench/results/shim.json (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hfbt.cluster import LocalCluster
from hfbt.synth import write_random_file

REPO = "bench/big"
NAME = "model.safetensors"
RESULTS = Path(__file__).parent / "results" / "shim.json"


def make_repo(root: Path, size: int) -> None:
    d = root / "models" / REPO
    write_random_file(d / NAME, size, seed=7)
    (d / "config.json").write_text('{"model_type": "bench"}\n')


def timed_get(url: str) -> dict:
    t0 = time.perf_counter()
    with httpx.stream("GET", url, timeout=600) as r:
        r.raise_for_status()
        return _measure(t0, r.iter_raw(1024 * 1024))


def read_disk(path: Path) -> dict:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        return _measure(t0, iter(lambda: f.read(1024 * 1024), b""))


def _measure(t0: float, chunks: Iterator[bytes]) -> dict:
    first = None
    n = 0
    for chunk in chunks:
        if first is None:
            first = time.perf_counter() - t0
        n += len(chunk)
    total = time.perf_counter() - t0
    return {
        "ttfb_s": round(first or total, 4),
        "total_s": round(total, 3),
        "bytes": n,
        "mb_per_s": round(n / total / 1e6, 1),
    }


def one_run(work: Path, size: int) -> list[dict]:
    out = []
    make_repo(work / "origin", size)
    with LocalCluster(work / "run") as cluster:
        cluster.start_origin(work / "origin")
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        cold_all = cluster.start_agent("cold-all")
        url = f"/{REPO}/resolve/main/{NAME}"
        out.append({"case": "shim_cold_all", **timed_get(cold_all.shim_url + url)})
        node = cluster.start_agent("cold-node")  # the seed has it now; this node has nothing
        out.append({"case": "shim_cold_node", **timed_get(node.shim_url + url)})
        blobs = node.cache_dir / "models--bench--big" / "blobs"
        deadline = time.monotonic() + 300
        while not any(len(p.name) == 64 for p in blobs.iterdir()):  # the node publishes its copy
            if time.monotonic() > deadline:
                raise SystemExit("the node never completed its copy")
            time.sleep(0.2)
        out.append({"case": "shim_cached", **timed_get(node.shim_url + url)})
        blob = next(p for p in blobs.iterdir() if len(p.name) == 64)
        out.append({"case": "disk", **read_disk(blob)})
    return out


def _median(rows: list[dict], key: str) -> float:
    return sorted(r[key] for r in rows)[len(rows) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="hfbt-bench-shim-") as tmp:
            runs.append(one_run(Path(tmp), size))
        print(json.dumps({"run": i, "results": runs[-1]}), flush=True)
    summary = {}
    for case in [r["case"] for r in runs[0]]:
        rows = [r for run in runs for r in run if r["case"] == case]
        summary[case] = {
            "ttfb_s_median": _median(rows, "ttfb_s"),
            "mb_per_s_median": _median(rows, "mb_per_s"),
            "runs": rows,
        }
    record = {
        "bench": "shim",
        "size_bytes": size,
        "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(
        json.dumps(
            {k: {kk: v[kk] for kk in ("ttfb_s_median", "mb_per_s_median")} for k, v in summary.items()}
        )
    )


if __name__ == "__main__":
    main()
