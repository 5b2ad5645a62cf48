"""The peer table in this process's memory: the embedded default, safe to call from any thread.

Each swarm keeps its seeders and its leechers in a `_Bag` (a list plus an index, so adding, removing and
drawing a random sample cost O(1) per peer whatever the swarm's size) and an address index, so that a
restarted client's old entry is found without a scan.
"""

from __future__ import annotations

import random
import threading

from tracker.peerstore.peer import SAMPLE_PER_KIND, Peer, PeerIdTaken, Sample, SwarmCounts


class _Bag:
    """Peers of one kind: insertion order while small, O(1) add/remove/sample at any size."""

    def __init__(self) -> None:
        self._ids: list[bytes] = []
        self._at: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, peer_id: bytes) -> None:
        if peer_id not in self._at:
            self._at[peer_id] = len(self._ids)
            self._ids.append(peer_id)

    def discard(self, peer_id: bytes) -> None:
        i = self._at.pop(peer_id, None)
        if i is None:
            return
        last = self._ids.pop()
        if last != peer_id:  # move the last one into the hole
            self._ids[i] = last
            self._at[last] = i

    def sample(self, k: int, rng: random.Random) -> list[bytes]:
        # A swarm no larger than the sample is returned whole and in order; the seed-fanout policy
        # (tracker/handout.py) relies on first-announce order there.
        return list(self._ids) if len(self._ids) <= k else rng.sample(self._ids, k)


class _Swarm:
    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.seeders = _Bag()
        self.leechers = _Bag()
        self.at: dict[tuple[str, int], bytes] = {}
        self.downloaded = 0

    def drop(self, peer_id: bytes) -> None:
        p = self.peers.pop(peer_id, None)
        if p is None:
            return
        (self.seeders if p.seeder else self.leechers).discard(peer_id)
        if self.at.get(p.addr) == peer_id:
            del self.at[p.addr]

    def put(self, p: Peer) -> None:
        old = self.peers.get(p.peer_id)
        if old is not None and (old.seeder != p.seeder or old.addr != p.addr):
            self.drop(p.peer_id)
        self.peers[p.peer_id] = p
        (self.seeders if p.seeder else self.leechers).add(p.peer_id)
        self.at[p.addr] = p.peer_id

    def counts(self) -> SwarmCounts:
        return SwarmCounts(len(self.seeders), len(self.leechers), self.downloaded)


class LocalPeerStore:
    def __init__(self, sample: int = SAMPLE_PER_KIND, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._swarms: dict[bytes, _Swarm] = {}
        self._sample = sample
        self._rng = rng or random.Random()

    def announce(self, info_hash: bytes, peer: Peer, completed: bool, now: float) -> Sample:
        with self._lock:
            swarm = self._swarms.setdefault(info_hash, _Swarm())
            old = swarm.peers.get(peer.peer_id)
            if old is not None and old.node != peer.node and old.live(now):
                raise PeerIdTaken(peer.peer_id.hex())
            there = swarm.at.get(peer.addr)
            if there is not None and there != peer.peer_id and swarm.peers[there].node == peer.node:
                swarm.drop(there)  # the same node restarted at this address with a new peer_id
            swarm.put(peer)
            if completed:
                swarm.downloaded += 1
            ids = swarm.seeders.sample(self._sample, self._rng) + swarm.leechers.sample(
                self._sample, self._rng
            )
            live = [p for p in (swarm.peers[i] for i in ids) if p.live(now)]
            return Sample(live, swarm.counts())

    def remove(self, info_hash: bytes, peer_id: bytes, node: str = "") -> None:
        with self._lock:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                return
            p = swarm.peers.get(peer_id)
            if p is not None and p.node == node:
                swarm.drop(peer_id)
            if not swarm.peers:
                del self._swarms[info_hash]

    def counts(self, info_hash: bytes) -> SwarmCounts:
        with self._lock:
            swarm = self._swarms.get(info_hash)
            return swarm.counts() if swarm is not None else SwarmCounts(0, 0, 0)

    def swarms(self) -> dict[bytes, SwarmCounts]:
        with self._lock:
            return {h: s.counts() for h, s in self._swarms.items()}

    def expire(self, now: float) -> int:
        """Housekeeping (every few seconds, off the announce path): a full pass over every peer."""
        dropped = 0
        with self._lock:
            for info_hash in list(self._swarms):
                swarm = self._swarms[info_hash]
                stale = [pid for pid, p in swarm.peers.items() if not p.live(now)]
                for pid in stale:
                    swarm.drop(pid)
                dropped += len(stale)
                if not swarm.peers:
                    del self._swarms[info_hash]
        return dropped

    def close(self) -> None:
        pass
