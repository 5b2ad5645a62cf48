"""The benchmark's pure parts (bound, CPU accounting, record shape) and a tiny loopback run.

Network-namespace runs measure; they stay out of the test suite.
"""

from __future__ import annotations

import json
import sys

import pytest

from bench import metrics
from bench.cluster import Options, run_once
from tracker.handout import seed_fanout
from tracker.peerstore import Peer

MB = 1_000_000


def test_bound_is_the_largest_of_the_three_terms() -> None:
    f = 100 * MB  # 800 Mbit
    # source-limited: F/u_s
    assert metrics.kumar_ross_bound(f, 10, [1000] * 4, [1000] * 4) == pytest.approx(80.0)
    # slowest downloader: F/min d_i
    assert metrics.kumar_ross_bound(f, 1000, [1000, 100, 1000], [1000] * 3) == pytest.approx(8.0)
    # aggregate upload: N·F/(u_s + Σu_i) = 10 · 800 / (100 + 10·10)
    assert metrics.kumar_ross_bound(f, 100, [1000] * 10, [10] * 10) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        metrics.kumar_ross_bound(f, 100, [], [])


def test_bound_per_mode() -> None:
    f = 256 * 2**20
    warm = metrics.bound_for("warm", 8, f, 50, 100)
    cold = metrics.bound_for("cold", 8, f, 50, 100)
    assert warm == pytest.approx(f * 8 / 100e6)  # F/U: the seed's link (and every node's) is U
    assert cold == pytest.approx(f * 8 / 50e6)  # F/B: the first copy crosses the origin's link
    assert metrics.bound_for("http", 8, f, 50, 100) == pytest.approx(cold)
    assert metrics.bound_for("embedded", 8, f, 50, 100) == pytest.approx(warm)  # warm, without agents
    # many nodes: N·F/(u_s + N·U) → F/U from below; a fast origin makes the node links the limit
    assert metrics.bound_for("cold", 12, f, 1000, 100) == pytest.approx(f * 8 / 100e6)
    with pytest.raises(ValueError):
        metrics.bound_for("magic", 2, f, 1, 1)


def test_cpu_accounting() -> None:
    stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1\n"
    t = metrics.parse_proc_stat(stat)
    assert (t.busy, t.total) == (150.0, 1000.0)
    later = metrics.CpuTimes(busy=150 + 95, total=1000 + 100)
    assert metrics.busy_share(t, later) == pytest.approx(0.95)
    assert metrics.busy_share(t, t) == 0.0
    # saturated only when most samples sit above 90 %
    assert metrics.cpu_saturated([0.95, 0.97, 0.99, 0.5])
    assert not metrics.cpu_saturated([0.95, 0.5, 0.4, 0.3])
    assert not metrics.cpu_saturated([])
    # /proc/<pid>/stat: the command name may hold spaces and parentheses
    pid_stat = "42 (py thon (x)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 1000 10"
    assert metrics.parse_pid_stat(pid_stat) == 10.0


def test_cpu_sampler_reads_this_machine() -> None:
    s = metrics.CpuSampler(period=0.05).start()
    sum(i * i for i in range(200_000))
    out = s.stop()
    assert 0.0 <= out["cpu_busy_mean"] <= 1.0
    assert isinstance(out["cpu_saturated"], bool)


def test_record_shape() -> None:
    cpu = {"cpu_saturated": False, "cpu_busy_mean": 0.4}
    f = 256 * 2**20
    rec = metrics.make_record(
        mode="warm",
        nodes=4,
        size_bytes=f,
        origin_mbit=50,
        node_mbit=100,
        wall_s=25.0,
        origin_bytes=f,
        seed_upload_bytes=f // 2,
        cpu=cpu,
        label="x",
    )
    for k in metrics.REQUIRED_FIELDS:
        assert k in rec
    assert rec["origin_copies"] == 1.0 and rec["seed_upload_copies"] == 0.5
    assert rec["wall_over_bound"] == pytest.approx(25.0 / rec["bound_s"], abs=1e-3)
    assert rec["cpu_saturated"] is False and rec["label"] == "x"
    json.dumps(rec)


def _peer(i: int, left: int = 1) -> Peer:
    return Peer(bytes([i]) * 20, f"10.0.0.{i}", 6881, left)


def test_seed_fanout_handout() -> None:
    seed = _peer(1, left=0)
    leechers = [_peer(i) for i in range(2, 10)]
    cands = [seed, *leechers]
    # the seeder is handed only the first two leechers, and only they get the seeder
    assert {p.ip for p in seed_fanout(seed, cands, 50)} == {"10.0.0.2", "10.0.0.3"}
    assert seed in seed_fanout(leechers[0], cands, 50)
    late = seed_fanout(leechers[5], cands, 50)
    assert seed not in late and len(late) == len(leechers) - 1
    # once the first leechers complete, the next in line get the seeders
    done = [seed, _peer(2, left=0), _peer(3, left=0), *leechers[2:]]
    assert seed in seed_fanout(leechers[2], done, 50)
    # a lone leecher always gets them all
    assert seed_fanout(leechers[0], [seed, leechers[0]], 50) == [seed]


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/stat")
def test_tiny_loopback_run(tmp_path) -> None:
    opts = Options(
        nodes=2,
        origin_mbit=400,
        node_mbit=400,
        size_mb=8,
        loopback=True,
        data_dir=tmp_path / "data",
        results=None,
        quiet=True,
        timeout=120,
    )
    rec = run_once(opts, "warm")
    assert rec["mode"] == "warm" and rec["nodes"] == 2
    assert rec["network"].startswith("loopback")
    assert rec["wall_s"] > 0 and set(rec["per_node_s"]) == {"n01", "n02"}
    assert rec["origin_bytes"] == rec["size_bytes"]  # the seed mirrored it once, before the clock started
    assert rec["seed_upload_bytes"] is not None and rec["seed_upload_bytes"] > 0


def test_throughput_bench_runs_every_case_on_a_small_file(tmp_path) -> None:  # noqa: ANN001
    """bench.throughput end to end on 8 MiB: every case measured, the record and table written."""
    from bench import throughput

    out = tmp_path / "throughput.json"
    assert (
        throughput.main(["--size-mb", "8", "--runs", "1", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    )
    record = json.loads(out.read_text())
    assert set(record["cases"]) == set(throughput.CASES)
    for case, row in record["cases"].items():
        assert row["mb_per_s"] > 0 and row["cpu_s_per_gib"], case
    assert (
        record["cases"]["pull_2"]["per_node_mb_per_s"]
        and "holders" in record["cases"]["holders_2_to_1"]["cpu_s_per_gib"]
    )
