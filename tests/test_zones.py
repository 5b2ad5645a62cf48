"""Topology-aware handout (tracker/handout.py by_zone): same-zone peers first, few crossers per zone."""

from __future__ import annotations

import itertools
import random

import pytest

from tracker import announce as bt
from tracker.announce import AnnounceError
from tracker.handout import by_zone, random_mix
from tracker.peerstore import Peer

IH = bytes(range(20))


def node(i: int, zone: str, left: int = 1) -> Peer:
    return Peer(i.to_bytes(20, "big"), f"10.0.0.{i}", 6000 + i, left, 0.0, "", "", 60.0, zone)


def swarm(sizes: dict[str, int]) -> list[Peer]:
    counter = itertools.count(1)
    return [node(next(counter), zone) for zone, n in sizes.items() for _ in range(n)]


def crossers(peers: list[Peer], gateways: int, info_hash: bytes = IH) -> set[bytes]:
    """Every peer handed at least one peer of another zone."""
    out = set()
    for me in peers:
        if any(p.zone != me.zone for p in by_zone(me, info_hash, peers, gateways)):
            out.add(me.peer_id)
    return out


def test_no_zones_or_one_zone_or_zero_gateways_change_nothing() -> None:
    for peers in (swarm({"": 10}), swarm({"a": 10})):
        assert all(by_zone(me, IH, peers, 2) == peers for me in peers)
    mixed = swarm({"a": 5, "b": 5})
    assert all(by_zone(me, IH, mixed, 0) == mixed for me in mixed)


@pytest.mark.parametrize("gateways", [1, 2, 3])
def test_only_each_zones_gateways_cross_and_only_to_other_gateways(gateways: int) -> None:
    peers = swarm({"a": 20, "b": 15, "c": 1, "": 2})
    crossing = crossers(peers, gateways)
    by_zone_count = {z: sum(1 for p in peers if p.zone == z and p.peer_id in crossing) for z in "abc"}
    assert by_zone_count == {"a": gateways, "b": gateways, "c": 1}
    for me in peers:
        handed = by_zone(me, IH, peers, gateways)
        # Everyone gets every peer of its own zone (bar itself, which the policy drops).
        assert {p.peer_id for p in peers if p.zone == me.zone} <= {p.peer_id for p in handed}
        for p in handed:
            if p.zone != me.zone:
                assert me.peer_id in crossing and p.peer_id in crossing


def test_the_gateways_differ_per_blob_so_no_one_node_carries_every_blob() -> None:
    peers = swarm({"a": 10, "b": 10})
    seen = set()
    for i in range(20):
        seen |= crossers(peers, 1, bytes([i]) * 20)
    assert len(seen) > 6


def test_a_node_unseen_by_the_store_yet_ranks_itself() -> None:
    peers = swarm({"a": 3})
    newcomer = node(99, "b")  # the only one of its zone: its gateway, it sees a's gateways
    handed = by_zone(newcomer, IH, peers, 1)
    assert len(handed) == 1 and handed[0].zone == "a"
    # And the policy still picks among what is left.
    assert random_mix(newcomer, handed, 50, random.Random(0)) == handed


def test_zone_is_parsed_and_checked_in_the_announce() -> None:
    q = "info_hash=" + "%01" * 20 + "&peer_id=" + "%02" * 20 + "&port=1&left=0"
    assert bt.parse_announce(q + "&zone=eu-west-1a", "10.0.0.1").zone == "eu-west-1a"
    assert bt.parse_announce(q, "10.0.0.1").zone == ""
    for bad in ("-a", "a" * 64, "a%20b", "a/b"):
        with pytest.raises(AnnounceError, match="zone"):
            bt.parse_announce(q + "&zone=" + bad, "10.0.0.1")


def test_with_zone_appends_to_any_announce_url() -> None:
    from hfbt.wire import with_role, with_zone

    assert with_zone("http://t/announce/TICKET", "") == "http://t/announce/TICKET"
    assert with_zone("http://t/announce/TICKET", "z1") == "http://t/announce/TICKET?zone=z1"
    assert with_zone(with_role("http://t/announce", "seed"), "z1") == "http://t/announce?hfbt=seed&zone=z1"
    assert (
        bt.parse_announce(
            "info_hash=" + "%01" * 20 + "&peer_id=" + "%02" * 20 + "&port=1&left=0&hfbt=seed&zone=z1",
            "10.0.0.1",
        ).zone
        == "z1"
    )
