"""The real tracker (uvicorn in a subprocess on 127.0.0.1) driven over HTTP, plus real libtorrent clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import libtorrent as lt
import pytest
from fastbencode import bdecode, bencode

from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import PIECE_LENGTH
from tests.conftest import Tracker

COMMIT = "c0ffee" + "0" * 34
COMMIT2 = "beef" + "1" * 36
# -- helpers -----------------------------------------------------------------------------------------


def make_torrent(data: bytes, etag: str) -> bytes:
    """A private v1 blob torrent with piece hashes computed here (generate_buf() is broken)."""
    fs = lt.file_storage()
    fs.add_file(etag, len(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ct = lt.create_torrent(fs, PIECE_LENGTH, flags=lt.create_torrent.v1_only)
    ct.set_priv(True)
    for i in range(ct.num_pieces()):
        ct.set_hash(i, hashlib.sha1(data[i * PIECE_LENGTH : (i + 1) * PIECE_LENGTH]).digest())
    return lt.bencode(ct.generate())


@dataclass
class Blob:
    path: str
    data: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1_bytes(self.data)

    def entry(self) -> dict:
        return {
            "path": self.path,
            "size": len(self.data),
            "etag": self.etag,
            "sha256": self.etag if self.lfs else None,
        }


def blobs() -> list[Blob]:
    return [
        Blob("model.safetensors", os.urandom(PIECE_LENGTH + 12345), lfs=True),
        Blob("config.json", b'{"hidden": 8}\n', lfs=False),
        Blob("sub/empty.txt", b"", lfs=False),
    ]


def manifest_dict(files: list[Blob], repo_id: str = "acme/tiny", commit: str = COMMIT) -> dict:
    return {"repo_type": "model", "repo_id": repo_id, "commit": commit, "files": [b.entry() for b in files]}


def register(c: httpx.Client, files: list[Blob], repo_id: str = "acme/tiny", commit: str = COMMIT) -> dict:
    r = c.post(
        "/api/v1/revisions",
        json={"job_id": None, "ref": "main", "manifest": manifest_dict(files, repo_id, commit)},
    )
    assert r.status_code == 200, r.text
    return r.json()["manifest"]


def publish(c: httpx.Client, blob: Blob, repo_id: str = "acme/tiny", commit: str = COMMIT) -> str:
    body = {
        "repo_type": "model",
        "repo_id": repo_id,
        "commit": commit,
        "path": blob.path,
        "torrent": base64.b64encode(make_torrent(blob.data, blob.etag)).decode(),
    }
    r = c.post("/api/v1/torrents", json=body)
    assert r.status_code == 200, r.text
    return r.json()["info_hash"]


def announce_query(info_hash: bytes, peer_id: bytes, port: int, left: int, **extra: str) -> str:
    q = f"info_hash={quote_from_bytes(info_hash, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
    q += f"&port={port}&uploaded=0&downloaded=0&left={left}"
    return q + "".join(f"&{k}={v}" for k, v in extra.items())


def jobs_for(c: httpx.Client, repo_id: str) -> list[dict]:
    return [j for j in c.get("/api/v1/jobs").json()["jobs"] if j["repo_id"] == repo_id]


# -- seeds and jobs ----------------------------------------------------------------------------------


def test_seed_registration_and_next_job_long_poll(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker()
    with t.client() as c:
        assert c.post("/api/v1/seeds", json={"seed_id": "seed-1", "origin": "http://origin"}).json() == {
            "ok": True
        }
        start = time.monotonic()
        assert c.post("/api/v1/seeds/seed-1/next-job", params={"wait": 0.5}).status_code == 204
        assert time.monotonic() - start >= 0.45

    async def scenario() -> None:
        async with t.aclient() as ac:
            poll = asyncio.create_task(ac.post("/api/v1/seeds/seed-1/next-job", params={"wait": 10}))
            await asyncio.sleep(0.3)
            r = await ac.get(
                "/api/v1/manifest", params={"repo_id": "acme/tiny", "revision": "main", "wait": 0}
            )
            assert r.status_code == 202, r.text
            pending = r.json()
            assert pending["status"] == "pending" and pending["job"]["seeds"] == 1
            got = await asyncio.wait_for(poll, 5)
            assert got.status_code == 200
            job = got.json()
            assert job == {
                "id": pending["job"]["id"],
                "repo_type": "model",
                "repo_id": "acme/tiny",
                "revision": "main",
            }
            listed = (await ac.get("/api/v1/jobs")).json()["jobs"]
            assert [(j["state"], j["seed_id"]) for j in listed] == [("running", "seed-1")]

    asyncio.run(scenario())


def test_twenty_concurrent_manifest_requests_make_one_job(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker()
    files = blobs()

    async def scenario() -> None:
        async with t.aclient() as ac:
            params = {"repo_type": "model", "repo_id": "acme/twenty", "revision": "main", "wait": 20}
            callers = [asyncio.create_task(ac.get("/api/v1/manifest", params=params)) for _ in range(20)]
            await asyncio.sleep(0.5)
            listed = [
                j for j in (await ac.get("/api/v1/jobs")).json()["jobs"] if j["repo_id"] == "acme/twenty"
            ]
            assert len(listed) == 1 and listed[0]["state"] == "queued"
            job = (await ac.post("/api/v1/seeds/seed-1/next-job", params={"wait": 5})).json()
            assert job["id"] == listed[0]["id"]
            body = {"job_id": job["id"], "ref": "main", "manifest": manifest_dict(files, "acme/twenty")}
            assert (await ac.post("/api/v1/revisions", json=body)).status_code == 200
            answers = await asyncio.gather(*callers)
            assert [r.status_code for r in answers] == [200] * 20
            assert {r.json()["status"] for r in answers} == {"partial"}
            assert {r.json()["manifest"]["commit"] for r in answers} == {COMMIT}
            assert answers[0].json()["manifest"]["refs"] == ["main"]
            ok = await ac.post(f"/api/v1/jobs/{job['id']}/result", json={"ok": True, "commit": COMMIT})
            assert ok.status_code == 200
            listed = [
                j for j in (await ac.get("/api/v1/jobs")).json()["jobs"] if j["repo_id"] == "acme/twenty"
            ]
            assert [(j["state"], j["commit"]) for j in listed] == [("done", COMMIT)]

    asyncio.run(scenario())


def test_job_failure_reaches_every_waiter(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker()

    async def fail_all(ac: httpx.AsyncClient, repo_id: str, error: str) -> tuple[list[httpx.Response], str]:
        params = {"repo_id": repo_id, "revision": "main", "wait": 20}
        callers = [asyncio.create_task(ac.get("/api/v1/manifest", params=params)) for _ in range(5)]
        await asyncio.sleep(0.3)
        job = (await ac.post("/api/v1/seeds/seed-1/next-job", params={"wait": 5})).json()
        r = await ac.post(
            f"/api/v1/jobs/{job['id']}/result", json={"ok": False, "error": error, "detail": "nope"}
        )
        assert r.status_code == 200
        return list(await asyncio.gather(*callers)), job["id"]

    async def scenario() -> None:
        async with t.aclient() as ac:
            answers, job_id = await fail_all(ac, "acme/missing", "RepoNotFound")
            assert {r.status_code for r in answers} == {404}
            assert {r.json()["error"] for r in answers} == {"RepoNotFound"}
            answers, _ = await fail_all(ac, "acme/flaky", "OriginError")
            assert {(r.status_code, r.json()["error"]) for r in answers} == {(502, "OriginError")}
            # After a failure the next request starts over with a new job.
            later = await ac.get("/api/v1/manifest", params={"repo_id": "acme/missing", "wait": 0})
            assert later.status_code == 202 and later.json()["job"]["id"] != job_id
            bad = await ac.post(f"/api/v1/jobs/{job_id}/result", json={"ok": False, "error": "Oops"})
            assert bad.status_code == 422 and bad.json()["error"] == "BadRequest"
            assert (await ac.post("/api/v1/jobs/nope/result", json={"ok": True})).status_code == 404

    asyncio.run(scenario())


# -- registry, torrents, auth ------------------------------------------------------------------------


def test_closed_tracker_registration_torrents_and_tickets(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker(closed=True)
    files = blobs()
    with t.client(None) as anon:
        r = anon.get("/api/v1/jobs")
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
        r = anon.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert anon.get("/healthz").json() == {"ok": True}
    node7 = t.add_node("node-7")
    assert node7.startswith("hfbtn_node-7.")
    with t.client("seed") as c:
        stored = register(c, files)
        assert not stored["complete"] and {f["info_hash"] for f in stored["files"]} == {None}
        # Torrents that do not describe the entry are refused with the reason.
        body = {"repo_type": "model", "repo_id": "acme/tiny", "commit": COMMIT, "path": "config.json"}
        bad = bencode(
            {b"info": {b"length": 14, b"name": b"x", b"piece length": PIECE_LENGTH, b"pieces": b"0" * 20}}
        )
        r = c.post("/api/v1/torrents", json={**body, "torrent": base64.b64encode(bad).decode()})
        assert r.status_code == 422 and "private" in r.json()["detail"]
        r = c.post("/api/v1/torrents", json={**body, "torrent": "***"})
        assert r.status_code == 422
        r = c.post(
            "/api/v1/torrents", json={**body, "path": "nope.bin", "torrent": base64.b64encode(bad).decode()}
        )
        assert r.status_code == 404 and r.json()["error"] == "NotFound"

        hashes = {b.path: publish(c, b) for b in files[:2]}
        for b in files[:2]:
            ti = lt.torrent_info(make_torrent(b.data, b.etag))
            assert hashes[b.path] == str(ti.info_hashes().v1)
        # The same blob in another repo is deduplicated at registration.
        again = register(c, files[:1], repo_id="other/copy", commit=COMMIT2)
        assert again["files"][0]["info_hash"] == hashes["model.safetensors"] and again["complete"]
        # A seed reads no manifests and torrents: that is the nodes' credential.
        r = c.get("/api/v1/manifest", params={"repo_id": "acme/tiny", "revision": COMMIT, "wait": 0})
        assert r.status_code == 403 and r.json()["error"] == "Forbidden"

    with t.client(node7) as c:
        r = c.get("/api/v1/manifest", params={"repo_id": "acme/tiny", "revision": COMMIT, "wait": 0})
        assert r.status_code == 200 and r.json()["status"] == "complete"
        assert {f["path"]: f["info_hash"] for f in r.json()["manifest"]["files"]} == {
            **hashes,
            "sub/empty.txt": None,
        }
        r = c.get("/api/v1/manifest", params={"repo_id": "acme/tiny", "revision": "main", "wait": 0})
        assert r.status_code == 200 and r.json()["manifest"]["commit"] == COMMIT
        ih = hashes["model.safetensors"]
        r = c.get(f"/api/v1/torrents/{ih}.torrent")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-bittorrent"
        meta = bdecode(r.content)
        announce = meta[b"announce"].decode()
        assert announce.startswith(f"{t.url}/announce/")
        ticket = announce.rsplit("/", 1)[1]
        assert hashlib.sha1(bencode(meta[b"info"])).hexdigest() == ih
        assert str(lt.torrent_info(r.content).info_hashes().v1) == ih
        assert c.get(f"/api/v1/torrents/{'0' * 40}.torrent").status_code == 404
        assert c.get("/api/v1/torrents/zzz.torrent").json()["error"] == "NotFound"
        other_ticket = c.get(f"/api/v1/tickets/{hashes['config.json']}").json()["ticket"]
        # Nodes register nothing and list nothing.
        assert c.post("/api/v1/revisions", json={"manifest": manifest_dict(files)}).status_code == 403
        assert c.get("/api/v1/swarms").status_code == 403

    with t.client("operator") as op:
        revs = op.get("/api/v1/revisions", params={"repo_type": "model", "repo_id": "acme/tiny"}).json()
        assert revs["revisions"] == [
            {
                "repo_type": "model",
                "repo_id": "acme/tiny",
                "commit": COMMIT,
                "complete": True,
                "refs": ["main"],
            }
        ]

    with t.client(None) as anon:
        assert anon.get(f"/api/v1/torrents/{ih}.torrent").status_code == 401
        q = announce_query(bytes.fromhex(ih), b"-XX0001-" + b"a" * 12, 6881, 0)
        r = anon.get(f"/announce/{ticket}?{q}")
        assert r.status_code == 200, r.content
        assert bdecode(r.content)[b"complete"] == 1
        forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
        for path, why in (
            ("/announce", b"no ticket"),
            (f"/announce/{forged}", b"ticket signature does not verify"),
            (f"/announce/{other_ticket}", b"ticket is for another torrent"),
            ("/announce/junk", b"malformed ticket"),
        ):
            r = anon.get(f"{path}?{q}")
            assert r.status_code == 403 and bdecode(r.content) == {b"failure reason": why}, (path, r.content)
        qs = f"info_hash={quote_from_bytes(bytes.fromhex(ih), safe='')}"
        r = anon.get(f"/scrape/{ticket}?{qs}")
        assert bdecode(r.content)[b"files"][bytes.fromhex(ih)][b"complete"] == 1
        assert anon.get(f"/scrape/{other_ticket}?{qs}").status_code == 403
        assert anon.get(f"/scrape/{ticket}").status_code == 400  # no full scrape: it lists every swarm


@pytest.mark.parametrize("bad", ["../x", "/etc/x"])
def test_seed_manifest_with_escaping_path_is_refused(start_tracker: Callable[..., Tracker], bad: str) -> None:
    t = start_tracker()
    with t.client() as c:
        m = manifest_dict(blobs())
        m["files"][1]["path"] = bad
        r = c.post("/api/v1/revisions", json={"job_id": None, "ref": "main", "manifest": m})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "BadRequest" and bad in r.json()["detail"]
        # Other malformed requests are JSON errors too, never HTML.
        r = c.post("/api/v1/revisions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "BadRequest"
        r = c.get("/api/v1/manifest", params={"repo_id": "../etc", "wait": 0})
        assert r.status_code == 422 and r.json()["error"] == "BadRequest"
        r = c.get("/api/v1/manifest", params={"repo_type": "space", "repo_id": "a/b", "wait": 0})
        assert r.status_code == 422
        r = c.get("/api/v1/manifest")
        assert r.status_code == 422 and "repo_id" in r.json()["detail"]
        assert c.get("/nope").json() == {"error": "NotFound", "detail": "Not Found"}
        assert c.post("/api/v1/seeds", json={"seed_id": "../x"}).status_code == 422


# -- announce ----------------------------------------------------------------------------------------


def test_malformed_announces_get_400_and_tracker_keeps_serving(start_tracker: Callable[..., Tracker]) -> None:
    t = start_tracker()
    files = blobs()
    with t.client() as c:
        register(c, files)
        ih = bytes.fromhex(publish(c, files[0]))
        pid = b"-XX0001-" + b"b" * 12
        malformed = [
            "",
            "info_hash=abc&peer_id=x&port=1&left=0",
            announce_query(ih[:19], pid, 6881, 0),
            announce_query(ih, pid[:10], 6881, 0),
            announce_query(ih, pid, 6881, 0).replace("&port=6881", ""),
            announce_query(ih, pid, 6881, 0).replace("port=6881", "port=http"),
            announce_query(ih, pid, 6881, 0).replace("port=6881", "port=99999"),
            announce_query(ih, pid, 6881, 0).replace("left=0", "left=-1"),
            announce_query(ih, pid, 6881, 0, event="exploded"),
            "%%%&&&===&info_hash=%zz%ff",
            "a" * 9000,
        ]
        for query in malformed:
            r = c.get(f"/announce?{query}")
            assert r.status_code == 400, query
            assert set(bdecode(r.content)) == {b"failure reason"}, query
        r = c.get("/announce?" + announce_query(b"\x01" * 20, pid, 6881, 0))
        assert r.status_code == 400 and bdecode(r.content)[b"failure reason"] == b"unregistered torrent"
        assert c.get("/scrape?info_hash=short").status_code == 400

    # A broken HTTP request line does not take the server down either.
    with socket.create_connection(("127.0.0.1", int(t.url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"\x00\xff GARBAGE \r\n\r\n")
        s.recv(1024)

    with t.client() as c:
        assert c.get("/healthz").json() == {"ok": True}
        seed = c.get("/announce?" + announce_query(ih, pid, 7001, 0, event="started"))
        assert seed.status_code == 200
        leech_q = announce_query(ih, b"-XX0001-" + b"c" * 12, 7002, 100, event="started")
        body = bdecode(c.get("/announce?" + leech_q).content)
        assert body[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
        assert (body[b"complete"], body[b"incomplete"], body[b"interval"]) == (1, 1, 30)
        body = bdecode(c.get("/announce?" + leech_q + "&compact=0").content)
        assert body[b"peers"] == [{b"ip": b"127.0.0.1", b"peer id": pid, b"port": 7001}]
        # A seeder is not handed other seeders.
        assert bdecode(seed.content)[b"peers"] == b""
        stop = c.get("/announce?" + announce_query(ih, pid, 7001, 0, event="stopped"))
        assert bdecode(stop.content)[b"complete"] == 0
        swarms = c.get("/api/v1/swarms").json()["swarms"]
        assert swarms == [{"info_hash": ih.hex(), "seeders": 0, "leechers": 1, "downloaded": 0}]


def _session() -> lt.session:
    return lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "alert_mask": lt.alert_category.error | lt.alert_category.tracker,
        }
    )


def _add(ses: lt.session, torrent: bytes, save_path: Path) -> lt.torrent_handle:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = str(save_path)
    params.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    return ses.add_torrent(params)


def test_two_libtorrent_sessions_swap_a_blob_through_the_tracker(
    start_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    t = start_tracker(announce_interval=2)
    blob = blobs()[0]
    with t.client() as c:
        register(c, [blob])
        ih = publish(c, blob)
        torrent = c.get(f"/api/v1/torrents/{ih}.torrent").content
    assert bdecode(torrent)[b"announce"] == f"{t.url}/announce".encode()
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / blob.etag).write_bytes(blob.data)
    (tmp_path / "leech").mkdir()
    seeder, leecher = _session(), _session()
    seed_h = _add(seeder, torrent, tmp_path / "seed")

    def swarm() -> dict:
        with t.client() as c:
            found = [s for s in c.get("/api/v1/swarms").json()["swarms"] if s["info_hash"] == ih]
        return found[0] if found else {}

    deadline = time.monotonic() + 15
    while swarm().get("seeders") != 1:
        assert time.monotonic() < deadline, "the seeding session never announced"
        time.sleep(0.1)
    assert seed_h.status().is_seeding
    leech_h = _add(leecher, torrent, tmp_path / "leech")
    deadline = time.monotonic() + 20
    while not leech_h.status().is_seeding:
        assert time.monotonic() < deadline, f"download stalled at {leech_h.status().progress:.0%}"
        time.sleep(0.1)
    assert (tmp_path / "leech" / blob.etag).read_bytes() == blob.data
    leech_h.force_reannounce()
    deadline = time.monotonic() + 10
    while swarm().get("seeders") != 2:
        assert time.monotonic() < deadline, swarm()
        time.sleep(0.1)
    del seeder, leecher


# -- persistence -------------------------------------------------------------------------------------


def test_registry_survives_a_restart(start_tracker: Callable[..., Tracker], tmp_path: Path) -> None:
    db = tmp_path / "keep" / "tracker.db"
    files = blobs()
    first = start_tracker(db=db)
    with first.client() as c:
        register(c, files)
        ih = publish(c, files[0])
        r = c.get("/api/v1/manifest", params={"repo_id": "acme/other", "revision": "main", "wait": 0})
        job_id = r.json()["job"]["id"]
        assert c.post("/api/v1/seeds/seed-1/next-job", params={"wait": 1}).json()["id"] == job_id
        assert jobs_for(c, "acme/other")[0]["state"] == "running"
    first.stop()

    second = start_tracker(db=db)
    with second.client() as c:
        r = c.get("/api/v1/manifest", params={"repo_id": "acme/tiny", "revision": COMMIT, "wait": 0})
        assert r.status_code == 200 and r.json()["status"] == "partial"
        assert {f["path"]: f["info_hash"] for f in r.json()["manifest"]["files"]}["model.safetensors"] == ih
        assert c.get("/api/v1/revisions").json()["revisions"][0]["refs"] == ["main"]
        assert c.get(f"/api/v1/torrents/{ih}.torrent").status_code == 200
        q = announce_query(bytes.fromhex(ih), b"-XX0001-" + b"d" * 12, 6881, 0)
        assert c.get(f"/announce?{q}").status_code == 200
        # The job that was running on the old process is back in the queue.
        assert [(j["id"], j["state"]) for j in jobs_for(c, "acme/other")] == [(job_id, "queued")]


def test_unknown_handout_policy_is_refused_with_one_line(tmp_path: Path) -> None:
    from tests.conftest import run_hfbt

    r = run_hfbt("tracker", "--handout", "nope", "--db", str(tmp_path / "t.db"), timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "--handout must be one of random-mix, seed-fanout" in r.stderr
