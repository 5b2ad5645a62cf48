"""An embedded `hfbt pull` serves its pieces after it is done while other nodes still ask for them."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hfbt.agent.linger import Asking, LingerState, linger
from hfbt.cluster import LocalCluster, free_port
from hfbt.synth import write_random_file

# --- the decision ------------------------------------------------------------------------------------


class FakeSwarm:
    """Answers `probe` from a script of (peers interested, bytes uploaded), one per sample."""

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script = script
        self.now = 0.0

    def probe(self) -> Asking:
        peers, up = self.script[min(int(self.now / 0.25), len(self.script) - 1)]
        return Asking(peers, up)

    def sleep(self, s: float) -> None:
        self.now += s


def run(script: list[tuple[int, int]], limit: float = 30.0) -> dict:
    swarm = FakeSwarm(script)
    return linger(swarm.probe, limit, clock=lambda: swarm.now, sleep=swarm.sleep, quiet_s=2.0)


def test_a_pull_nobody_asks_anything_leaves_at_once() -> None:
    assert run([(0, 0)]) == {"seconds": 0.0, "uploaded": 0}


def test_it_stays_while_peers_ask_and_leaves_once_they_stopped_for_the_quiet_time() -> None:
    # Two peers interested for 3 s (12 samples), then nobody.
    out = run([(2, i * 1000) for i in range(12)] + [(0, 11_000)])
    assert out["seconds"] == pytest.approx(2.75 + 2.0, abs=0.26)
    assert out["uploaded"] == 11_000


def test_uploads_without_interest_count_as_asking() -> None:
    # Interest at 0 s; bytes still going out at 0.25 and 0.5 s with no peer interested: asked until 0.5 s.
    out = run([(1, 0), (0, 5), (0, 10), (0, 10)])
    assert out["seconds"] == pytest.approx(0.5 + 2.0, abs=0.01) and out["uploaded"] == 10


def test_the_limit_bounds_it_and_zero_turns_it_off() -> None:
    assert run([(1, 0)], limit=5.0)["seconds"] == pytest.approx(5.0, abs=0.26)
    assert run([(1, 0)], limit=0.0)["seconds"] == 0.0


def test_the_state_counts_only_what_was_uploaded_while_lingering() -> None:
    s = LingerState(limit_s=10, started=0.0)
    assert not s.done(0.0, Asking(1, 500))
    assert not s.done(1.0, Asking(0, 900))
    assert s.uploaded == 400


# --- a real swarm --------------------------------------------------------------------------------------

SIZE = 64 * 1024 * 1024
HOLD_S = 4.0  # how long the asking peer stays interested after the pull is done


def _blob_done(cache: Path) -> bool:
    blobs = cache / "models--acme--linger" / "blobs"
    return blobs.is_dir() and any(len(p.name) == 64 and p.stat().st_size == SIZE for p in blobs.iterdir())


def _interested_peer(port: int, info_hash: bytes, deadline: float) -> socket.socket:
    """A BitTorrent peer with no pieces that says it wants some: what a node still downloading is to
    the pull. Retried until the pull's session has the torrent (before that it drops the handshake)."""
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:  # the pull has not opened its port yet
            time.sleep(0.05)
            continue
        s.sendall(
            b"\x13BitTorrent protocol"
            + bytes(8)
            + info_hash
            + b"-XX0000-"
            + os.urandom(6).hex().encode()[:12]
        )
        try:
            answer = s.recv(68)
        except OSError:
            answer = b""
        if len(answer) >= 48 and answer[28:48] == info_hash:
            s.sendall(struct.pack(">IB", 1, 2))  # interested
            s.setblocking(False)
            return s
        s.close()
        time.sleep(0.05)
    raise AssertionError("the pull never accepted a peer for its torrent")


def _mirrored(cluster: LocalCluster) -> bytes:
    """The info-hash of the file, once the seed has mirrored it (the operator reads manifests)."""
    headers = {"Authorization": f"Bearer {cluster.operator_token}"}
    with httpx.Client(base_url=cluster.tracker_url, headers=headers, timeout=70) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = c.get("/api/v1/manifest", params={"repo_id": "acme/linger", "wait": 60})
            files = r.json()["manifest"]["files"] if r.status_code == 200 else []
            if files and files[0].get("info_hash"):
                return bytes.fromhex(files[0]["info_hash"])
            time.sleep(0.2)
    raise AssertionError(f"the seed never mirrored the file: {r.status_code} {r.text[:300]}")


@pytest.mark.parametrize("linger_s", [30.0, 0.0])
def test_a_finished_pull_stays_while_a_peer_still_asks(tmp_path: Path, linger_s: float) -> None:
    """An embedded pull with --linger stays after it is done while a connected peer is interested,
    and leaves within the quiet time once that peer is gone; with --linger 0 it leaves at once."""
    origin = tmp_path / "origin"
    write_random_file(origin / "models" / "acme" / "linger" / "model.safetensors", SIZE, seed=5)
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(origin)
        cluster.start_tracker(closed=True, ref_ttl=300)
        cluster.start_seed()
        info_hash = _mirrored(cluster)
        cache, port = tmp_path / "pull", free_port()
        args = ["pull", "acme/linger", "--tracker", cluster.tracker_url, "-q", "--agent", "none"]
        args += ["--cache-dir", str(cache), "--bt-host", "127.0.0.1", "--bt-port", str(port)]
        pull = subprocess.Popen(
            [sys.executable, "-m", "hfbt", *args, "--linger", str(linger_s)],
            env={**cluster.env, **cluster.node_env("puller")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        peer = _interested_peer(port, info_hash, time.monotonic() + 60)
        deadline = time.monotonic() + 120
        while not _blob_done(cache) and pull.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        done = time.monotonic()
        exited_while_asked = False
        while time.monotonic() < done + HOLD_S:
            try:
                peer.recv(1 << 20)  # keep reading what it sends: a peer that stalls is no peer
            except BlockingIOError:
                pass
            if pull.poll() is not None:
                exited_while_asked = True
                break
            time.sleep(0.02)
        peer.close()
        gone = time.monotonic()
        assert pull.wait(30) == 0, pull.stderr.read()
        exited = time.monotonic()
        assert _blob_done(cache)
        if linger_s:
            assert not exited_while_asked, "the pull left while a peer still asked for its pieces"
            assert exited - gone < 2.0 + 3.0, f"it stayed {exited - gone:.1f} s after the peer left"
        else:
            assert exited_while_asked, "--linger 0 kept the pull running"
