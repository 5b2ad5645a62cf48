"""How soon each announcing peer is told to come back (pure).

Announce load should follow what is being downloaded, not what is stored: a node holding 500 blobs
seeds 500 torrents, and at a leecher's interval a cluster of 5,000 such nodes would announce 83,000
times a second while nothing changes. So a seeder (left = 0) gets `seeder_s`, a leecher `leecher_s`;
a leecher that completes announces `completed` at once anyway (BitTorrent clients do), and its entry
lives two of the intervals it was told (`Peer.ttl`).

The seeder interval is a deployment's choice, not a constant: with the in-memory peer store a restarted
tracker learns of each seeder only at its next announce, so the embedded default keeps both equal; a
cluster with a shared store (Redis outlives a tracker restart) sets it to an hour (docs/operations.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Seeders' intervals are spread by this fraction so that seeders started together (a rollout, a
# restart) do not keep announcing in the same second forever.
SEEDER_JITTER = 0.1


@dataclass(frozen=True)
class Intervals:
    leecher_s: int
    seeder_s: int

    def for_peer(self, left: int, rng: random.Random | None = None) -> tuple[int, int]:
        """(interval, min interval) for an announce with this `left`."""
        if left > 0 or self.seeder_s <= self.leecher_s:
            base = self.leecher_s if left > 0 else self.seeder_s
            return base, max(1, base // 2)
        spread = (rng or random).uniform(1 - SEEDER_JITTER, 1 + SEEDER_JITTER)
        interval = max(self.leecher_s, int(self.seeder_s * spread))
        return interval, max(1, self.leecher_s // 2)

    @staticmethod
    def ttl(interval: int) -> float:
        """How long an entry lives without a re-announce: two intervals (one lost announce is fine)."""
        return 2.0 * interval
