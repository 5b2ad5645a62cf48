"""Draw bench/results/cluster.jsonl: wall time vs N for hfbt cold, hfbt warm, plain HTTP and the bound.

    python -m bench.plot [--results bench/results/cluster.jsonl] [--out bench/results/cluster.png]
                         [--label TEXT ...] [--size-mb 256 --origin-mbit 50 --node-mbit 100] [--table]

For every (mode, N) the latest run with the given S, B, U (and --label, if given) is drawn; a
CPU-saturated run is drawn hollow and marked, since it measured the machine, not the network.
Needs matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.metrics import bound_for

RESULTS = Path(__file__).resolve().parent / "results"
STYLE = {
    "cold": ("hfbt cold (seed empty)", "tab:blue", "o"),
    "warm": ("hfbt warm (seed mirrored)", "tab:green", "s"),
    "http": ("plain HTTP from the origin", "tab:red", "^"),
}


def load(
    path: Path, size_mb: int, origin_mbit: float, node_mbit: float, labels: list[str] | None = None
) -> dict:
    """{(mode, nodes): record}, the latest matching run per point."""
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if (r.get("size_mb"), r.get("origin_mbit"), r.get("node_mbit")) != (size_mb, origin_mbit, node_mbit):
            continue
        if labels and r.get("label") not in labels:
            continue
        if r.get("wall_s") is None:
            continue
        latest[(r["mode"], r["nodes"])] = r
    return latest


def draw(points: dict, out: Path, size_mb: int, origin_mbit: float, node_mbit: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ns = sorted({n for _, n in points})
    size = next(iter(points.values()))["size_bytes"] if points else int(size_mb * 1024 * 1024)
    if ns:
        grid = list(range(min(ns), max(ns) + 1))
        for mode, ls, name in (("cold", "--", "bound T* cold"), ("warm", ":", "bound T* warm")):
            ax.plot(
                grid,
                [bound_for(mode, n, size, origin_mbit, node_mbit) for n in grid],
                ls,
                color="black",
                label=name,
            )
    for mode, (name, color, marker) in STYLE.items():
        pts = sorted((n, r) for (m, n), r in points.items() if m == mode)
        if not pts:
            continue
        xs = [n for n, _ in pts]
        ax.plot(xs, [r["wall_s"] for _, r in pts], "-", color=color, marker=marker, label=name)
        ax2.plot(xs, [r["wall_over_bound"] for _, r in pts], "-", color=color, marker=marker, label=name)
        for n, r in pts:
            if r.get("cpu_saturated"):
                for a, y in ((ax, r["wall_s"]), (ax2, r["wall_over_bound"])):
                    a.plot([n], [y], marker, markersize=13, mfc="none", color="black")
                    a.annotate("CPU-bound", (n, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax2.axhline(1.25, color="tab:green", ls=":", lw=1, label="target warm 1.25")
    ax2.axhline(1.3, color="tab:blue", ls=":", lw=1, label="target cold 1.3")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("nodes N")
    ax.set_ylabel("time until the last node has the repo (s)")
    ax.set_title(
        f"S = {size / 2**20:.0f} MiB, origin link B = {origin_mbit:g} Mbit/s,"
        f" node links U = {node_mbit:g} Mbit/s"
    )
    ax.set_ylim(bottom=0)
    ax2.set_xlabel("nodes N")
    ax2.set_ylabel("wall time / T*  (HTTP against the cold bound)")
    ax2.set_yscale("log")
    ax2.set_title("distance from the Kumar–Ross bound")
    for a in (ax, ax2):
        a.set_xticks(ns or [1])
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def table(points: dict) -> str:
    """The results as a Markdown table (for bench/README.md)."""
    rows = [
        "| mode | N | wall s | T* s | wall/T* | origin bytes/S | seed upload/S | CPU busy | CPU-bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    order = {"cold": 0, "warm": 1, "http": 2}
    for (mode, n), r in sorted(points.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        seed = "–" if r.get("seed_upload_copies") is None else f"{r['seed_upload_copies']:.2f}"
        rows.append(
            f"| {mode} | {n} | {r['wall_s']:.1f} | {r['bound_s']:.1f} | {r['wall_over_bound']:.2f} | "
            f"{r['origin_copies']:.2f} | {seed} | {r.get('cpu_busy_mean', 0):.0%} | "
            f"{'**yes**' if r.get('cpu_saturated') else 'no'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot")
    p.add_argument("--results", default=str(RESULTS / "cluster.jsonl"))
    p.add_argument("--out", default=str(RESULTS / "cluster.png"))
    p.add_argument(
        "--label", action="append", help="only runs with this label (repeatable; default: any label)"
    )
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--origin-mbit", type=float, default=50.0)
    p.add_argument("--node-mbit", type=float, default=100.0)
    p.add_argument("--table", action="store_true", help="print a Markdown table instead of drawing")
    a = p.parse_args(argv)
    points = load(Path(a.results), a.size_mb, a.origin_mbit, a.node_mbit, a.label)
    if not points:
        print(f"no matching runs in {a.results}")
        return 1
    if a.table:
        print(table(points))
        return 0
    out = draw(points, Path(a.out), a.size_mb, a.origin_mbit, a.node_mbit)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
