"""How long an embedded `hfbt pull` keeps serving after its files are complete.

A pull that exits the moment it is done strands the nodes still downloading: the pieces only it had
(each piece leaves the seed once) must come from the seed again. So it stays while a connected peer
still wants something from it, and leaves once nobody has asked for `quiet_s` (or at once if nobody
ever did: a lone pull pays nothing), and always by `limit_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hfbt.agent.protocol import Emit

QUIET_S = 2.0  # interest comes and goes between requests; this long without any is "stopped asking"
SAMPLE_S = 0.25


@dataclass(frozen=True)
class Asking:
    """One look at the swarm: peers interested in this node's pieces, bytes uploaded so far."""

    peers: int
    uploaded: int


@dataclass
class LingerState:
    """The decision, apart from the clock and the swarm (unit-tested)."""

    limit_s: float
    quiet_s: float = QUIET_S
    started: float = 0.0
    last_asked: float | None = None  # None: nobody asked yet
    uploaded_at_start: int | None = None
    last_uploaded: int = 0

    def done(self, now: float, seen: Asking) -> bool:
        if self.uploaded_at_start is None:
            self.uploaded_at_start = self.last_uploaded = seen.uploaded
        asked = seen.peers > 0 or seen.uploaded > self.last_uploaded
        self.last_uploaded = seen.uploaded
        if asked:
            self.last_asked = now
        if self.limit_s <= 0 or now - self.started >= self.limit_s:
            return True
        if self.last_asked is None:
            return True
        return now - self.last_asked >= self.quiet_s

    @property
    def uploaded(self) -> int:
        return self.last_uploaded - (self.uploaded_at_start or 0)


def linger(
    probe: Callable[[], Asking],
    limit_s: float,
    emit: Emit = lambda _e: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    quiet_s: float = QUIET_S,
) -> dict:
    """Serve until nobody asks (or `limit_s`); returns {"seconds", "uploaded"} of the linger."""
    state = LingerState(limit_s, quiet_s, started=clock())
    while True:
        seen = probe()
        now = clock()
        if state.done(now, seen):
            return {"seconds": round(now - state.started, 2), "uploaded": state.uploaded}
        emit({"event": "linger", "peers": seen.peers, "uploaded": state.uploaded})
        sleep(SAMPLE_S)
