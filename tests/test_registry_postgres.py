"""The registry shared by tracker replicas in a real PostgreSQL (tests/pgserver.py).

Two Registry objects on one database stand for two replicas; the process-level tests (two `hfbt tracker`
processes) are in tests/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from hfbt.cluster import free_port
from hfbt.config import TrackerConfig
from tests.pgserver import PgServer
from tests.test_tracker_http import announce_query
from tests.test_tracker_unit import COMMIT, Clock, make_manifest
from tracker.app import create_app
from tracker.db import DbError, RegistryUnavailable
from tracker.mirror import Scheduler
from tracker.registry import UNKNOWN_TORRENT_TTL_S, open_registry

IH = "c" * 40


def _terminate_backends(server: PgServer, url: str) -> int:
    """Cut every connection to the test's database, as a failover or a restarted server would."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), password=server.password, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname=%s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


def test_a_torrent_registered_on_one_replica_is_announceable_on_the_other(pg_url: str) -> None:
    a, b = open_registry(pg_url), open_registry(pg_url)
    a.register_revision(make_manifest(), ref="main")
    assert not b.has_torrent(bytes.fromhex(IH), now=0.0)
    a.add_torrent("model", "org/m", COMMIT, "model.safetensors", IH, b"d4:infoe", 100, "2" * 64)
    # B remembered the miss for a moment (unknown hashes cost one query a second), then asks again.
    assert not b.has_torrent(bytes.fromhex(IH), now=UNKNOWN_TORRENT_TTL_S / 2)
    assert b.has_torrent(bytes.fromhex(IH), now=UNKNOWN_TORRENT_TTL_S + 0.1)
    assert b.get_torrent_info(IH) == b"d4:infoe"
    # Sizes past 2 GiB and exact timestamps survive the round trip (BIGINT, DOUBLE PRECISION).
    big = make_manifest(
        "d" * 40, files=[{"path": "w.bin", "size": 150 * 2**30, "etag": "9" * 64, "sha256": "9" * 64}]
    )
    b.register_revision(big, ref="v1", now=1_733_000_000.123456)
    assert a.get_ref("model", "org/m", "v1").resolved_at == 1_733_000_000.123456
    assert a.get_manifest("model", "org/m", "d" * 40).files[0].size == 150 * 2**30
    a.close()
    b.close()


def test_twenty_concurrent_requests_over_two_replicas_make_one_job(pg_url: str) -> None:
    replicas = [open_registry(pg_url), open_registry(pg_url)]
    barrier = threading.Barrier(20)
    results: list = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(replicas[i % 2].ensure_job("model", "org/m", "main"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    for r in replicas:
        r.close()


def test_each_queued_job_is_claimed_once_across_replicas(pg_url: str) -> None:
    replicas = [open_registry(pg_url), open_registry(pg_url)]
    for i in range(10):
        replicas[0].ensure_job("model", f"org/m{i}", "main")
    claimed: list = []
    barrier = threading.Barrier(8)

    def seed(i: int) -> None:
        barrier.wait()
        while (job := replicas[i % 2].claim_job(f"seed{i}")) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=seed, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 10 and len(set(claimed)) == 10
    for r in replicas:
        r.close()


def test_a_seed_heard_through_another_replica_is_not_reaped(pg_url: str) -> None:
    a, b = open_registry(pg_url), open_registry(pg_url)
    clock = Clock()
    sa, sb = Scheduler(a, ref_ttl=30, clock=clock), Scheduler(b, ref_ttl=30, clock=clock)

    async def main() -> None:
        sa.ensure_job("model", "org/m", "main")
        job = await sa.next_job("seed1", 0)
        clock.t += 200
        sb.heartbeat("seed1")  # the seed now talks to replica B
        assert sa.reap_dead_seeds() == []
        assert a.get_job(job.id).state == "running"
        # The check is inside the write: a list of seeds believed dead is re-checked there.
        assert a.requeue_running(["seed1"], clock.t, silent_since=clock.t - 90) == []
        clock.t += 91
        assert [j.id for j in sb.reap_dead_seeds()] == [job.id]

    asyncio.run(main())
    # A replica restarting leaves the running jobs of the others' seeds alone.
    sa.ensure_job("model", "org/n", "main")
    running = asyncio.run(sb.next_job("seed2", 0))
    Scheduler(a, ref_ttl=30)
    assert a.get_job(running.id).state == "running"
    a.close()
    b.close()


def test_a_node_waiting_on_one_replica_is_woken_by_a_seed_on_the_other(pg_url: str) -> None:
    a, b = open_registry(pg_url), open_registry(pg_url)

    async def main() -> None:
        sa, sb = Scheduler(a, ref_ttl=30), Scheduler(b, ref_ttl=30)
        waiter = asyncio.create_task(sa.get_manifest("model", "org/m", "main", wait=30))
        await asyncio.sleep(0.1)
        job = await sb.next_job("seed1", 0)  # B's seed takes A's node's job
        assert job is not None
        sb.register_revision(make_manifest(), job.id)
        await asyncio.sleep(0.2)
        assert not waiter.done()  # A learns only by polling: nothing told it yet
        sa.poll_registry()
        lookup = await asyncio.wait_for(waiter, 2)
        assert lookup.manifest is not None and lookup.manifest.commit == COMMIT

        # A seed long-polling A is woken by a job queued through B.
        seed = asyncio.create_task(sa.next_job("seed2", 30))
        await asyncio.sleep(0.1)
        sb.ensure_job("model", "org/other", "main")
        sa.poll_registry()
        claimed = await asyncio.wait_for(seed, 2)
        assert claimed is not None and claimed.repo_id == "org/other"

    asyncio.run(main())
    a.close()
    b.close()


def test_a_password_in_the_url_is_refused(pg_server: PgServer) -> None:
    url = pg_server.url().replace("hfbt@", f"hfbt:{pg_server.password}@")
    with pytest.raises(DbError) as e:
        open_registry(url)
    assert pg_server.password not in str(e.value) and "HFBT_PG_PASSWORD" in str(e.value)
    with pytest.raises(DbError):
        open_registry(pg_server.url() + f"?password={pg_server.password}")


def test_unreachable_or_wrong_password_is_a_clear_error_without_the_secret(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RegistryUnavailable) as e:
        open_registry(f"postgresql://hfbt@127.0.0.1:{free_port()}/x")
    assert "unreachable" in str(e.value)
    monkeypatch.setenv("PGPASSWORD", "wrong-password-123")
    with pytest.raises(RegistryUnavailable) as e:
        open_registry(pg_url)
    assert "password authentication failed" in str(e.value) and "wrong-password-123" not in str(e.value)


def test_an_outage_is_a_503_and_the_next_call_reconnects(pg_server: PgServer, pg_url: str) -> None:
    # TestClient comes from "testclient", no address: the announce names its own.
    with TestClient(create_app(TrackerConfig(db=pg_url, trust_announce_ip=True))) as client:
        assert client.get("/api/v1/revisions").status_code == 200
        assert _terminate_backends(pg_server, pg_url) >= 1
        r = client.get("/api/v1/revisions")
        assert r.status_code == 503 and r.json()["error"] == "Unavailable"
        assert r.headers["Retry-After"] == "5" and pg_server.password not in r.text
        assert client.get("/api/v1/revisions").status_code == 200  # reconnected
        # Announce answers a bencoded failure, not a 500.
        assert _terminate_backends(pg_server, pg_url) >= 1
        query = announce_query(bytes(20), b"-XX0001-" + b"a" * 12, 6881, 0, ip="127.0.0.1")
        r = client.get(f"/announce?{query}")
        assert r.status_code == 503 and b"failure reason" in r.content, r.content
        assert client.get("/api/v1/revisions").status_code == 200


def test_a_closed_tracker_on_postgres_needs_one_ticket_key_for_all_replicas(
    pg_url: str, tmp_path: Path
) -> None:
    closed = {"operator_token": "o" * 32, "seed_token": "s" * 32}
    with pytest.raises(ValueError, match="--ticket-key"):
        create_app(TrackerConfig(db=pg_url, **closed))
    create_app(TrackerConfig(db=pg_url, ticket_key=tmp_path / "k", **closed))
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0


def test_node_identities_and_the_one_active_job_index_hold_on_both_databases(registry_db: str) -> None:
    reg = open_registry(registry_db)
    assert reg.add_node("n1", "h1") and not reg.add_node("n1", "h2")
    assert reg.revoke_node("n1") and reg.node_hash("n1") is None
    assert reg.add_node("n1", "h3") and reg.node_hash("n1") == "h3"
    job, _ = reg.ensure_job("model", "org/m", "main")
    # The database itself refuses a second active job for one key, whatever a caller does.
    with pytest.raises(reg._db.integrity_error), reg._db.tx() as db:
        db.execute(
            "INSERT INTO jobs (id, repo_type, repo_id, revision, state, created, updated)"
            " VALUES ('x', 'model', 'org/m', 'main', 'queued', 0, 0)"
        )
    assert [j.id for j in reg.list_jobs()] == [job.id]
    reg.close()


def test_the_password_can_come_from_hfbt_pg_password(
    pg_server: PgServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(RegistryUnavailable):
        open_registry(pg_url)
    open_registry(pg_url, pg_server.password).close()
