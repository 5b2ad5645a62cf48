"""End to end: real origin, tracker, seed and agents as processes; real `hfbt pull` subprocesses;
the real huggingface_hub client reads the result offline."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download

from hfbt.cluster import LocalCluster
from tests.conftest import DATASET, MODEL, Deployment, files_of, make_origin, pull_cmd, run_hfbt


def origin_stats(d: Deployment) -> dict:
    return httpx.get(f"{d.cluster.origin_url}/_hfbt/stats").json()


def pull_args(d: Deployment, cache: Path, *extra: str) -> list[str]:
    return ["pull", *extra, "--tracker", d.cluster.tracker_url, "--cache-dir", str(cache), "--quiet"]


def assert_cache_valid(cache: Path) -> None:
    report = scan_cache_dir(cache)
    assert report.warnings == [], report.warnings
    partials = [p for p in cache.rglob("*") if p.name.endswith((".hfbt-partial", ".incomplete"))]
    assert partials == []


def test_three_nodes_pull_at_once_origin_serves_each_file_once(deployment: Deployment) -> None:
    agents = [deployment.cluster.start_agent(f"node{i}") for i in range(3)]

    def pull(agent):
        return run_hfbt(*pull_args(deployment, agent.cache_dir, MODEL, "--agent", agent.url))

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(pull, agents))
    originals = files_of(deployment.model_dir)
    for agent, r in zip(agents, results, strict=True):
        assert r.returncode == 0, r.stderr
        snap = Path(r.stdout.strip().splitlines()[-1])
        assert snap.parent.parent == agent.cache_dir / "models--acme--tiny"
        assert_cache_valid(agent.cache_dir)
        offline = Path(snapshot_download(MODEL, cache_dir=agent.cache_dir, local_files_only=True))
        assert offline == snap
        assert files_of(offline) == originals
        nested = hf_hub_download(
            MODEL, "nested/deeper/notes.md", cache_dir=agent.cache_dir, local_files_only=True
        )
        assert Path(nested).read_bytes() == originals["nested/deeper/notes.md"]
        assert (agent.cache_dir / "models--acme--tiny" / "refs" / "main").read_text() == snap.name
    served = origin_stats(deployment)["bytes_served"]
    for path, data in originals.items():
        assert served.get(f"model/{MODEL}/{path}", 0) == len(data), path
    # One mirror job for the three simultaneous requests.
    with deployment.operator() as op:
        jobs = op.get("/api/v1/jobs").json()["jobs"]
    assert len([j for j in jobs if j["repo_id"] == MODEL]) == 1


def test_embedded_pull_of_a_dataset_with_filters(deployment: Deployment, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    r = run_hfbt(
        *pull_args(
            deployment, cache, DATASET, "--repo-type", "dataset", "--include", "data/*", "--exclude", "*.csv"
        ),
        "--agent",
        "none",
        "--log-level",
        "info",
    )
    assert r.returncode == 0, r.stderr
    snap = Path(r.stdout.strip().splitlines()[-1])
    originals = files_of(deployment.dataset_dir)
    want = {p: b for p, b in originals.items() if p.startswith("data/") and not p.endswith(".csv")}
    assert want and files_of(snap) == want
    # What the cluster bench reads of an embedded pull: when it was done, and what it took and gave.
    assert "event=pull_done repo=" + DATASET in r.stderr
    (totals,) = re.findall(r"event=pull_exit .*", r.stderr)
    fields = dict(kv.split("=") for kv in totals.split()[1:])
    assert int(fields["downloaded"]) >= sum(len(b) for b in want.values())
    assert int(fields["uploaded"]) >= 0 and float(fields["lingered_s"]) >= 0
    assert_cache_valid(cache)
    offline = snapshot_download(
        DATASET,
        repo_type="dataset",
        cache_dir=cache,
        local_files_only=True,
        allow_patterns=["data/*.parquet"],
    )
    assert files_of(Path(offline)) == want


@pytest.mark.ref_ttl(0)
def test_second_pull_is_a_no_op_and_new_revision_moves_only_the_changed_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = run_hfbt(*pull_args(deployment, cache, MODEL, "--agent", "none"))
    assert first.returncode == 0, first.stderr
    old_snap = Path(first.stdout.strip().splitlines()[-1])

    tracker_log = next(p for p in deployment.cluster.procs if p.name == "tracker")
    node_calls = lambda: len(re.findall(r"path=/api/v1/(?:manifest|torrents)", tracker_log.log_text()))  # noqa: E731
    api_calls = node_calls()
    again = run_hfbt(*pull_args(deployment, cache, MODEL, "--agent", "none"))
    assert again.returncode == 0 and Path(again.stdout.strip().splitlines()[-1]) == old_snap
    # A complete revision costs the node exactly one tracker request.
    assert node_calls() - api_calls == 1

    httpx.post(f"{deployment.cluster.origin_url}/_hfbt/stats/reset")
    (deployment.model_dir / "config.json").write_text('{"model_type": "llama", "changed": true}\n')
    blobs_before = set((cache / "models--acme--tiny" / "blobs").iterdir())
    second = run_hfbt(*pull_args(deployment, cache, MODEL, "--agent", "none"))
    assert second.returncode == 0, second.stderr
    new_snap = Path(second.stdout.strip().splitlines()[-1])
    assert new_snap != old_snap
    assert files_of(new_snap) == files_of(deployment.model_dir)
    new_blobs = set((cache / "models--acme--tiny" / "blobs").iterdir()) - blobs_before
    assert [b.read_bytes() for b in new_blobs] == [(deployment.model_dir / "config.json").read_bytes()]
    # The origin served the changed file only; the old snapshot stays intact next to the new one.
    served = {k: v for k, v in origin_stats(deployment)["bytes_served"].items() if v}
    assert served == {f"model/{MODEL}/config.json": len((deployment.model_dir / "config.json").read_bytes())}
    assert (old_snap / "config.json").exists()
    assert_cache_valid(cache)


@pytest.mark.parametrize(
    "args,message",
    [
        (("acme/nope",), "not found"),
        ((MODEL, "--revision", "no-such-branch"), "revision"),
        (("../etc",), "invalid repo id"),
        ((MODEL, "--repo-type", "space"), "repo type"),
    ],
)
def test_bad_pulls_fail_with_one_clear_line(deployment: Deployment, tmp_path: Path, args, message) -> None:
    r = run_hfbt(*pull_args(deployment, tmp_path / "cache", *args, "--agent", "none"), timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert message in r.stderr.lower()
    assert r.stdout.strip() == ""
    assert httpx.get(f"{deployment.cluster.tracker_url}/healthz").status_code == 200


def test_tracker_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    r = run_hfbt(
        "pull", MODEL, "--tracker", "http://127.0.0.1:9", "--cache-dir", str(tmp_path), "--agent", "none"
    )
    assert r.returncode == 1 and "cannot reach the tracker" in r.stderr and "Traceback" not in r.stderr


def test_agent_restart_reseeds_and_serves_without_the_seed(deployment: Deployment) -> None:
    node1 = deployment.cluster.start_agent("node1")
    r = run_hfbt(*pull_args(deployment, node1.cache_dir, MODEL, "--agent", node1.url))
    assert r.returncode == 0, r.stderr
    # Restart node1 and stop the seed: node2 can only get the blobs from node1's cache.
    for proc in list(deployment.cluster.procs):
        if proc.name in ("node1", "seed"):
            proc.popen.terminate()
            proc.popen.wait(10)
            deployment.cluster.procs.remove(proc)
    node1 = deployment.cluster.start_agent("node1")
    status = httpx.get(f"{node1.url}/v1/status").json()
    assert status["totals"]["torrents"] >= 2 and all(
        t["seeding"] or t["done"] == t["total"] for t in status["torrents"]
    )
    node2 = deployment.cluster.start_agent("node2")
    r = run_hfbt(*pull_args(deployment, node2.cache_dir, MODEL, "--agent", node2.url), timeout=120)
    assert r.returncode == 0, r.stderr
    assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(deployment.model_dir)


def test_pull_help_lists_env_vars() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hfbt", "pull", "--help"], capture_output=True, text=True
    ).stdout
    assert "HFBT_TRACKER" in out and "HFBT_CACHE_DIR" in out


def test_killed_pull_leaves_no_partial_file_under_a_final_name_and_resumes(tmp_path: Path) -> None:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed(extra=("--upload-mbit", "24"))  # ~3 MB/s: the pull is still running when killed
        cache = tmp_path / "cache"
        args = pull_cmd(cluster.tracker_url, cache)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hfbt", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        blobs = cache / "models--acme--tiny" / "blobs"
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".hfbt-partial") and p.stat().st_size for p in blobs.glob("*")):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the pull ended before it could be killed"
            )
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        shards = {p: b for p, b in files_of(root / "models" / MODEL).items() if p.endswith(".safetensors")}
        for blob in blobs.iterdir():
            # Whatever sits under a final name is complete and correct.
            if not blob.name.endswith(".hfbt-partial"):
                assert blob.read_bytes() in files_of(root / "models" / MODEL).values()
        assert any(p.name.endswith(".hfbt-partial") for p in blobs.iterdir())
        assert not (cache / "models--acme--tiny" / "refs" / "main").exists()
        assert scan_cache_dir(cache).warnings == []
        again = run_hfbt(*args, timeout=180)
        assert again.returncode == 0, again.stderr
        snap = Path(again.stdout.strip().splitlines()[-1])
        assert {p: b for p, b in files_of(snap).items() if p in shards} == shards
        assert_cache_valid(cache)


def _event_time(log: str, event: str, path: str) -> datetime:
    for line in log.splitlines():
        if f"event={event} " in line and f"path={path} " in line:
            return datetime.strptime(line.split("ts=", 1)[1][:23], "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"no {event} for {path} in the log")


def test_nodes_start_on_shard_1_while_shard_2_still_comes_from_the_origin(tmp_path: Path) -> None:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root, extra=("--max-mbit", "20"))  # a slow Hub link: ~4 s per shard
        cluster.start_tracker(ref_ttl=300)
        seed = cluster.start_seed(extra=("--parallel-files", "1"))
        node = cluster.start_agent("node1")
        r = run_hfbt(*pull_cmd(cluster.tracker_url, node.cache_dir, "--agent", node.url))
        assert r.returncode == 0, r.stderr
        shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        published = _event_time(node.proc.log_text(), "blob_published", shard1)
        shard2_mirrored = _event_time(seed.log_text(), "blob_mirrored", shard2)
        assert published < shard2_mirrored


def test_a_blob_shared_by_two_repos_is_fetched_once_and_linked(deployment: Deployment) -> None:
    import shutil

    twin = deployment.origin_root / "models" / "acme" / "tiny-finetune"
    shutil.copytree(deployment.model_dir, twin)
    (twin / "config.json").write_text('{"model_type": "llama", "finetuned": true}\n')
    node = deployment.cluster.start_agent("node1")
    for repo in (MODEL, "acme/tiny-finetune"):
        r = run_hfbt(*pull_args(deployment, node.cache_dir, repo, "--agent", node.url))
        assert r.returncode == 0, r.stderr
    snap = Path(r.stdout.strip().splitlines()[-1])
    assert files_of(snap) == files_of(twin)
    shard = "model-00001-of-00002.safetensors"
    a = (node.cache_dir / "models--acme--tiny" / "snapshots").glob(f"*/{shard}")
    b = snap / shard
    assert next(a).resolve().stat().st_ino == b.resolve().stat().st_ino  # one copy on disk
    assert_cache_valid(node.cache_dir)


def test_pull_with_no_seed_fails_after_the_stall_timeout(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(make_origin(tmp_path / "origin"))
        cluster.start_tracker()
        r = run_hfbt(*pull_cmd(cluster.tracker_url, tmp_path / "c", "--stall-timeout", "2"))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "no progress" in r.stderr and "no seed is registered" in r.stderr


def test_a_stalled_file_falls_back_to_the_origin_when_asked(deployment: Deployment, tmp_path: Path) -> None:
    # node1 completes the revision, then the seed and node1 go away: the swarm has no copy left.
    node1 = deployment.cluster.start_agent("node1")
    assert run_hfbt(*pull_args(deployment, node1.cache_dir, MODEL, "--agent", node1.url)).returncode == 0
    for proc in list(deployment.cluster.procs):
        if proc.name in ("node1", "seed"):
            proc.popen.terminate()
            proc.popen.wait(10)
            deployment.cluster.procs.remove(proc)
    httpx.post(f"{deployment.cluster.origin_url}/_hfbt/stats/reset")
    cache = tmp_path / "cache"
    failed = run_hfbt(*pull_cmd(deployment.cluster.tracker_url, cache, "--stall-timeout", "2"))
    assert failed.returncode == 1 and "no peer sent data" in failed.stderr
    # A pull that ends keeps resume data for what it had started (default state dir: beside the cache).
    assert list((tmp_path / ".hfbt-cache" / "resume").glob("*.resume"))
    ok = run_hfbt(
        *pull_cmd(deployment.cluster.tracker_url, cache, "--stall-timeout", "2"),
        *["--fallback-origin", deployment.cluster.origin_url],
    )
    assert ok.returncode == 0, ok.stderr
    assert files_of(Path(ok.stdout.strip().splitlines()[-1])) == files_of(deployment.model_dir)
    assert_cache_valid(cache)
    # It came from the origin (and was checked against the manifest like any blob).
    assert origin_stats(deployment)["total_bytes"] > 0
