"""A process whose threads are still asking the swarm when it closes it exits cleanly, not by abort."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hfbt.config import SwarmConfig
from hfbt.swarm import Swarm, SwarmError
from hfbt.torrents import make_blob_torrent

# Four daemon threads call the swarm in a loop (as piece fetchers and the shim do) while the main thread
# closes it and the interpreter exits. Without the gate in Swarm every run of this aborted (-6).
BUSY_AT_EXIT = """
import sys, threading
from pathlib import Path
from hfbt.config import SwarmConfig
from hfbt.swarm import Swarm, SwarmError
from hfbt.torrents import make_blob_torrent

folder = Path(sys.argv[1])
swarm = Swarm(SwarmConfig(listen_host="127.0.0.1"))
ih = swarm.add(make_blob_torrent(folder / "blob", "blob").data, folder, seeding=True, trackers=[])
ready = threading.Barrier(5)
turned_away = threading.Event()

def ask() -> None:
    ready.wait()
    while True:
        try:
            swarm.status(ih)
            swarm.availability(ih)
            swarm.interested_peers()
        except SwarmError:
            turned_away.set()

for _ in range(4):
    threading.Thread(target=ask, daemon=True).start()
ready.wait()
swarm.close()
assert turned_away.wait(5), "no call was turned away after close"
print("closed")
"""


def _blob(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blob").write_bytes(bytes(range(256)) * (9 << 12))  # 9 MiB: three pieces
    return folder


@pytest.mark.parametrize("run", range(3))
def test_threads_inside_libtorrent_while_the_process_exits_do_not_abort_it(tmp_path: Path, run: int) -> None:
    folder = _blob(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", BUSY_AT_EXIT, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "closed"


def test_close_waits_for_a_call_inside_and_turns_later_calls_away(tmp_path: Path) -> None:
    folder = _blob(tmp_path)
    swarm = Swarm(SwarmConfig(listen_host="127.0.0.1"))
    ih = swarm.add(make_blob_torrent(folder / "blob", "blob").data, folder, seeding=True, trackers=[])
    inside, leave, closed = threading.Event(), threading.Event(), threading.Event()

    def slow_call() -> None:
        with swarm._calls.call():
            inside.set()
            leave.wait(10)

    worker = threading.Thread(target=slow_call)
    worker.start()
    assert inside.wait(5)
    closer = threading.Thread(target=lambda: (swarm.close(save_resume=False), closed.set()))
    closer.start()
    assert not closed.wait(0.5), "close returned while a call was still inside libtorrent"
    with pytest.raises(SwarmError, match="closed"):
        swarm.status(ih)
    leave.set()
    assert closed.wait(10)
    worker.join()
    closer.join()
    with pytest.raises(SwarmError, match="closed"):
        swarm.add_piece(ih, 0, b"")
