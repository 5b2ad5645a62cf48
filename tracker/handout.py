"""Which peers an announcing node gets back (pure; one policy per function so each can be tuned alone)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

from hfbt.wire import ROLE_PIECES, ROLE_SEED
from tracker.announce import DEFAULT_NUMWANT, MAX_NUMWANT
from tracker.peerstore import Peer

_RNG = random.Random()


def clamp_numwant(numwant: int | None) -> int:
    if numwant is None:
        return DEFAULT_NUMWANT
    return max(0, min(numwant, MAX_NUMWANT))


def others(requester: Peer, candidates: Sequence[Peer]) -> list[Peer]:
    """Everyone but the requester: neither its peer_id nor its ip:port (a restart changes the peer_id)."""
    return [p for p in candidates if p.peer_id != requester.peer_id and p.addr != requester.addr]


def keep_roles_apart(requester: Peer, candidates: Sequence[Peer]) -> list[Peer]:
    """Applied before any policy: a node that takes a seed's pieces over HTTP (hfbt/seed/pieces.py)
    and that seed never meet in the swarm, or the seed would send those pieces a second time."""
    if requester.role == ROLE_PIECES:
        return [p for p in candidates if p.role != ROLE_SEED]
    if requester.role == ROLE_SEED:
        return [p for p in candidates if p.role != ROLE_PIECES]
    return list(candidates)


def zone_rank(info_hash: bytes, peer: Peer) -> bytes:
    """A peer's place in its zone for one torrent (rendezvous hashing): the lowest are its gateways.
    Every replica and every announce agree on it without shared state, and it differs per torrent,
    so no one node carries every blob across zones."""
    return hashlib.blake2b(info_hash + peer.peer_id, digest_size=8).digest()


def by_zone(requester: Peer, info_hash: bytes, candidates: Sequence[Peer], gateways: int) -> list[Peer]:
    """Applied before the policy: same-zone peers, plus, for a zone's gateways only, the other
    zones' gateways.

    Each zone's `gateways` lowest-ranked peers (zone_rank, among the candidates and the requester)
    are its only links to other zones, so a blob crosses into a zone about once (once per gateway at
    worst) and then spreads over the zone's own links. A peer with no zone is in the zone "", so a
    swarm where nobody names a zone is handed out as before. With gateways <= 0 zones are ignored.
    """
    zones = {p.zone for p in candidates} | {requester.zone}
    if gateways <= 0 or len(zones) == 1:
        return list(candidates)
    members: dict[str, list[Peer]] = {}
    for p in candidates:
        if p.peer_id != requester.peer_id:
            members.setdefault(p.zone, []).append(p)
    members.setdefault(requester.zone, []).append(requester)
    gates: set[bytes] = set()
    for peers in members.values():
        peers.sort(key=lambda p: zone_rank(info_hash, p))
        gates.update(p.peer_id for p in peers[:gateways])
    local = [p for p in candidates if p.zone == requester.zone]
    if requester.peer_id not in gates:
        return local
    return local + [p for p in candidates if p.zone != requester.zone and p.peer_id in gates]


def random_mix(
    requester: Peer, candidates: Sequence[Peer], numwant: int | None, rng: random.Random | None = None
) -> list[Peer]:
    """The default policy.

    A seeder gets only leechers: two seeders have nothing to trade. A leecher gets a random sample with
    at least a quarter of the slots (and at least one) reserved for seeders when there are any, so that a
    fresh swarm always reaches a full copy, while most slots go to leechers to spread upload across the
    swarm instead of piling every node onto the seed.
    """
    rng = rng or _RNG
    want = clamp_numwant(numwant)
    pool = others(requester, candidates)
    if requester.seeder:
        pool = [p for p in pool if not p.seeder]
    if want == 0 or not pool:
        return []
    if len(pool) <= want:
        rng.shuffle(pool)
        return pool
    if requester.seeder:
        return rng.sample(pool, want)
    seeders = [p for p in pool if p.seeder]
    leechers = [p for p in pool if not p.seeder]
    n_seeders = min(len(seeders), max(1, want // 4)) if seeders else 0
    n_leechers = min(len(leechers), want - n_seeders)
    # Few leechers: give the unused slots to more seeders rather than return a short list.
    n_seeders = min(len(seeders), want - n_leechers)
    chosen = rng.sample(seeders, n_seeders) + rng.sample(leechers, n_leechers)
    rng.shuffle(chosen)
    return chosen


SEED_FANOUT = 2


def seed_fanout(
    requester: Peer,
    candidates: Sequence[Peer],
    numwant: int | None,
    rng: random.Random | None = None,
    fanout: int = SEED_FANOUT,
) -> list[Peer]:
    """random_mix, but each seeder is handed to (and gets) only the first `fanout` leechers.

    `candidates` come in the store's order: the local PeerStore returns a swarm that fits in one sample
    whole, in first-announce order until a peer leaves (the last one then takes the leaver's place), so
    the chosen leechers stay the same while others join. When a chosen leecher completes, another
    leecher takes its place, so no leecher is cut off from the seeders for good. The Redis store's
    samples are in no order: this policy is for the local store.

    Not the default: the chosen leechers fetch nearly everything from the seeder, so it sends more
    copies, not fewer (bench/README.md has the figures). Kept to reproduce that result.
    """
    leechers = [p for p in candidates if not p.seeder]
    chosen = {p.peer_id for p in leechers[:fanout]}
    if requester.seeder:
        allowed = [p for p in candidates if not p.seeder and p.peer_id in chosen]
        return random_mix(requester, allowed, numwant, rng)
    if requester.peer_id in chosen:
        return random_mix(requester, candidates, numwant, rng)
    return random_mix(requester, leechers, numwant, rng)


# (requester, candidates, numwant) -> the peers handed to the requester.
Policy = Callable[[Peer, Sequence[Peer], int | None], list[Peer]]

# Interchangeable policies, chosen with `hfbt tracker --handout NAME` (HFBT_HANDOUT).
POLICIES: dict[str, Policy] = {"random-mix": random_mix, "seed-fanout": seed_fanout}
