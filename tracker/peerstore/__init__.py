"""The peer table: soft state rebuilt from announces.

`PeerStore` is the whole interface the routes use. Two implementations: `local` (in this process, the
embedded default: after a restart every client re-announces within its interval and the table refills)
and `redis` (shared by tracker replicas, and it outlives a tracker restart). `open_peer_store` picks one
from `--peer-store`.

Every announce costs the same whatever the swarm's size: a store answers with a bounded random sample
of the swarm (`SAMPLE_PER_KIND` seeders and as many leechers), from which the handout policy chooses,
and counts it keeps up to date rather than computes.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from tracker.peerstore.peer import (
    SAMPLE_PER_KIND,
    Peer,
    PeerIdTaken,
    PeerStoreError,
    Sample,
    SwarmCounts,
)

__all__ = ["SAMPLE_PER_KIND", "Peer", "PeerIdTaken", "PeerStore", "PeerStoreError", "Sample", "SwarmCounts"]


class PeerStore(Protocol):
    def announce(self, info_hash: bytes, peer: Peer, completed: bool, now: float) -> Sample:
        """Add or refresh `peer` and sample its swarm (the requester may be in the sample).

        Raises PeerIdTaken when the peer_id is another node's live entry. A restarted client announces
        with a new peer_id from the same ip:port: that node's old entry at that address is dropped.
        """
        ...

    def remove(self, info_hash: bytes, peer_id: bytes, node: str = "") -> None:
        """event=stopped: drop the peer, if `node` is the one that announced it."""
        ...

    def counts(self, info_hash: bytes) -> SwarmCounts: ...

    def swarms(self) -> dict[bytes, SwarmCounts]:
        """Every swarm with a peer in it (for operators and metrics, not for the announce path)."""
        ...

    def expire(self, now: float) -> int:
        """Drop peers past their ttl; returns how many were dropped."""
        ...

    def close(self) -> None: ...


def open_peer_store(url: str, password: str | None = None) -> PeerStore:
    """`local` (or empty): this process's memory; `redis://…` / `rediss://…` / `unix://…`: Redis."""
    if url in ("", "local"):
        from tracker.peerstore.local import LocalPeerStore

        return LocalPeerStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        if urlsplit(url).password is not None:
            # A flag's value is world-readable in /proc and lands in shell history.
            raise ValueError("--peer-store must not carry a password: set HFBT_REDIS_PASSWORD instead")
        from tracker.peerstore.redis import RedisPeerStore

        return RedisPeerStore(url, password)
    raise ValueError(f"--peer-store must be 'local' or a redis:// URL, not {url.split('://')[0]!r}://…")
