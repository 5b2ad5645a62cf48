"""/metrics on tracker, seed and agent, and `hfbt status`, against real processes and a real pull."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hfbt.cluster import LocalCluster, free_port
from tests.conftest import MODEL, files_of, make_origin, run_hfbt


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_move_during_a_pull_and_status_shows_node_and_tracker(tmp_path: Path) -> None:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        tracker = cluster.start_tracker(ref_ttl=300)
        seed_metrics = f"http://127.0.0.1:{free_port()}"
        cluster.start_seed(
            extra=("--metrics-port", seed_metrics.rsplit(":", 1)[1], "--metrics-host", "127.0.0.1")
        )
        node = cluster.start_agent("node1")
        before = {
            "tracker": scrape(f"{tracker}/metrics"),
            "seed": scrape(seed_metrics),
            "agent": scrape(f"{node.url}/metrics"),
        }
        assert value(before["tracker"], "hfbt_tracker_torrents") == 0
        assert value(before["seed"], "hfbt_seed_origin_download_bytes_total") == 0
        assert value(before["agent"], "hfbt_agent_peer_download_bytes_total") == 0

        r = run_hfbt(
            "pull", MODEL, "--tracker", tracker, "--cache-dir", str(node.cache_dir), "--agent", node.url, "-q"
        )
        assert r.returncode == 0, r.stderr
        size = sum(len(b) for b in files_of(root / "models" / MODEL).values())
        nonempty = sum(1 for b in files_of(root / "models" / MODEL).values() if b)

        t, s, a = scrape(f"{tracker}/metrics"), scrape(seed_metrics), scrape(f"{node.url}/metrics")
        announces = sum(v for (n, _), v in t.items() if n == "hfbt_tracker_announces_total")
        assert announces > sum(
            v for (n, _), v in before["tracker"].items() if n == "hfbt_tracker_announces_total"
        )
        assert value(t, "hfbt_tracker_announce_seconds_count") >= announces - 1  # scraped while announcing
        assert value(t, "hfbt_tracker_torrents") >= 1
        assert value(t, "hfbt_tracker_mirror_jobs", state="done") == 1
        assert value(t, "hfbt_tracker_seeds") == 1
        assert value(t, "hfbt_tracker_peers", state="seeder") >= 1
        # The seed fetched each file once from the origin and uploaded it to the node.
        assert value(s, "hfbt_seed_origin_download_bytes_total") == size
        assert value(s, "hfbt_seed_blobs_mirrored_total") <= nonempty
        assert value(s, "hfbt_seed_mirror_jobs_total", result="done") == 1
        assert value(s, "hfbt_seed_mirror_jobs_running") == 0
        assert value(s, "hfbt_seed_peer_upload_bytes_total") > 0
        # The node received the torrent-borne blobs from peers and now seeds them.
        assert value(a, "hfbt_agent_peer_download_bytes_total") > 0
        assert value(a, "hfbt_agent_torrents") >= 1

        # hfbt status --json: the node view (cache, revisions, torrents) and the tracker view.
        r = run_hfbt("status", "--json", "--tracker", tracker, "--agent", node.url)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["node_error"] is None and report["tracker_error"] is None
        nodeview = report["node"]
        [repo] = nodeview["repos"]
        assert (repo["repo_type"], repo["repo_id"]) == ("model", MODEL)
        [rev] = repo["revisions"]
        assert rev["refs"] == ["main"] and rev["files"] == len(files_of(root / "models" / MODEL))
        assert rev["size"] == size and rev["seeding"] >= 1
        assert nodeview["totals"]["torrents"] >= 1 and "download" in nodeview["rates"]
        assert all(
            {"peers", "upload_rate", "download_rate", "info_hash"} <= set(t) for t in nodeview["torrents"]
        )
        assert nodeview["pulls"] == []
        trk = report["tracker"]
        assert [s["seed_id"] for s in trk["seeds"]] == ["seed"] and trk["seeds"][0]["alive"]
        assert any(
            r["repo_id"] == MODEL and r["complete"] and r["refs"] == ["main"] for r in trk["revisions"]
        )
        assert trk["swarms"] and trk["jobs"][0]["state"] == "done"

        # The human view names the same things.
        r = run_hfbt("status", "--tracker", tracker, "--agent", node.url)
        assert r.returncode == 0, r.stderr
        for word in ("node", "model/acme/tiny", "main", "tracker", "seeds", "revisions"):
            assert word in r.stdout


def test_status_with_nothing_running_fails_with_reasons() -> None:
    r = run_hfbt("status", "--tracker", "http://127.0.0.1:9", "--agent", "http://127.0.0.1:9")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach" in r.stdout
