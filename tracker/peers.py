"""The peer table: soft state rebuilt from announces, kept in memory.

Nothing here is persisted on purpose: after a restart every client re-announces within one interval,
so the table refills by itself. `PeerStore` is the whole interface the routes use (as `PieceServers` in
pieceservers.py is for the seeds' piece servers), so a shared store (several tracker replicas) can
replace the in-memory one without touching the routes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


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

    @property
    def seeder(self) -> bool:
        return self.left == 0

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True)
class SwarmCounts:
    complete: int  # seeders
    incomplete: int  # leechers
    downloaded: int  # "completed" events seen by this process (BEP 48)


class PeerStore:
    """In-memory peers per info-hash, keyed by peer_id; safe to call from any thread."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._swarms: dict[bytes, dict[bytes, Peer]] = {}
        self._downloaded: dict[bytes, int] = {}

    def upsert(self, info_hash: bytes, peer: Peer, completed: bool = False) -> bool:
        """Add or refresh a peer; False (and no change) if its peer_id is another node's live entry."""
        with self._lock:
            swarm = self._swarms.setdefault(info_hash, {})
            old = swarm.get(peer.peer_id)
            if old is not None and old.node != peer.node:
                return False
            if old is None or old.addr != peer.addr:
                # A restarted client announces with a new peer_id from the same ip:port; without this the
                # dead entry would be handed out until it expires. Only the same node's entries go.
                for pid in [
                    p.peer_id
                    for p in swarm.values()
                    if p.addr == peer.addr and p.peer_id != peer.peer_id and p.node == peer.node
                ]:
                    del swarm[pid]
            swarm[peer.peer_id] = peer
            if completed:
                self._downloaded[info_hash] = self._downloaded.get(info_hash, 0) + 1
            return True

    def remove(self, info_hash: bytes, peer_id: bytes, node: str = "") -> None:
        """event=stopped: drop the peer, if `node` is the one that announced it."""
        with self._lock:
            swarm = self._swarms.get(info_hash)
            if swarm is not None:
                if swarm.get(peer_id) is not None and swarm[peer_id].node == node:
                    del swarm[peer_id]
                if not swarm:
                    del self._swarms[info_hash]

    def peers_for(self, info_hash: bytes, now: float | None = None) -> list[Peer]:
        """Live peers of one swarm; stale ones are skipped even before `expire` runs."""
        cutoff = (time.time() if now is None else now) - self.ttl
        with self._lock:
            swarm = self._swarms.get(info_hash)
            if not swarm:
                return []
            return [p for p in swarm.values() if p.last_seen >= cutoff]

    def counts(self, info_hash: bytes, now: float | None = None) -> SwarmCounts:
        peers = self.peers_for(info_hash, now)
        seeders = sum(1 for p in peers if p.seeder)
        with self._lock:
            downloaded = self._downloaded.get(info_hash, 0)
        return SwarmCounts(complete=seeders, incomplete=len(peers) - seeders, downloaded=downloaded)

    def info_hashes(self) -> list[bytes]:
        with self._lock:
            return list(self._swarms)

    def expire(self, now: float | None = None) -> int:
        """Drop peers not heard from within `ttl`; returns how many were dropped."""
        cutoff = (time.time() if now is None else now) - self.ttl
        dropped = 0
        with self._lock:
            for info_hash in list(self._swarms):
                swarm = self._swarms[info_hash]
                stale = [pid for pid, p in swarm.items() if p.last_seen < cutoff]
                for pid in stale:
                    del swarm[pid]
                dropped += len(stale)
                if not swarm:
                    del self._swarms[info_hash]
        return dropped
