"""What the peer stores keep and answer (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from tracker.unavailable import StoreUnavailable

# Sampled per kind (seeders, leechers) for the handout: enough for numwant up to MAX_NUMWANT (200)
# even after the policy drops the requester and peers of the wrong role.
SAMPLE_PER_KIND = 256


@dataclass(frozen=True)
class Peer:
    peer_id: bytes
    ip: str
    port: int
    left: int
    last_seen: float = 0.0
    # What kind of hfbt peer announced (one of hfbt.wire.ROLES, "" for stock clients): the seed and the
    # nodes that take its pieces over HTTP must not be handed to each other (handout.keep_roles_apart).
    role: str = ""
    # Who announced it (the ticket's node; "" on an open tracker): only that node may change or remove
    # this entry, so no node can evict or re-point another one's peers.
    node: str = ""
    # Seconds this entry lives without a re-announce: two of the intervals it was told (seeders are
    # told to come back far less often than leechers, tracker/intervals.py).
    ttl: float = 60.0
    # Where it is (announce's zone=; "" : unsaid): the handout keeps most traffic inside a zone.
    zone: str = ""

    @property
    def seeder(self) -> bool:
        return self.left == 0

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def live(self, now: float) -> bool:
        return self.last_seen + self.ttl >= now


@dataclass(frozen=True)
class SwarmCounts:
    complete: int  # seeders
    incomplete: int  # leechers
    downloaded: int  # "completed" events seen (BEP 48)


@dataclass(frozen=True)
class Sample:
    """What an announce gets back from the store: a bounded sample of the swarm and its counts."""

    peers: list[Peer]
    counts: SwarmCounts


class PeerIdTaken(Exception):
    """The announced peer_id is another node's live entry: refused, nothing changed."""


class PeerStoreError(StoreUnavailable):
    """The shared store cannot be reached or answered nonsense; the announce fails with a reason."""
