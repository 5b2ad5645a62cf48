"""The seed's piece server: each piece of a big blob goes out once, the nodes trade the rest.

Unit tests for the hand-out book and the HTTP server (real uvicorn), then real clusters: two agents
sharing the seed's pieces, a piece server nobody can reach (nodes fall back to the BT seed), one whose
first connection fails (retried), and a node that took pieces and died (the next node fetches those
pieces by index).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from huggingface_hub import hf_hub_download

from hfbt.agent.pieces import piece_urls
from hfbt.cluster import LocalCluster, free_port
from hfbt.manifest import PIECE_LENGTH
from hfbt.seed.pieces import PieceBook, serve
from hfbt.synth import make_model_repo
from hfbt.wire import PIECE_HEADER, seed_hands_out
from tests.conftest import files_of, pull_cmd, run_hfbt
from tests.test_status_metrics import scrape
from tracker.announce import AnnounceError, parse_announce
from tracker.handout import keep_roles_apart
from tracker.peers import Peer
from tracker.torrentfile import torrent_file

BIG = "acme/big"
IH = "ab" * 20


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(2 * PIECE_LENGTH + 1000))  # three pieces, the last one short
    return path


def test_book_hands_every_piece_out_once_across_threads(blob: Path) -> None:
    book = PieceBook()
    book.add(IH, blob, blob.stat().st_size)
    got: list[int | None] = []
    lock = threading.Lock()

    def take() -> None:
        while (piece := book.take_next(IH)) is not None:
            with lock:
                got.append(piece)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2]
    assert book.take_next(IH) is None
    data = blob.read_bytes()
    assert book.read(IH, 2) == data[2 * PIECE_LENGTH :]
    assert book.read(IH, 0) == data[:PIECE_LENGTH]
    with pytest.raises(IndexError):
        book.read(IH, 3)
    with pytest.raises(KeyError):
        book.take_next("cd" * 20)


def test_book_starts_a_new_round_for_nodes_that_come_much_later(blob: Path) -> None:
    now = [100.0]
    book = PieceBook(round_idle_s=30, clock=lambda: now[0])
    book.add(IH, blob, blob.stat().st_size)
    assert [book.take_next(IH) for _ in range(4)] == [0, 1, 2, None]
    now[0] += 29  # the first nodes may still be trading: no second copy yet
    assert book.take_next(IH) is None
    now[0] += 31  # idle long enough: a later group shares one more copy
    assert [book.take_next(IH) for _ in range(4)] == [0, 1, 2, None]


def test_piece_server_over_http(blob: Path) -> None:
    book = PieceBook()
    book.add(IH, blob, blob.stat().st_size)
    port = free_port()
    served: list[tuple[str, int]] = []
    serve(book, "127.0.0.1", port, auth_token="s3cret", on_served=lambda how, n: served.append((how, n)))
    base = f"http://127.0.0.1:{port}/v1/pieces"
    ok = {"Authorization": "Bearer s3cret"}
    assert httpx.post(f"{base}/{IH}/next").status_code == 401
    assert httpx.post(f"{base}/{IH}/next", headers={"Authorization": "Bearer nope"}).status_code == 401
    data = blob.read_bytes()
    for expected in range(3):
        r = httpx.post(f"{base}/{IH}/next", headers=ok)
        assert r.status_code == 200 and int(r.headers[PIECE_HEADER]) == expected
        assert r.content == data[expected * PIECE_LENGTH : (expected + 1) * PIECE_LENGTH]
    assert httpx.post(f"{base}/{IH}/next", headers=ok).status_code == 204
    # By index, for a piece whose first taker vanished; any number of times.
    assert httpx.get(f"{base}/{IH}/1", headers=ok).content == data[PIECE_LENGTH : 2 * PIECE_LENGTH]
    # What the seed's hfbt_seed_piece_server_bytes_total counts.
    assert served == [("next", PIECE_LENGTH)] * 2 + [("next", 1000), ("index", PIECE_LENGTH)]
    r = httpx.get(f"{base}/{IH}/7", headers=ok)
    assert r.status_code == 416 and "out of range" in r.json()["error"]
    r = httpx.post(f"{base}/{'cd' * 20}/next", headers=ok)
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "NotFound"


def test_the_seed_and_its_piece_takers_never_meet_in_the_swarm() -> None:
    seed = Peer(b"s" * 20, "10.0.0.1", 1, 0, role="seed")
    taker = Peer(b"t" * 20, "10.0.0.2", 1, 100, role="pieces")
    done_taker = Peer(b"d" * 20, "10.0.0.3", 1, 0, role="pieces")
    plain = Peer(b"p" * 20, "10.0.0.4", 1, 100)
    everyone = [seed, taker, done_taker, plain]
    assert keep_roles_apart(taker, everyone) == [taker, done_taker, plain]
    assert keep_roles_apart(seed, everyone) == [seed, plain]
    assert keep_roles_apart(plain, everyone) == everyone  # aria2 & co still get the seed


def test_announce_role_is_parsed_and_checked() -> None:
    q = "info_hash=" + "%61" * 20 + "&peer_id=" + "%62" * 20 + "&port=1&left=0"
    assert parse_announce(q, "127.0.0.1").role == ""
    assert parse_announce("hfbt=pieces&" + q, "127.0.0.1").role == "pieces"
    with pytest.raises(AnnounceError, match="invalid hfbt"):
        parse_announce("hfbt=boss&" + q, "127.0.0.1")


def test_torrent_names_the_piece_servers_outside_the_info_dict() -> None:
    info = b"d6:lengthi1e4:name1:xe"
    plain = torrent_file("http://t/announce/k", info)
    with_urls = torrent_file("http://t/announce/k?hfbt=pieces", info, ["http://10.0.0.1:6883"])
    assert piece_urls(plain) == ([], "http://t/announce/k")
    assert piece_urls(with_urls) == (["http://10.0.0.1:6883"], "http://t/announce/k")
    assert info in plain and info in with_urls  # same info dict, same info-hash
    assert piece_urls(b"garbage") == ([], None)


# --- real clusters -------------------------------------------------------------------------------


def _big_origin(root: Path) -> tuple[Path, int]:
    """A model whose two shards go through the piece server; returns (repo dir, their bytes)."""
    repo = root / "models" / BIG
    sizes = make_model_repo(repo, shard_mb=36)
    big = sum(s for s in sizes.values() if seed_hands_out(s))
    assert big > 60 * 2**20  # both shards go through the piece server
    return repo, big


@pytest.fixture(autouse=True)
def _no_traceback_in_any_log(tmp_path: Path) -> Iterator[None]:
    yield
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "run" / "logs").glob("*.log")}
    assert not [name for name, text in logs.items() if "Traceback" in text], logs


def _totals(agent) -> dict:
    return httpx.get(f"{agent.url}/v1/status").json()["totals"]


def _pull(cluster: LocalCluster, agent):
    return run_hfbt(*pull_cmd(cluster.tracker_url, agent.cache_dir, "--agent", agent.url, repo=BIG))


def test_two_nodes_take_each_seed_piece_once_and_trade_the_rest(tmp_path: Path) -> None:
    repo, big = _big_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(tmp_path / "origin")
        cluster.start_tracker(ref_ttl=300)
        metrics_port = free_port()
        seed = cluster.start_seed(extra=("--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"))
        agents = [cluster.start_agent(f"node{i}") for i in range(2)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: _pull(cluster, a), agents))
        for r in results:
            assert r.returncode == 0, r.stderr
            assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(repo)
        totals = [_totals(a) for a in agents]
        # Every piece of both shards left the seed exactly once, to one node or the other ...
        assert sum(t["from_piece_servers"] for t in totals) == big
        served = scrape(f"http://127.0.0.1:{metrics_port}")
        assert served[("hfbt_seed_piece_server_bytes_total", (("how", "next"),))] == big
        assert served[("hfbt_seed_piece_server_bytes_total", (("how", "index"),))] == 0
        # ... and whatever one node took from the seed, the other got from it over BitTorrent.
        for mine, other in ((totals[0], totals[1]), (totals[1], totals[0])):
            assert other["uploaded"] >= mine["downloaded"] - mine["from_piece_servers"] - 2**20
        logs = [a.proc.log_text() for a in agents]
        assert all("piece_servers=1" in text for text in logs)
        assert not any("event=piece_fetch_off" in text for text in logs)
        # The seed announces a blob only once the tracker knows it: no refused announce to warn about.
        assert "event=tracker_error" not in seed.log_text()


def test_nodes_fall_back_to_the_bt_seed_when_no_piece_server_answers(tmp_path: Path) -> None:
    repo, _big = _big_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(tmp_path / "origin")
        cluster.start_tracker(ref_ttl=300)
        # The seed advertises a piece server nobody listens on (a firewall, a wrong --piece-url).
        cluster.start_seed(extra=("--piece-url", f"http://127.0.0.1:{free_port()}"))
        node = cluster.start_agent("node1")
        r = _pull(cluster, node)
        assert r.returncode == 0, r.stderr
        assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(repo)
        assert _totals(node)["from_piece_servers"] == 0
        text = node.proc.log_text()
        assert "event=piece_server_unusable" in text and "fallback=bt_seed" in text


class _DropFirstConnection:
    """A TCP relay to the seed's piece server that closes the first connection it accepts (a reset on a
    busy host) and relays every later one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted == 1:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_a_piece_server_connection_that_fails_once_is_retried_not_abandoned(tmp_path: Path) -> None:
    repo, big = _big_origin(tmp_path / "origin")
    piece_port = free_port()
    relay = _DropFirstConnection(piece_port)
    try:
        with LocalCluster(tmp_path / "run") as cluster:
            cluster.start_origin(tmp_path / "origin")
            cluster.start_tracker(ref_ttl=300)
            url = f"http://127.0.0.1:{relay.port}"
            cluster.start_seed(extra=("--piece-port", str(piece_port), "--piece-url", url))
            node = cluster.start_agent("node1")
            r = _pull(cluster, node)
            assert r.returncode == 0, r.stderr
            assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(repo)
            text = node.proc.log_text()
            assert relay.accepted >= 2 and "event=piece_server_retry" in text
            # no fallback to the BT seed: every piece of both shards still came from the piece server
            assert "fallback=bt_seed" not in text
            assert _totals(node)["from_piece_servers"] == big
    finally:
        relay.close()


def test_a_seed_whose_piece_port_is_taken_still_seeds_over_bittorrent(tmp_path: Path) -> None:
    repo, _big = _big_origin(tmp_path / "origin")
    with socket.socket() as taken, LocalCluster(tmp_path / "run") as cluster:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster.start_origin(tmp_path / "origin")
        cluster.start_tracker(ref_ttl=300)
        seed = cluster.start_seed(extra=("--piece-port", str(taken.getsockname()[1])))
        assert "event=piece_server_off" in seed.log_text()
        node = cluster.start_agent("node1")
        r = _pull(cluster, node)
        assert r.returncode == 0, r.stderr
        assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(repo)
        assert _totals(node)["from_piece_servers"] == 0
        assert "piece_servers=0" in node.proc.log_text()  # nothing advertised, plain BT


def test_pieces_whose_taker_died_are_fetched_again_by_index(tmp_path: Path) -> None:
    repo, big = _big_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(tmp_path / "origin")
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        first = cluster.start_agent("node1")
        assert _pull(cluster, first).returncode == 0
        assert _totals(first)["from_piece_servers"] == big  # alone, it took every piece
        first.proc.popen.terminate()  # and vanished with them
        first.proc.popen.wait(10)
        cluster.procs.remove(first.proc)
        second = cluster.start_agent("node2")
        r = _pull(cluster, second)
        assert r.returncode == 0, r.stderr
        assert files_of(Path(r.stdout.strip().splitlines()[-1])) == files_of(repo)
        assert "event=piece_rescue" in second.proc.log_text()
        assert _totals(second)["from_piece_servers"] == big


def test_the_shim_streams_a_blob_whose_pieces_come_from_the_piece_server(tmp_path: Path) -> None:
    repo, _big = _big_origin(tmp_path / "origin")
    shard = "model-00001-of-00002.safetensors"
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(tmp_path / "origin")
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        agent = cluster.start_agent("node1")
        data = (repo / shard).read_bytes()
        # A range across a piece boundary first (read_piece on pieces add_piece brought in), then it all.
        start = PIECE_LENGTH - 10
        r = httpx.get(
            f"{agent.shim_url}/{BIG}/resolve/main/{shard}",
            headers={"Range": f"bytes={start}-{start + 99}"},
            timeout=120,
        )
        assert r.status_code == 206 and r.content == data[start : start + 100]
        got = hf_hub_download(BIG, shard, cache_dir=tmp_path / "client", endpoint=agent.shim_url)
        assert Path(got).read_bytes() == data
        assert _totals(agent)["from_piece_servers"] >= len(data)
