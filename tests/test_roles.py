"""A closed tracker: each role's credential does its own job only, node identities are issued and revoked,
and nothing one node sends changes what another node gets. All against the real tracker process."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
from fastbencode import bdecode

from tests.conftest import OPERATOR_TOKEN, SEED_TOKEN, Tracker
from tests.test_tracker_http import COMMIT, announce_query, blobs, publish, register

IH = "0" * 40


def _published(t: Tracker) -> str:
    """Register acme/tiny as the seed and return its big blob's info-hash."""
    files = blobs()
    with t.client("seed") as c:
        register(c, files)
        return publish(c, files[0])


# (method, path, roles that may call it); every other role gets 403, no credential 401.
ROUTES = [
    ("GET", f"/api/v1/manifest?repo_id=acme/tiny&revision={COMMIT}&wait=0", {"node", "operator"}),
    ("GET", "/api/v1/torrents/{ih}.torrent", {"node"}),
    ("GET", "/api/v1/tickets/{ih}", {"node"}),
    ("GET", "/api/v1/announce-url", {"seed"}),
    ("GET", "/api/v1/ticket-key", {"seed", "operator"}),
    ("POST", "/api/v1/revisions", {"seed"}),
    ("POST", "/api/v1/torrents", {"seed"}),
    ("POST", "/api/v1/seeds", {"seed"}),
    ("POST", "/api/v1/seeds/s1/next-job?wait=0", {"seed"}),
    ("POST", "/api/v1/jobs/nope/result", {"seed"}),
    ("GET", "/api/v1/revisions", {"operator"}),
    ("GET", "/api/v1/jobs", {"operator"}),
    ("GET", "/api/v1/seeds", {"operator"}),
    ("GET", "/api/v1/swarms", {"operator"}),
    ("GET", "/api/v1/nodes", {"operator"}),
    ("POST", "/api/v1/nodes", {"operator"}),
    ("DELETE", "/api/v1/nodes/nobody", {"operator"}),
]


def test_every_route_serves_its_roles_only(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True)
    ih = _published(t)
    node = t.add_node("n1")
    revoked = t.add_node("gone")
    with t.client("operator") as op:
        assert op.delete("/api/v1/nodes/gone").status_code == 200
    who = {"operator": "operator", "seed": "seed", "node": node}
    for method, path, allowed in ROUTES:
        url = path.format(ih=ih)
        for cred in (None, "wrong", revoked, "hfbtn_n1.not-the-secret"):
            with t.client(cred) as c:
                r = c.request(method, url, json={})
            assert r.status_code == 401, (method, url, cred, r.status_code, r.text)
            assert r.json()["error"] == "Unauthorized"
        for role, cred in who.items():
            with t.client(cred) as c:
                r = c.request(method, url, json={})
            if role in allowed:
                # Past the gate: whatever the route says about this (empty) body, never a refusal.
                assert r.status_code not in (401, 403), (method, url, role, r.text)
            else:
                assert r.status_code == 403 and r.json()["error"] == "Forbidden", (method, url, role, r.text)
    with t.client(None) as anon:
        metrics = anon.get("/metrics").text
    assert re.search(r'hfbt_tracker_denied_total\{reason="credential"\} [1-9]', metrics)
    assert re.search(r'hfbt_tracker_denied_total\{reason="role"\} [1-9]', metrics)


def test_node_identities_are_issued_revoked_and_kept_only_as_hashes(
    start_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    t = start_tracker(closed=True)
    ih = _published(t)
    token = t.add_node("gpu-001")
    with t.client("operator") as op:
        again = op.post("/api/v1/nodes", json={"name": "gpu-001"})
        assert again.status_code == 409 and "revoke it first" in again.json()["detail"]
        for bad in ("", "../x", "a b", "x" * 65, "é"):
            assert op.post("/api/v1/nodes", json={"name": bad}).status_code == 422, bad
    with t.client(token) as c:
        ticket = c.get(f"/api/v1/tickets/{ih}").json()["ticket"]
    q = announce_query(bytes.fromhex(ih), b"-XX0001-" + b"r" * 12, 6881, 0)
    assert httpx.get(f"{t.url}/announce/{ticket}?{q}").status_code == 200

    with t.client("operator") as op:
        assert op.delete("/api/v1/nodes/gpu-001").status_code == 200
        assert op.delete("/api/v1/nodes/gpu-001").status_code == 404
        assert op.get("/api/v1/nodes").json()["nodes"][0]["revoked"] is not None
    # Revoked: its credential at once, and its ticket on announces at once on this tracker.
    with t.client(token) as c:
        assert c.get(f"/api/v1/tickets/{ih}").status_code == 401
    r = httpx.get(f"{t.url}/announce/{ticket}?{q}")
    assert r.status_code == 403 and b"revoked" in bdecode(r.content)[b"failure reason"]
    # Issued again: a new credential; the old one stays dead.
    fresh = t.add_node("gpu-001")
    assert fresh != token
    with t.client(token) as c:
        assert c.get(f"/api/v1/tickets/{ih}").status_code == 401
    with t.client(fresh) as c:
        assert c.get(f"/api/v1/tickets/{ih}").status_code == 200

    # The registry holds no credential: neither token, nor a node's secret.
    t.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("tracker.db*"))
    for secret in (OPERATOR_TOKEN, SEED_TOKEN, token, token.rpartition(".")[2], fresh.rpartition(".")[2]):
        assert secret.encode() not in raw
    key = tmp_path / "tracker.db.ticket-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def _peers(body: bytes) -> list[dict]:
    return bdecode(body)[b"peers"]


def test_no_node_can_evict_or_repoint_another_nodes_peer(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True)
    ih = _published(t)
    tickets = {}
    for name in ("alice", "mallory", "bob"):
        with t.client(t.add_node(name)) as c:
            tickets[name] = c.get(f"/api/v1/tickets/{ih}").json()["ticket"]
    alice_id = b"-XX0001-" + b"A" * 12

    def announce(who: str, peer_id: bytes, port: int, **extra: str) -> httpx.Response:
        q = announce_query(bytes.fromhex(ih), peer_id, port, 100, compact="0", **extra)
        return httpx.get(f"{t.url}/announce/{tickets[who]}?{q}")

    assert announce("alice", alice_id, 7001).status_code == 200
    # Mallory re-announces Alice's peer_id (to re-point it at her port) and stops it: both refused.
    r = announce("mallory", alice_id, 7002)
    assert r.status_code == 403 and b"another node" in bdecode(r.content)[b"failure reason"]
    announce("mallory", alice_id, 7001, event="stopped")
    # Mallory announces from Alice's ip:port with a new peer_id: that does not drop Alice's entry either.
    assert announce("mallory", b"-XX0001-" + b"M" * 12, 7001).status_code == 200
    # ip= is not trusted: the handed-out address is the one the announce came from.
    assert announce("mallory", b"-XX0001-" + b"N" * 12, 7003, ip="10.9.9.9").status_code == 200
    peers = _peers(announce("bob", b"-XX0001-" + b"B" * 12, 7004).content)
    by_id = {p[b"peer id"]: (p[b"ip"].decode(), p[b"port"]) for p in peers}
    assert by_id[alice_id] == ("127.0.0.1", 7001)
    assert by_id[b"-XX0001-" + b"N" * 12] == ("127.0.0.1", 7003)
    # Alice's own stop does remove her.
    announce("alice", alice_id, 7001, event="stopped")
    peers = _peers(announce("bob", b"-XX0001-" + b"B" * 12, 7004).content)
    assert alice_id not in {p[b"peer id"] for p in peers}


def test_only_a_seed_ticket_announces_as_the_seed(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True)
    ih = _published(t)
    with t.client(t.add_node("n1")) as c:
        node_ticket = c.get(f"/api/v1/tickets/{ih}").json()["ticket"]
    with t.client("seed") as c:
        seed_announce = c.get("/api/v1/announce-url").json()["announce"]
    q = announce_query(bytes.fromhex(ih), b"-XX0001-" + b"s" * 12, 6881, 0, hfbt="seed")
    r = httpx.get(f"{t.url}/announce/{node_ticket}?{q}")
    assert r.status_code == 403 and b"seed" in bdecode(r.content)[b"failure reason"]
    assert httpx.get(f"{seed_announce}?{q}").status_code == 200


def test_tickets_expire(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True, ticket_ttl=5)
    ih = _published(t)
    with t.client(t.add_node("n1")) as c:
        grant = c.get(f"/api/v1/tickets/{ih}").json()
    assert grant["expires"] - time.time() <= 6
    q = announce_query(bytes.fromhex(ih), b"-XX0001-" + b"e" * 12, 6881, 0)
    assert httpx.get(f"{grant['announce']}?{q}").status_code == 200
    time.sleep(max(0.0, grant["expires"] - time.time()) + 1.1)
    r = httpx.get(f"{grant['announce']}?{q}")
    assert r.status_code == 403 and b"expired" in bdecode(r.content)[b"failure reason"]
    scrape = f"{t.url}/scrape/{grant['ticket']}?info_hash={quote_from_bytes(bytes.fromhex(ih), safe='')}"
    assert httpx.get(scrape).status_code == 403


def test_credential_is_checked_before_the_body_is_read(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True)

    def rss_kb() -> int:
        status = Path(f"/proc/{t.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    before = rss_kb()
    body = b'{"manifest": {"files": [' + b'"x",' * 5_000_000 + b'"x"]}}'  # 20 MB of JSON
    for _ in range(3):
        r = httpx.post(
            f"{t.url}/api/v1/revisions", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401
    assert rss_kb() - before < 20_000, "the tracker buffered an anonymous body"


def test_half_closed_config_is_refused_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HFBT_OPERATOR_TOKEN": "only-one"}
    env.pop("HFBT_SEED_TOKEN", None)
    r = subprocess.run(
        [sys.executable, "-m", "hfbt", "tracker", "--db", str(tmp_path / "t.db"), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "HFBT_SEED_TOKEN" in r.stderr


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "t.db.ticket-key"
    key.write_text("whatever")
    key.chmod(0o644)
    env = {**os.environ, "HFBT_OPERATOR_TOKEN": "op-" + "x" * 20, "HFBT_SEED_TOKEN": "seed-" + "y" * 20}
    r = subprocess.run(
        [sys.executable, "-m", "hfbt", "tracker", "--db", str(tmp_path / "t.db"), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "chmod 600" in r.stderr and str(key) in r.stderr


@pytest.mark.parametrize("closed", [True])
def test_node_cli_issues_revokes_and_lists(start_tracker: Callable[..., Tracker], closed: bool) -> None:
    t = start_tracker(closed=closed)
    env = {**os.environ, "HFBT_OPERATOR_TOKEN": OPERATOR_TOKEN}

    def hfbt(*args: str, env: dict = env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hfbt", "tracker", "node", *args, "--tracker", t.url],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    r = hfbt("add", "gpu-7")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("hfbtn_gpu-7.")
    with t.client(token) as c:
        assert c.get(f"/api/v1/manifest?repo_id=acme/tiny&revision={COMMIT}&wait=0").status_code != 401
    assert "gpu-7\tlive" in hfbt("list").stdout
    r = hfbt("add", "gpu-7")
    assert r.returncode == 1 and "revoke it first" in r.stderr and "Traceback" not in r.stderr
    assert hfbt("revoke", "gpu-7").returncode == 0
    assert "gpu-7\trevoked" in hfbt("list").stdout
    no_token = {k: v for k, v in env.items() if k != "HFBT_OPERATOR_TOKEN"}
    r = hfbt("add", "gpu-8", env=no_token)
    assert r.returncode == 1 and "HFBT_OPERATOR_TOKEN" in r.stderr
