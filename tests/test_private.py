"""Private repos stay private: the tracker hands a private revision (manifest, torrents) only to a
node whose own Hub token the origin accepts, and no token ever reaches a log or the registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hfbt.cluster import LocalCluster
from tests.conftest import MODEL, files_of, make_origin, run_hfbt

HUB_TOKEN = "hf_PrivateTokenForTests0123456789"


@pytest.fixture
def private_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalCluster, Path]]:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root, env={"HFBT_ORIGIN_TOKEN": HUB_TOKEN})
        cluster.start_tracker(closed=True, ref_ttl=300)
        cluster.start_seed(env={"HF_TOKEN": HUB_TOKEN})
        for name, value in cluster.node_env("pytest").items():
            monkeypatch.setenv(name, value)
        yield cluster, root


def node(cluster: LocalCluster, hub_token: str | None = None, name: str = "probe") -> httpx.Client:
    """An HTTP client holding a fresh node identity (and, given, a user's Hub token)."""
    headers = {"Authorization": f"Bearer {cluster.node_env(name)['HFBT_NODE_TOKEN']}"}
    if hub_token:
        headers["X-HF-Token"] = hub_token
    return httpx.Client(base_url=cluster.tracker_url, headers=headers, timeout=30)


def test_private_repo_needs_a_node_token_the_origin_accepts(private_origin, tmp_path: Path) -> None:
    cluster, root = private_origin
    args = ["pull", MODEL, "--tracker", cluster.tracker_url, "--agent", "none", "-q"]

    none = run_hfbt(*args, "--cache-dir", str(tmp_path / "a"), env={"HF_TOKEN": ""})
    assert none.returncode == 1 and "private" in none.stderr and "Traceback" not in none.stderr
    wrong = run_hfbt(*args, "--cache-dir", str(tmp_path / "b"), "--token", "hf_wrong")
    assert wrong.returncode == 1 and "does not let this Hub token download from" in wrong.stderr
    assert not (tmp_path / "a" / "models--acme--tiny" / "blobs").exists()

    ok = run_hfbt(*args, "--cache-dir", str(tmp_path / "c"), env={"HF_TOKEN": HUB_TOKEN})
    assert ok.returncode == 0, ok.stderr
    assert files_of(Path(ok.stdout.strip().splitlines()[-1])) == files_of(root / "models" / MODEL)

    with node(cluster, HUB_TOKEN) as c:
        manifest = c.get("/api/v1/manifest", params={"repo_id": MODEL}).json()["manifest"]
    assert manifest["private"] is True
    ih = next(f["info_hash"] for f in manifest["files"] if f["info_hash"])
    # Every path that yields the blob's peers or bytes: the torrent and the ticket (which the announce,
    # scrape and piece server then ask for) need the Hub token, and each renewal checks it again.
    for hub_token in (None, "hf_wrong"):
        with node(cluster, hub_token) as c:
            for path in (f"/api/v1/torrents/{ih}.torrent", f"/api/v1/tickets/{ih}"):
                r = c.get(path)
                assert r.status_code == 403 and r.json()["error"] == "GatedRepo", (path, r.text)
    with node(cluster, HUB_TOKEN) as c:
        assert c.get(f"/api/v1/torrents/{ih}.torrent").status_code == 200
        assert c.get(f"/api/v1/tickets/{ih}").status_code == 200

    leaked = [p.name for p in cluster.procs if HUB_TOKEN in p.log_text()]
    assert leaked == []
    for f in (cluster.workdir).rglob("tracker.db*"):
        assert HUB_TOKEN.encode() not in f.read_bytes()


class _RecordingOrigin(ThreadingHTTPServer):
    """An origin of an attacker's choosing: it says yes to every token, and keeps what it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.seen.append(self.headers.get("Authorization") or "")
                body = b'{"id": "acme/tiny", "private": false}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_a_seed_cannot_choose_where_hub_tokens_are_checked(private_origin, tmp_path: Path) -> None:
    """A node cannot register a seed at all; and the origin a seed names never decides access."""
    cluster, _root = private_origin
    attacker = _RecordingOrigin()
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        evil = f"http://127.0.0.1:{attacker.server_address[1]}"
        body = {"seed_id": "evil", "origin": evil}
        with node(cluster) as c:
            assert c.post("/api/v1/seeds", json=body).status_code == 403
        seed = {"Authorization": f"Bearer {cluster.seed_token}"}
        r = httpx.post(f"{cluster.tracker_url}/api/v1/seeds", json=body, headers=seed)
        assert r.status_code == 200  # even a real seed's word only labels it in GET /seeds
        params = {"repo_id": MODEL}
        with node(cluster, "hf_stolen") as c:
            wrong = c.get("/api/v1/manifest", params=params)
        assert wrong.status_code == 403, wrong.text
        with node(cluster, HUB_TOKEN) as c:
            right = c.get("/api/v1/manifest", params=params)
        assert right.status_code == 200 and right.json()["manifest"]["private"] is True
        assert attacker.seen == []  # no user's Hub token went to the seed's origin
    finally:
        attacker.shutdown()
        attacker.server_close()
