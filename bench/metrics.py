"""The pure parts of the benchmark: the Kumar–Ross bound, CPU accounting, the result record."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

# embedded: warm, each node a plain `hfbt pull --agent none` (no agent; it lingers, then exits).
MODES = ("cold", "warm", "embedded", "http")
# What every line of bench/results/cluster.jsonl carries at least (issue 4).
REQUIRED_FIELDS = (
    "mode",
    "nodes",
    "size_bytes",
    "origin_mbit",
    "node_mbit",
    "wall_s",
    "bound_s",
    "origin_bytes",
    "seed_upload_bytes",
    "cpu_saturated",
)
SATURATED_BUSY = 0.90  # the machine's busy share above which a sample counts as saturated
SATURATED_SHARE = 0.5  # ... and the share of samples that must be above it for the run to be invalid


def mbit_to_bytes_per_s(mbit: float) -> float:
    return mbit * 1_000_000 / 8


def kumar_ross_bound(
    size_bytes: int, source_mbit: float, down_mbit: Sequence[float], up_mbit: Sequence[float]
) -> float:
    """T* = max(F/u_s, F/min d_i, N·F/(u_s + Σu_i)) in seconds (Kumar & Ross 2006).

    F: file size; u_s: the source's upload; d_i / u_i: each of the N nodes' download / upload.
    """
    if not down_mbit or len(down_mbit) != len(up_mbit):
        raise ValueError("one download and one upload rate per node")
    f = float(size_bytes)
    u_s = mbit_to_bytes_per_s(source_mbit)
    d_min = mbit_to_bytes_per_s(min(down_mbit))
    u_sum = sum(mbit_to_bytes_per_s(u) for u in up_mbit)
    n = len(down_mbit)
    return max(f / u_s, f / d_min, n * f / (u_s + u_sum))


def bound_for(mode: str, nodes: int, size_bytes: int, origin_mbit: float, node_mbit: float) -> float:
    """The bound of one benchmark run.

    warm, embedded: the source is the seed, whose link is capped at U like a node's.
    cold: the first copy has to come through the origin's link B, and into the seed (download U).
    http: every node reads the origin directly: the same source, u_s = B (the bound is a property of the
          network, not of the protocol; the baseline is compared with the same T* as cold).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    source = {
        "warm": node_mbit,
        "embedded": node_mbit,
        "cold": min(origin_mbit, node_mbit),
        "http": origin_mbit,
    }[mode]
    return kumar_ross_bound(size_bytes, source, [node_mbit] * nodes, [node_mbit] * nodes)


# --- CPU -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    busy: float  # jiffies
    total: float


def parse_proc_stat(text: str) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat; idle and iowait count as not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            vals = [float(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice; guest* are inside user/nice
            total = sum(vals[:8])
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
            return CpuTimes(busy=total - idle, total=total)
    raise ValueError("no aggregate cpu line in /proc/stat")


def busy_share(prev: CpuTimes, cur: CpuTimes) -> float:
    dt = cur.total - prev.total
    if dt <= 0:
        return 0.0
    return max(0.0, min(1.0, (cur.busy - prev.busy) / dt))


def cpu_saturated(
    samples: Sequence[float], busy: float = SATURATED_BUSY, share: float = SATURATED_SHARE
) -> bool:
    """A run is CPU-bound (not a valid network measurement) when the whole machine's busy share stays
    above `busy` for at least `share` of the samples."""
    if not samples:
        return False
    above = sum(1 for s in samples if s > busy)
    return above / len(samples) >= share


def parse_pid_stat(text: str) -> float:
    """utime + stime (jiffies) from /proc/<pid>/stat; the command name may contain spaces."""
    fields = text[text.rindex(")") + 2 :].split()
    return float(fields[11]) + float(fields[12])  # fields 14 and 15 of proc(5), counted from 1


def process_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process (missing processes are left out)."""
    import os

    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                out[name] = parse_pid_stat(f.read()) / hz
        except (OSError, ValueError, IndexError):
            continue
    return out


class CpuSampler:
    """Samples the machine's busy share from /proc/stat every `period` seconds (a background thread)."""

    def __init__(self, period: float = 0.5, path: str = "/proc/stat") -> None:
        import threading

        self.period = period
        self.path = path
        self.samples: list[float] = []
        self._first: CpuTimes | None = None
        self._last: CpuTimes | None = None
        self._t0 = 0.0
        self._t1 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _read(self) -> CpuTimes:
        with open(self.path) as f:
            return parse_proc_stat(f.read())

    def start(self) -> CpuSampler:
        self._first = self._last = self._read()
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            cur = self._read()
            assert self._last is not None
            self.samples.append(busy_share(self._last, cur))
            self._last = cur

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=2)
        end = self._read()
        self._t1 = time.monotonic()
        assert self._first is not None
        import os

        hz = os.sysconf("SC_CLK_TCK")
        mean = busy_share(self._first, end)
        return {
            "cpu_busy_mean": round(mean, 3),
            "cpu_busy_max": round(max(self.samples), 3) if self.samples else round(mean, 3),
            "cpu_seconds": round((end.busy - self._first.busy) / hz, 1),
            "cpu_cores": os.cpu_count(),
            "cpu_samples": len(self.samples),
            "cpu_saturated": cpu_saturated(self.samples) or mean > SATURATED_BUSY,
        }


# --- the record ----------------------------------------------------------------------------------


def make_record(
    *,
    mode: str,
    nodes: int,
    size_bytes: int,
    origin_mbit: float,
    node_mbit: float,
    wall_s: float | None,
    origin_bytes: int,
    seed_upload_bytes: int | None,
    cpu: dict,
    **extra: object,
) -> dict:
    """One line of bench/results/cluster.jsonl; ratios are derived here so every run computes them alike."""
    bound = bound_for(mode, nodes, size_bytes, origin_mbit, node_mbit)
    rec: dict = {
        "mode": mode,
        "nodes": nodes,
        "size_bytes": size_bytes,
        "origin_mbit": origin_mbit,
        "node_mbit": node_mbit,
        "wall_s": None if wall_s is None else round(wall_s, 2),
        "bound_s": round(bound, 2),
        "wall_over_bound": None if wall_s is None else round(wall_s / bound, 3),
        "origin_bytes": origin_bytes,
        "origin_copies": round(origin_bytes / size_bytes, 3),
        "seed_upload_bytes": seed_upload_bytes,
        "seed_upload_copies": None if seed_upload_bytes is None else round(seed_upload_bytes / size_bytes, 3),
        "cpu_saturated": bool(cpu.get("cpu_saturated", False)),
        **{k: v for k, v in cpu.items() if k != "cpu_saturated"},
        **extra,
    }
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    assert not missing, missing
    return rec
