"""The node-wide maintenance lock: one `hfbt prefetch` or `hfbt gc` at a time on a node.

A cron or systemd timer can start a prefetch while the previous one still runs (a 150 GB model takes
longer than 15 minutes from a cold origin), and gc must not delete a revision a prefetch is linking.
fcntl.flock is released by the kernel when the process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hfbt.config import MAINTENANCE_LOCK
from hfbt.errors import HfbtError


@contextmanager
def maintenance_lock(state_dir: Path, what: str) -> Iterator[None]:
    """Hold the node's lock or fail at once (never wait: the next timer tick will try again)."""
    path = state_dir / MAINTENANCE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another hfbt process"
            raise HfbtError(
                "Busy", f"not starting {what}: {holder} holds the node's maintenance lock ({path})"
            ) from None
        # Who holds it, for the message the next run prints; the lock itself is the flock, not this text.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"hfbt {what} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        yield
    finally:
        os.close(fd)
