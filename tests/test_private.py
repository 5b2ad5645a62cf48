"""Private repos stay private: the tracker hands a private revision (manifest, torrents) only to a
node whose own Hub token the origin accepts, and no token ever reaches a log or the registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hfbt.cluster import LocalCluster
from tests.conftest import MODEL, files_of, make_origin, run_hfbt

HUB_TOKEN = "hf_PrivateTokenForTests0123456789"


@pytest.fixture
def private_origin(tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root, env={"HFBT_ORIGIN_TOKEN": HUB_TOKEN})
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed(env={"HF_TOKEN": HUB_TOKEN})
        yield cluster, root


def test_private_repo_needs_a_node_token_the_origin_accepts(private_origin, tmp_path: Path) -> None:
    cluster, root = private_origin
    args = ["pull", MODEL, "--tracker", cluster.tracker_url, "--agent", "none", "-q"]

    none = run_hfbt(*args, "--cache-dir", str(tmp_path / "a"), env={"HF_TOKEN": ""})
    assert none.returncode == 1 and "private" in none.stderr and "Traceback" not in none.stderr
    wrong = run_hfbt(*args, "--cache-dir", str(tmp_path / "b"), "--token", "hf_wrong")
    assert wrong.returncode == 1 and "does not let this Hub token read" in wrong.stderr
    assert not (tmp_path / "a" / "models--acme--tiny" / "blobs").exists()

    ok = run_hfbt(*args, "--cache-dir", str(tmp_path / "c"), env={"HF_TOKEN": HUB_TOKEN})
    assert ok.returncode == 0, ok.stderr
    assert files_of(Path(ok.stdout.strip().splitlines()[-1])) == files_of(root / "models" / MODEL)

    manifest = httpx.get(
        f"{cluster.tracker_url}/api/v1/manifest",
        params={"repo_id": MODEL},
        headers={"X-HF-Token": HUB_TOKEN},
    ).json()["manifest"]
    assert manifest["private"] is True
    ih = next(f["info_hash"] for f in manifest["files"] if f["info_hash"])
    assert httpx.get(f"{cluster.tracker_url}/api/v1/torrents/{ih}.torrent").status_code == 403
    assert (
        httpx.get(
            f"{cluster.tracker_url}/api/v1/torrents/{ih}.torrent", headers={"X-HF-Token": HUB_TOKEN}
        ).status_code
        == 200
    )

    leaked = [p.name for p in cluster.procs if HUB_TOKEN in p.log_text()]
    assert leaked == []
    for f in (cluster.workdir).rglob("tracker.db*"):
        assert HUB_TOKEN.encode() not in f.read_bytes()
