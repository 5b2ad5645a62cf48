"""The peer stores, local and Redis (a real redis-server), held to one contract."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from tracker.peerstore import Peer, PeerIdTaken, PeerStore, PeerStoreError, SwarmCounts, open_peer_store
from tracker.peerstore.local import LocalPeerStore
from tracker.peerstore.redis import RedisPeerStore

IH = bytes(range(20))
IH2 = bytes(range(1, 21))


def pid(i: int) -> bytes:
    return i.to_bytes(20, "big")


def peer(i: int, left: int = 5, at: float = 100.0, node: str = "", ttl: float = 60.0, port: int = 0) -> Peer:
    return Peer(pid(i), f"10.0.{i // 250}.{i % 250 + 1}", port or 6881, left, at, "", node, ttl)


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[PeerStore]:
    if request.param == "local":
        s: PeerStore = LocalPeerStore(rng=random.Random(1))
    else:
        s = RedisPeerStore(request.getfixturevalue("redis_url"))
    try:
        yield s
    finally:
        s.close()


def ids(peers: list[Peer]) -> set[bytes]:
    return {p.peer_id for p in peers}


def test_announce_counts_and_expiry(store: PeerStore) -> None:
    store.announce(IH, peer(1, left=0), False, 100)
    store.announce(IH, peer(2, left=5), True, 100)
    got = store.announce(IH, peer(2, left=0, at=150), False, 150)
    assert got.counts == SwarmCounts(2, 0, 1)
    assert ids(got.peers) == {pid(1), pid(2)}
    # Peer 1 lives until 160: a sample at 170 leaves it out even before housekeeping drops it.
    late = store.announce(IH, peer(3, at=170), False, 170)
    assert pid(1) not in ids(late.peers)
    store.expire(170)  # (the Redis store may have dropped it on the way already)
    assert store.counts(IH) == SwarmCounts(1, 1, 1)
    assert store.swarms() == {IH: SwarmCounts(1, 1, 1)}


def test_seeders_live_longer_than_leechers(store: PeerStore) -> None:
    store.announce(IH, peer(1, left=0, ttl=7200), False, 100)
    store.announce(IH, peer(2, left=5, ttl=60), False, 100)
    assert store.expire(1000) == 1
    assert store.counts(IH) == SwarmCounts(1, 0, 0)
    assert store.expire(7400) == 1
    assert store.swarms() == {}


def test_a_restarted_client_replaces_its_old_entry(store: PeerStore) -> None:
    store.announce(IH, peer(1, node="n1"), False, 100)
    # Same node, same address, new peer_id: the old entry goes at once, not at its expiry.
    restarted = Peer(pid(9), "10.0.0.2", 6881, 5, 101, "", "n1", 60)
    got = store.announce(IH, restarted, False, 101)
    assert ids(got.peers) == {pid(9)} and store.counts(IH).incomplete == 1
    # Another node at that address (a NATed neighbour) does not evict it.
    got = store.announce(IH, Peer(pid(8), "10.0.0.2", 6881, 5, 102, "", "n2", 60), False, 102)
    assert ids(got.peers) == {pid(8), pid(9)}


def test_no_node_takes_or_removes_another_nodes_peer(store: PeerStore) -> None:
    store.announce(IH, peer(1, node="n1"), False, 100)
    with pytest.raises(PeerIdTaken):
        store.announce(IH, Peer(pid(1), "10.9.9.9", 1, 5, 101, "", "n2", 60), False, 101)
    store.remove(IH, pid(1), node="n2")
    assert store.counts(IH).incomplete == 1
    got = store.announce(IH, peer(2, node="n1", at=101), False, 101)
    assert got.peers and all(p.ip != "10.9.9.9" for p in got.peers)
    store.remove(IH, pid(1), node="n1")
    assert store.counts(IH).incomplete == 1
    # Once expired, the peer_id is free again.
    store.announce(IH, Peer(pid(1), "10.9.9.9", 1, 5, 500, "", "n2", 60), False, 500)


def test_a_peer_moves_between_seeders_and_leechers(store: PeerStore) -> None:
    store.announce(IH, peer(1, left=5), False, 100)
    assert store.counts(IH) == SwarmCounts(0, 1, 0)
    store.announce(IH, peer(1, left=0), True, 101)
    assert store.counts(IH) == SwarmCounts(1, 0, 1)
    store.announce(IH, peer(1, left=5), False, 102)  # a re-download after gc
    assert store.counts(IH) == SwarmCounts(0, 1, 1)


def test_swarms_are_separate(store: PeerStore) -> None:
    store.announce(IH, peer(1), False, 100)
    got = store.announce(IH2, peer(2), False, 100)
    assert ids(got.peers) == {pid(2)}
    assert store.swarms() == {IH: SwarmCounts(0, 1, 0), IH2: SwarmCounts(0, 1, 0)}


def test_a_large_swarm_is_sampled_not_returned_whole(store: PeerStore) -> None:
    sample = 16
    store._sample = sample  # type: ignore[attr-defined]
    for i in range(200):
        store.announce(IH, peer(i, left=0 if i % 2 else 5), False, 100)
    seen: set[bytes] = set()
    for i in range(20):
        got = store.announce(IH, peer(i), False, 100)
        assert len(got.peers) <= 2 * sample
        assert sum(p.seeder for p in got.peers) == sample  # the seeders' share is kept
        seen |= ids(got.peers)
    assert store.counts(IH) == SwarmCounts(90, 110, 0)
    assert len(seen) > 3 * sample  # random samples, not the same first peers every time


def test_many_threads_announce_at_once(store: PeerStore) -> None:
    def run(base: int) -> None:
        for i in range(base, base + 50):
            store.announce(IH, peer(i), False, 100)

    threads = [threading.Thread(target=run, args=(k * 50,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts(IH).incomplete == 200


def test_two_replicas_share_one_redis_swarm(redis_url: str) -> None:
    a, b = RedisPeerStore(redis_url), RedisPeerStore(redis_url)
    a.announce(IH, peer(1, left=0), False, 100)
    got = b.announce(IH, peer(2), False, 100)
    assert ids(got.peers) == {pid(1), pid(2)}
    a.remove(IH, pid(1))
    assert b.counts(IH) == SwarmCounts(0, 1, 0)


def test_redis_down_is_a_store_error_without_the_url(redis_server: int) -> None:
    s = RedisPeerStore("redis://127.0.0.1:1/0")
    with pytest.raises(PeerStoreError) as e:
        s.announce(IH, peer(1), False, 100)
    assert "127.0.0.1" not in str(e.value)


def test_peer_store_urls() -> None:
    assert isinstance(open_peer_store("local"), LocalPeerStore)
    with pytest.raises(ValueError, match="HFBT_REDIS_PASSWORD"):
        open_peer_store("redis://:hunter2@127.0.0.1:6379/0")
    with pytest.raises(ValueError) as e:
        open_peer_store("memcached://x")
    assert "memcached" in str(e.value)


def test_every_field_of_a_peer_comes_back(store: PeerStore) -> None:
    me = Peer(pid(7), "10.9.8.7", 7000, 0, 100.0, "seed", "node-7", 120.0, "eu-west-1a")
    store.announce(IH, me, False, 100)
    got = store.announce(IH, peer(8), False, 100).peers
    assert me in got
