"""Standard torrents: a stock BitTorrent client (aria2c) downloads a blob from a closed tracker's swarm
with nothing but the .torrent a node got (its announce URL carries that node's ticket), and a node's
own credential guards the API and pulls."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hfbt.cluster import LocalCluster, free_port
from tests.conftest import MODEL, files_of, make_origin, pull_cmd, run_hfbt


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(closed=True, ref_ttl=300)
        cluster.start_seed()
        yield cluster, root


def complete_manifest(cluster: LocalCluster, headers: dict) -> dict:
    for _ in range(60):
        r = httpx.get(
            f"{cluster.tracker_url}/api/v1/manifest",
            params={"repo_type": "model", "repo_id": MODEL, "revision": "main", "wait": 5},
            headers=headers,
            timeout=30,
        )
        if r.status_code == 200 and r.json()["status"] == "complete":
            return r.json()["manifest"]
    raise AssertionError("the revision never completed")


@pytest.mark.skipif(
    shutil.which("aria2c") is None, reason="aria2c is not installed (scripts/test installs it)"
)
def test_aria2c_downloads_a_blob_from_the_swarm(secured, tmp_path: Path) -> None:
    cluster, root = secured
    token = cluster.node_env("aria2-box")["HFBT_NODE_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}
    manifest = complete_manifest(cluster, auth)
    shard = next(f for f in manifest["files"] if f["path"].endswith("00001-of-00002.safetensors"))
    r = httpx.get(f"{cluster.tracker_url}/api/v1/torrents/{shard['info_hash']}.torrent", headers=auth)
    assert r.status_code == 200
    assert f"{cluster.tracker_url}/announce/".encode() in r.content  # a ticket, never a credential
    assert token.encode() not in r.content and token.rpartition(".")[2].encode() not in r.content
    torrent = tmp_path / "shard.torrent"
    torrent.write_bytes(r.content)
    out = tmp_path / "aria2"
    proc = subprocess.run(
        [
            "aria2c", "--seed-time=0", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", f"--listen-port={free_port()}", "--console-log-level=warn",
            "--summary-interval=0", "--bt-stop-timeout=60", "-d", str(out), str(torrent),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = (out / shard["etag"]).read_bytes()
    assert got == files_of(root / "models" / MODEL)[shard["path"]]


def test_node_credential_guards_api_announce_and_pull(secured, tmp_path: Path) -> None:
    cluster, root = secured
    r = httpx.get(f"{cluster.tracker_url}/api/v1/manifest", params={"repo_type": "model", "repo_id": MODEL})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    bad = httpx.get(
        f"{cluster.tracker_url}/announce", params={"info_hash": "a" * 20, "peer_id": "b" * 20, "port": 1}
    )
    assert bad.status_code >= 400 and b"failure reason" in bad.content
    forged = httpx.get(
        f"{cluster.tracker_url}/announce/node.0000",
        params={"info_hash": "a" * 20, "peer_id": "b" * 20, "port": 1},
    )
    assert forged.status_code >= 400 and b"failure reason" in forged.content
    cache = tmp_path / "cache"
    args = pull_cmd(cluster.tracker_url, cache)
    denied = run_hfbt(*args, env={"HFBT_NODE_TOKEN": ""})
    assert denied.returncode == 1 and "Traceback" not in denied.stderr and "nauthorized" in denied.stderr
    token = cluster.node_env("puller")["HFBT_NODE_TOKEN"]
    ok = run_hfbt(*args, env={"HFBT_NODE_TOKEN": token})
    assert ok.returncode == 0, ok.stderr
    assert files_of(Path(ok.stdout.strip().splitlines()[-1])) == files_of(root / "models" / MODEL)
    logs = "".join(p.log_text() for p in cluster.procs)
    for secret in (token, cluster.operator_token, cluster.seed_token):
        assert secret and secret not in logs
