"""Two `hfbt tracker` replicas sharing a real Redis (peers) and a real PostgreSQL (registry, jobs).

The nodes and the seed are real processes pointed at one replica or the other, as a Service would spread
them; nothing in this test talks to the trackers except through their HTTP APIs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from huggingface_hub import snapshot_download

from hfbt.cluster import LocalCluster
from tests.conftest import MODEL, files_of, make_origin, run_hfbt
from tests.test_e2e_pull import assert_cache_valid

COMMIT_WAIT_S = 60


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, redis_url: str) -> LocalCluster:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        shared = ("--peer-store", redis_url, "--ticket-key", str(tmp_path / "ticket.key"))
        shared += ("--announce-interval", "2")  # nodes re-announce soon after a replica dies
        cluster.urls = [  # type: ignore[attr-defined]
            cluster.start_tracker(closed=True, ref_ttl=300, db=pg_url, name=f"tracker{i}", extra=shared)
            for i in (0, 1)
        ]
        cluster.origin_root = root  # type: ignore[attr-defined]
        yield cluster
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "run" / "logs").glob("*.log")}
    assert not [name for name, text in logs.items() if "Traceback" in text], logs
    secrets = [s for s in (cluster.operator_token, cluster.seed_token, os.environ["PGPASSWORD"]) if s]
    assert not [name for name, text in logs.items() if any(s in text for s in secrets)]


def _operator(cluster: LocalCluster, url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {cluster.operator_token}"}, timeout=30
    )


def _jobs(cluster: LocalCluster, url: str) -> list[dict]:
    with _operator(cluster, url) as op:
        return [j for j in op.get("/api/v1/jobs").json()["jobs"] if j["repo_id"] == MODEL]


def _pull_args(tracker: str, agent_url: str, cache: Path) -> list[str]:
    return ["pull", MODEL, "--tracker", tracker, "--agent", agent_url, "--cache-dir", str(cache), "-q"]


def _pull(cluster: LocalCluster, tracker: str, agent_url: str, cache: Path) -> str:
    r = run_hfbt(*_pull_args(tracker, agent_url, cache))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_twenty_manifest_requests_over_both_replicas_make_one_job(replicas: LocalCluster) -> None:
    cluster = replicas
    node = cluster.node_env("probe")  # enrolled through replica 1, the latest started
    headers = {"Authorization": f"Bearer {next(iter(node.values()))}"}

    def ask(i: int) -> int:
        url = cluster.urls[i % 2]
        params = {"repo_id": MODEL, "revision": "main", "wait": 0}
        return httpx.get(f"{url}/api/v1/manifest", params=params, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(ask, range(20)))
    assert set(statuses) <= {200, 202}, statuses
    jobs = _jobs(cluster, cluster.urls[0])
    assert len(jobs) == 1 and jobs[0]["state"] == "queued"
    assert _jobs(cluster, cluster.urls[1]) == jobs
    # A seed long-polling the other replica takes that job (it learns of it by the shared poll).
    cluster.tracker_url = cluster.urls[1]
    cluster.start_seed()
    deadline = time.monotonic() + COMMIT_WAIT_S
    while _jobs(cluster, cluster.urls[0])[0]["state"] != "done":
        assert time.monotonic() < deadline, _jobs(cluster, cluster.urls[0])
        time.sleep(0.3)


def test_nodes_on_different_replicas_find_each_other_and_survive_one_dying(
    replicas: LocalCluster, tmp_path: Path
) -> None:
    cluster = replicas
    a, b = cluster.urls
    cluster.tracker_url = a
    seed = cluster.start_seed()
    slow = ("--upload-mbit", "40")  # a pull from the nodes lasts seconds: long enough to kill a replica in
    node1 = cluster.start_agent("node1", extra=slow)  # on replica A
    snap1 = _pull(cluster, a, node1.url, node1.cache_dir)
    # The seed leaves: from now on node1, known to replica A, is the only holder.
    seed.popen.send_signal(signal.SIGTERM)
    seed.popen.wait(20)
    cluster.tracker_url = b
    node2 = cluster.start_agent("node2", extra=slow)  # on replica B: B hands out A's peer (from Redis)
    snap2 = _pull(cluster, b, node2.url, node2.cache_dir)
    assert Path(snap1).name == Path(snap2).name
    originals = files_of(cluster.origin_root / "models" / MODEL)  # type: ignore[attr-defined]
    assert files_of(Path(snap2)) == originals
    assert_cache_valid(node2.cache_dir)
    # Replica A is killed outright while node3, pointed at B, downloads: its pull goes on.
    node3 = cluster.start_agent("node3")
    pull = subprocess.Popen(
        [sys.executable, "-m", "hfbt", *_pull_args(b, node3.url, node3.cache_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + COMMIT_WAIT_S
    while not list((node3.cache_dir).rglob("*.hfbt-partial")) and pull.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tracker0 = next(p for p in cluster.procs if p.name == "tracker0")
    tracker0.popen.send_signal(signal.SIGKILL)
    tracker0.popen.wait(10)
    assert pull.poll() is None, "the pull ended before the replica was killed: the test proves nothing"
    out, err = pull.communicate(timeout=COMMIT_WAIT_S * 2)
    assert pull.returncode == 0, err
    snap3 = out.strip().splitlines()[-1]
    offline = snapshot_download(MODEL, cache_dir=node3.cache_dir, local_files_only=True)
    assert Path(offline) == Path(snap3) and files_of(Path(offline)) == originals
    assert_cache_valid(node3.cache_dir)
    # Every byte after the seed's one mirror came from the swarm, not the origin.
    served = httpx.get(f"{cluster.origin_url}/_hfbt/stats").json()["bytes_served"]
    for path, data in originals.items():
        assert served.get(f"model/{MODEL}/{path}", 0) == len(data), path
