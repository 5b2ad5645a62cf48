"""Tracker logic without a server: announce parsing, handout, torrents, registry, scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from fastapi.testclient import TestClient
from fastbencode import bdecode, bencode

from hfbt.config import TrackerConfig
from hfbt.manifest import PIECE_LENGTH, FileEntry, Manifest, ManifestError
from hfbt.torrents import TorrentError
from tracker import announce as bt
from tracker.app import create_app
from tracker.handout import clamp_numwant, random_mix
from tracker.mirror import MirrorFailed, Scheduler
from tracker.peerstore import Peer, SwarmCounts
from tracker.registry import open_registry
from tracker.torrentfile import check_blob_torrent, torrent_file

IH = bytes(range(20))
PID = b"-LT2110-\x00\xff&=+%#?/ \x7f\x80"  # every byte a naive parser trips on
COMMIT = "a" * 40
COMMIT2 = "b" * 40


def q(**params: bytes | str | int) -> bytes:
    parts = []
    for k, v in params.items():
        raw = v if isinstance(v, bytes) else str(v).encode()
        parts.append(f"{k}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts).encode()


def good(**over: bytes | str | int) -> bytes:
    params: dict = {"info_hash": IH, "peer_id": PID, "port": 6881, "uploaded": 0, "downloaded": 0, "left": 10}
    params.update(over)
    return q(**{k: v for k, v in params.items() if v is not None})


# -- announce parsing --------------------------------------------------------------------------------


def test_parse_announce_decodes_raw_binary_params() -> None:
    a = bt.parse_announce(good(event="started", numwant=7, compact=0), "10.0.0.5")
    assert a.info_hash == IH and a.peer_id == PID
    assert (a.ip, a.port, a.left, a.event, a.numwant, a.compact) == (
        "10.0.0.5",
        6881,
        10,
        "started",
        7,
        False,
    )


def test_parse_announce_defaults() -> None:
    a = bt.parse_announce(good(), "10.0.0.5")
    assert a.event == "" and a.numwant is None and a.compact is True and a.no_peer_id is False


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (good(info_hash=b"x" * 19), "info_hash"),
        (good(info_hash=b"x" * 21), "info_hash"),
        (good(info_hash=None), "missing info_hash"),
        (good(peer_id=b"short"), "peer_id"),
        (good(port=None), "missing port"),
        (good(port="abc"), "port"),
        (good(port="0"), "port"),
        (good(port="65536"), "port"),
        (good(port="-1"), "port"),
        (good(port="+80"), "port"),
        (good(port="８０"), "port"),  # non-ASCII digits
        (good(left="-5"), "left"),
        (good(left=None), "missing left"),
        (good(uploaded="1.5"), "uploaded"),
        (good(downloaded="9" * 30), "downloaded"),
        (good(event="bogus"), "event"),
        (good(numwant="lots"), "numwant"),
        (good(compact="2"), "compact"),
        (b"", "missing info_hash"),
        (b"%%%&&==&\xff\xfe=1", "info_hash"),
        (b"\xff=1&%ff%fe=2", "missing info_hash"),
        (b"a" * 9000, "too long"),
    ],
)
def test_parse_announce_rejects(query: bytes, reason: str) -> None:
    with pytest.raises(bt.AnnounceError, match=reason):
        bt.parse_announce(query, "10.0.0.5")


def test_ip_param_is_ignored_unless_trusted() -> None:
    # An untrusted ip= cannot point the swarm at someone else's address, whatever it holds.
    for claimed in ("10.1.2.3", "evil.example.com", "fe80::1%25%C3%BC", "\xff"):
        assert bt.parse_announce(good(ip=claimed), "10.0.0.5").ip == "10.0.0.5"
    assert bt.parse_announce(good(), "::ffff:10.0.0.9").ip == "10.0.0.9"
    # A link-local connection address loses its zone: it names an interface of this host.
    assert bt.parse_announce(good(), "fe80::1%eth0").ip == "fe80::1"


def test_trusted_ip_param_must_be_a_plain_literal() -> None:
    assert bt.parse_announce(good(ip="10.1.2.3"), "10.0.0.5", trust_ip=True).ip == "10.1.2.3"
    assert bt.parse_announce(good(ip="fd00::1"), "10.0.0.5", trust_ip=True).ip == "fd00::1"
    assert bt.parse_announce(good(ip="::ffff:10.1.2.3"), "10.0.0.5", trust_ip=True).ip == "10.1.2.3"
    assert bt.parse_announce(good(), "10.0.0.5", trust_ip=True).ip == "10.0.0.5"
    for bad in (
        "fe80::1%eth0",
        "fe80::1%\u00fc",
        "evil.example.com",
        "[fd00::1]",
        " 10.1.2.3",
        "10.1.2.3\n",
        "010.1.2.3",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "１０.1.2.3",
        b"\xff\xfe",
    ):
        with pytest.raises(bt.AnnounceError, match="invalid ip"):
            bt.parse_announce(good(ip=bad), "10.0.0.5", trust_ip=True)
    with pytest.raises(bt.AnnounceError, match="cannot determine"):
        bt.parse_announce(good(), "", trust_ip=True)


@pytest.mark.parametrize("name", ["port", "uploaded", "downloaded", "left", "numwant"])
@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2", "\u0661", "\uff18", " 1", "1 ", "1_0", "0x10", "1e3"])
def test_integers_are_ascii_digits_only(name: str, value: str) -> None:
    with pytest.raises(bt.AnnounceError, match=f"invalid {name}"):
        bt.parse_announce(good(**{name: value}), "10.0.0.5")


def test_response_builders_skip_unusable_stored_peers() -> None:
    junk = [
        Peer(b"a" * 20, "fe80::1%\u00fc", 6881, 1),
        Peer(b"b" * 20, "not-an-ip", 6881, 1),
        Peer(b"c" * 20, "10.0.0.3", 70000, 1),
        Peer(b"d" * 20, "10.0.0.4", 0, 1),
        Peer(b"e" * 20, "10.0.0.5", -1, 1),
    ]
    fine = peer(2)
    for compact in (True, False):
        body = bdecode(bt.announce_response([*junk, fine], SwarmCounts(0, 6, 0), 30, 15, compact=compact))
        if compact:
            assert body[b"peers"] == bytes([10, 0, 0, 2]) + (6002).to_bytes(2, "big")
            assert b"peers6" not in body
        else:
            assert body[b"peers"] == [{b"ip": b"10.0.0.2", b"peer id": fine.peer_id, b"port": 6002}]
    assert bdecode(bt.failure("bad \udcff")) == {b"failure reason": b"bad ?"}


def test_parse_scrape_multiple() -> None:
    other = b"\x01" * 20
    assert bt.parse_scrape(q(info_hash=IH) + b"&" + q(info_hash=other) + b"&" + q(info_hash=IH)) == [
        IH,
        other,
    ]
    assert bt.parse_scrape(b"") == []
    with pytest.raises(bt.AnnounceError):
        bt.parse_scrape(q(info_hash=b"abc"))


# -- responses ---------------------------------------------------------------------------------------


def peer(n: int, left: int = 1, ip: str | None = None, port: int | None = None) -> Peer:
    return Peer(bytes([n]) * 20, ip or f"10.0.0.{n}", port or 6000 + n, left, 0.0)


def test_compact_ipv4_and_ipv6() -> None:
    v6 = Peer(b"6" * 20, "fd00::1", 51413, 0)
    body = bdecode(bt.announce_response([peer(1), v6], SwarmCounts(1, 1, 3), 30, 15))
    assert body[b"peers"] == bytes([10, 0, 0, 1]) + (6001).to_bytes(2, "big")
    assert body[b"peers6"] == bytes.fromhex("fd000000000000000000000000000001") + (51413).to_bytes(2, "big")
    assert len(body[b"peers"]) == 6 and len(body[b"peers6"]) == 18
    assert (body[b"interval"], body[b"min interval"], body[b"complete"], body[b"incomplete"]) == (
        30,
        15,
        1,
        1,
    )


def test_non_compact_peer_dicts() -> None:
    body = bdecode(bt.announce_response([peer(2)], SwarmCounts(0, 1, 0), 30, 15, compact=False))
    assert body[b"peers"] == [{b"ip": b"10.0.0.2", b"peer id": bytes([2]) * 20, b"port": 6002}]
    body = bdecode(
        bt.announce_response([peer(2)], SwarmCounts(0, 1, 0), 30, 15, compact=False, no_peer_id=True)
    )
    assert body[b"peers"] == [{b"ip": b"10.0.0.2", b"port": 6002}]


def test_failure_and_scrape_encoding() -> None:
    assert bdecode(bt.failure("unregistered torrent")) == {b"failure reason": b"unregistered torrent"}
    body = bdecode(bt.scrape_response({IH: SwarmCounts(2, 3, 4)}))
    assert body == {b"files": {IH: {b"complete": 2, b"downloaded": 4, b"incomplete": 3}}}


# -- handout -----------------------------------------------------------------------------------------


def test_handout_excludes_requester_by_peer_id_and_address() -> None:
    me = peer(1)
    same_addr = Peer(b"z" * 20, me.ip, me.port, 1)
    got = random_mix(me, [me, same_addr, peer(2)], 50)
    assert got == [peer(2)]


def test_seeders_get_only_leechers() -> None:
    seed = peer(1, left=0)
    cands = [peer(i, left=0) for i in range(2, 10)] + [peer(i) for i in range(10, 15)]
    got = random_mix(seed, cands, 50)
    assert sorted(p.peer_id for p in got) == sorted(p.peer_id for p in cands if not p.seeder)


def test_leechers_get_a_mix_with_seeders() -> None:
    rng = random.Random(1)
    me = peer(1)
    cands = [peer(i, left=0) for i in range(2, 5)] + [peer(i) for i in range(5, 250)]
    for _ in range(20):
        got = random_mix(me, cands, 20, rng)
        assert len(got) == 20 and len({p.peer_id for p in got}) == 20
        assert any(p.seeder for p in got) and any(not p.seeder for p in got)
    # Few leechers: the unused slots go to seeders.
    got = random_mix(me, [peer(i, left=0) for i in range(2, 40)] + [peer(50)], 10, rng)
    assert len(got) == 10 and peer(50) in got


def test_numwant_limits() -> None:
    assert clamp_numwant(None) == 50 and clamp_numwant(1000) == 200 and clamp_numwant(0) == 0
    cands = [peer(i % 250, port=7000 + i) for i in range(2, 400)]
    assert len(random_mix(peer(1), cands, None)) == 50
    assert len(random_mix(peer(1), cands, 999)) == 200
    assert random_mix(peer(1), cands, 0) == []


# -- torrents ----------------------------------------------------------------------------------------


def blob_torrent(
    data: bytes, name: str, private: int = 1, piece: int = PIECE_LENGTH, **extra: object
) -> bytes:
    pieces = b"".join(hashlib.sha1(data[i : i + piece]).digest() for i in range(0, len(data), piece))
    info = {b"length": len(data), b"name": name.encode(), b"piece length": piece, b"pieces": pieces}
    if private is not None:
        info[b"private"] = private
    info.update({k.encode(): v for k, v in extra.items()})
    return bencode({b"creation date": 1, b"info": info})


def test_check_blob_torrent() -> None:
    data = b"\x07" * (PIECE_LENGTH + 10)
    etag = hashlib.sha256(data).hexdigest()
    entry = FileEntry("w.safetensors", len(data), etag, etag)
    t = check_blob_torrent(blob_torrent(data, etag), entry)
    info = bdecode(blob_torrent(data, etag))[b"info"]
    assert t.info_hash == hashlib.sha1(bencode(info)).hexdigest() and t.info == bencode(info)
    out = bdecode(torrent_file("http://t/announce/pk", t.info))
    assert out[b"announce"] == b"http://t/announce/pk" and out[b"info"] == info
    bad = [
        (b"garbage", "bencoded"),
        (blob_torrent(data, etag, private=0), "private"),
        (blob_torrent(data, etag, private=None), "private"),
        (blob_torrent(data, "0" * 64), "name"),
        (blob_torrent(data[:-1], etag), "length"),
        (blob_torrent(data, etag, piece=2 * PIECE_LENGTH), "piece length"),
        (blob_torrent(data, etag, **{"meta version": 2}), "v2"),
        (bencode({b"info": 1}), "info"),
    ]
    for raw, reason in bad:
        with pytest.raises(TorrentError, match=reason):
            check_blob_torrent(raw, entry)
    with pytest.raises(TorrentError, match="empty"):
        check_blob_torrent(blob_torrent(b"", "e" * 40), FileEntry("empty", 0, "e" * 40))


# -- manifests ---------------------------------------------------------------------------------------


def make_manifest(commit: str = COMMIT, repo_id: str = "org/m", files: list[dict] | None = None) -> Manifest:
    if files is None:
        files = [
            {"path": "config.json", "size": 10, "etag": "1" * 40},
            {"path": "model.safetensors", "size": 100, "etag": "2" * 64, "sha256": "2" * 64},
            {"path": "empty.txt", "size": 0, "etag": "3" * 40},
        ]
    return Manifest.from_dict({"repo_type": "model", "repo_id": repo_id, "commit": commit, "files": files})


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/../../x", "a//b", "./a", "a\\b"])
def test_manifest_paths_rejected(bad: str) -> None:
    with pytest.raises(ManifestError):
        make_manifest(files=[{"path": bad, "size": 1, "etag": "1" * 40}])


@pytest.mark.parametrize("bad", ["../x", "/etc/x"])
def test_revision_registration_rejects_bad_paths(tmp_path: Path, bad: str) -> None:
    with TestClient(create_app(TrackerConfig(db=tmp_path / "t.db"))) as client:
        m = make_manifest().to_dict()
        m["files"][0]["path"] = bad
        r = client.post("/api/v1/revisions", json={"job_id": None, "ref": "main", "manifest": m})
        assert r.status_code == 422
        assert r.json()["error"] == "BadRequest" and bad in r.json()["detail"]


# -- registry ----------------------------------------------------------------------------------------


def test_registry_persists_and_dedups(registry_db: str) -> None:
    reg = open_registry(registry_db)
    stored = reg.register_revision(make_manifest(), ref="main", now=100.0)
    assert not stored.complete and stored.refs == ("main",)
    data_entry = next(f for f in stored.files if f.path == "model.safetensors")
    reg.add_torrent("model", "org/m", COMMIT, "model.safetensors", "c" * 40, b"d4:infoe", 100, "2" * 64)
    assert reg.add_torrent("model", "org/m", COMMIT, "config.json", "d" * 40, b"d4:infoe", 10, "1" * 40)
    # Another repo holding the same blob gets its info_hash at registration.
    other = reg.register_revision(make_manifest(COMMIT2, "org/other"), ref="v1")
    assert {f.path: f.info_hash for f in other.files} == {
        "config.json": "d" * 40,
        "empty.txt": None,
        "model.safetensors": "c" * 40,
    }
    assert other.complete
    # An info_hash claimed by a seed but never registered is dropped.
    claimed = make_manifest(COMMIT2, "org/third", [{**vars(data_entry), "info_hash": "e" * 40}])
    assert reg.register_revision(claimed).files[0].info_hash == "c" * 40
    reg.close()
    reg = open_registry(registry_db)
    again = reg.get_manifest("model", "org/m", COMMIT)
    assert again is not None and again.complete and again.refs == ("main",)
    assert reg.get_ref("model", "org/m", "main").commit == COMMIT
    assert reg.has_torrent(bytes.fromhex("c" * 40))
    assert [r["commit"] for r in reg.list_revisions("model", "org/other")] == [COMMIT2]
    reg.close()


def test_registry_one_active_job_across_threads(registry_db: str) -> None:
    reg = open_registry(registry_db)
    results: list = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(reg.ensure_job("model", "org/m", "main"))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    reg.close()


# -- scheduler ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_many_concurrent_callers_share_one_job(registry_db: str) -> None:
    reg = open_registry(registry_db)

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30)
        callers = [asyncio.create_task(s.get_manifest("model", "org/m", "main", 5)) for _ in range(100)]
        await asyncio.sleep(0.05)
        job = await s.next_job("seed1", 1)
        assert job is not None and job.state == "running"
        assert await s.next_job("seed1", 0) is None
        s.register_revision(make_manifest(), job.id)
        results = await asyncio.gather(*callers)
        assert {r.status for r in results} == {"partial"}
        assert len(reg.list_jobs()) == 1
        # Fresh ref: answered at once, no job.
        assert (await s.get_manifest("model", "org/m", "main", 0)).manifest is not None
        s.job_result(job.id, True, COMMIT)
        assert len(reg.list_jobs()) == 1

    asyncio.run(main())
    reg.close()


def test_failure_reaches_all_waiters_and_next_request_makes_a_new_job(registry_db: str) -> None:
    reg = open_registry(registry_db)

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30)
        callers = [asyncio.create_task(s.get_manifest("model", "org/gone", "main", 5)) for _ in range(10)]
        job = await s.next_job("seed1", 1)
        s.job_result(job.id, False, error="RepoNotFound", detail="no such repo")
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, MirrorFailed) and r.status == 404 for r in results)
        later = await s.get_manifest("model", "org/gone", "main", 0)
        assert later.status == "pending" and later.job.id != job.id

    asyncio.run(main())
    reg.close()


def test_ref_ttl_zero_joins_a_job_every_time(registry_db: str) -> None:
    reg = open_registry(registry_db)
    clock = Clock()

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=0, clock=clock)
        s.heartbeat("seed1")
        reg.register_revision(make_manifest(), ref="main", now=clock.t)
        first = await s.get_manifest("model", "org/m", "main", 0)
        assert first.status == "pending"
        # A commit with a manifest never needs a job.
        assert (await s.get_manifest("model", "org/m", COMMIT, 0)).manifest is not None
        waiter = asyncio.create_task(s.get_manifest("model", "org/m", "main", 5))
        await asyncio.sleep(0.01)
        job = await s.next_job("seed1", 1)
        assert job.id == first.job.id
        s.job_result(job.id, True, COMMIT)  # unchanged commit: finishes at once
        assert (await waiter).status == "partial"

    asyncio.run(main())
    reg.close()


def test_dead_seed_jobs_requeued_and_restart_requeues(registry_db: str) -> None:
    reg = open_registry(registry_db)
    clock = Clock()

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30, clock=clock)
        s.ensure_job("model", "org/m", "main")
        job = await s.next_job("seed1", 0)
        assert job.state == "running" and s.alive_seeds() == 1
        clock.t += 60
        assert s.reap_dead_seeds() == []
        clock.t += 31
        assert [j.id for j in s.reap_dead_seeds()] == [job.id]
        assert reg.get_job(job.id).state == "queued" and s.alive_seeds() == 0
        again = await s.next_job("seed2", 0)
        assert again.id == job.id and again.seed_id == "seed2"

    asyncio.run(main())
    Scheduler(reg, ref_ttl=30)  # a new process
    # One tracker: its seeds went with the old process, so running jobs go back to the queue. Replicas
    # sharing the registry: the job may be another replica's seed's work, left to reap_dead_seeds.
    assert reg.list_jobs()[0].state == ("running" if reg.shared else "queued")
    reg.close()


def test_partial_revision_without_a_mirror_gets_a_job(registry_db: str) -> None:
    reg = open_registry(registry_db)
    clock = Clock()

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30, clock=clock, remirror_after=60)
        s.ensure_job("model", "org/m", COMMIT)
        job = await s.next_job("seed1", 0)
        s.register_revision(make_manifest(), job.id)
        s.job_result(job.id, False, error="OriginError", detail="connection reset")
        found = await s.get_manifest("model", "org/m", COMMIT, 0)
        assert found.status == "partial" and len(reg.list_jobs()) == 1  # too soon to retry
        clock.t += 61
        assert (await s.get_manifest("model", "org/m", COMMIT, 0)).status == "partial"
        jobs = reg.list_jobs()
        assert len(jobs) == 2 and jobs[0].state == "queued" and jobs[0].revision == COMMIT

    asyncio.run(main())
    reg.close()


def test_unexpected_errors_are_json_500(tmp_path: Path) -> None:
    app = create_app(TrackerConfig(db=tmp_path / "t.db"))

    def boom(*a: object, **kw: object) -> list:
        raise RuntimeError("disk on fire")

    app.state.registry.list_jobs = boom
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/v1/jobs")
        assert r.status_code == 500
        assert r.json() == {"error": "Internal", "detail": "internal error in the tracker; see its log"}
        assert client.get("/healthz").json() == {"ok": True}


def test_registration_with_an_unknown_job_still_registers(tmp_path: Path) -> None:
    with TestClient(create_app(TrackerConfig(db=tmp_path / "t.db"))) as client:
        body = {"job_id": "gone", "ref": "main", "manifest": make_manifest().to_dict()}
        r = client.post("/api/v1/revisions", json=body)
        assert r.status_code == 200 and r.json()["manifest"]["refs"] == ["main"]
        r = client.get("/api/v1/manifest", params={"repo_id": "org/m", "revision": "main", "wait": 0})
        assert r.status_code == 200 and r.json()["status"] == "partial"


def test_stale_ref_is_answered_from_the_last_commit_when_no_seed_can_refresh_it(registry_db: str) -> None:
    reg = open_registry(registry_db)
    clock = Clock()

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=0, clock=clock)
        reg.register_revision(make_manifest(), ref="main", now=clock.t)
        # No seed alive: the last known commit, and a queued job to refresh the ref later.
        lookup = await s.get_manifest("model", "org/m", "main", 5)
        assert lookup.manifest is not None and lookup.manifest.commit == COMMIT
        assert [j.state for j in reg.list_jobs()] == ["queued"]
        # A seed that cannot reach the origin: still the last known commit, not an error.
        s.heartbeat("seed1")
        waiter = asyncio.create_task(s.get_manifest("model", "org/m", "main", 5))
        await asyncio.sleep(0.01)
        job = await s.next_job("seed1", 1)
        s.job_result(job.id, False, error="OriginError", detail="origin down")
        assert (await waiter).manifest.commit == COMMIT
        # The branch is gone on the origin: that is an answer, not an outage.
        waiter = asyncio.create_task(s.get_manifest("model", "org/m", "main", 5))
        await asyncio.sleep(0.01)
        job = await s.next_job("seed1", 1)
        s.job_result(job.id, False, error="RevisionNotFound", detail="no such branch")
        with pytest.raises(MirrorFailed):
            await waiter

    asyncio.run(main())
    reg.close()


# -- mirror job bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "revision"),
    [("o/m", "."), ("o/m", ".."), ("o/m", "a/../b"), ("a/..", "main"), ("../b", "main"), ("o/m", "x\0")],
)
def test_no_job_for_a_key_no_origin_could_have(registry_db: str, repo_id: str, revision: str) -> None:
    reg = open_registry(registry_db)

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30)
        with pytest.raises(ManifestError):
            await s.get_manifest("model", repo_id, revision, 0)
        with pytest.raises(ManifestError):
            s.ensure_job("model", repo_id, revision)
        assert reg.list_jobs() == []

    asyncio.run(main())
    reg.close()


def test_queued_jobs_are_bounded_but_joining_one_is_not(registry_db: str) -> None:
    reg = open_registry(registry_db)
    clock = Clock()

    async def main() -> None:
        s = Scheduler(reg, ref_ttl=30, clock=clock, max_queued_jobs=3)
        for i in range(3):
            assert (await s.get_manifest("model", f"junk/r{i}", "main", 0)).status == "pending"
        with pytest.raises(MirrorFailed) as e:
            await s.get_manifest("model", "junk/r3", "main", 0)
        assert (e.value.status, e.value.code) == (503, "TooManyJobs") and "retry later" in e.value.detail
        # Asking again for a queued key joins its job: no new job, no refusal.
        assert (await s.get_manifest("model", "junk/r0", "main", 0)).status == "pending"
        # A seed taking one makes room (running jobs are bounded by the seeds, not by this).
        assert await s.next_job("seed1", 0) is not None
        assert (await s.get_manifest("model", "junk/r3", "main", 0)).status == "pending"
        assert len(reg.list_jobs()) == 4
        # A known revision still answers from the registry when the queue is full.
        reg.register_revision(make_manifest(repo_id="org/known"), ref="main", now=clock.t - 100)
        with pytest.raises(MirrorFailed):
            await s.get_manifest("model", "junk/r4", "main", 0)
        stale = await s.get_manifest("model", "org/known", "main", 0)
        assert stale.manifest is not None and stale.manifest.commit == COMMIT
        partial = await s.get_manifest("model", "org/known", COMMIT, 0)
        assert partial.status == "partial"  # its re-mirror job is skipped, not an error

    asyncio.run(main())
    reg.close()


def test_bad_revisions_and_a_full_queue_are_4xx_and_503_over_http(tmp_path: Path) -> None:
    app = create_app(TrackerConfig(db=tmp_path / "t.db"))
    app.state.scheduler.max_queued_jobs = 2
    with TestClient(app) as client:
        for repo_id, revision in [("org/m", "."), ("org/m", "a/../b"), ("a/..", "main"), ("o/m", "x" * 300)]:
            r = client.get("/api/v1/manifest", params={"repo_id": repo_id, "revision": revision, "wait": 0})
            assert r.status_code == 422 and r.json()["error"] == "BadRequest", r.text
        for i in range(2):
            r = client.get("/api/v1/manifest", params={"repo_id": f"junk/r{i}", "wait": 0})
            assert r.status_code == 202
        r = client.get("/api/v1/manifest", params={"repo_id": "junk/r2", "wait": 0})
        assert r.status_code == 503 and r.json()["error"] == "TooManyJobs"
        assert client.get("/healthz").json() == {"ok": True}
