"""The seed's piece server: each piece of a big blob goes out once, the nodes trade the rest.

Unit tests for the hand-out book and the HTTP server (real uvicorn), then real clusters: two agents
sharing the seed's pieces, a piece server nobody can reach (nodes fall back to the BT seed), one whose
first connection fails (retried), and a node that took pieces and died (the next node fetches those
pieces by index).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from huggingface_hub import hf_hub_download

import hfbt.agent.pieces as pieces_module
from hfbt.agent.pieces import PieceBuffers, PieceFetcher, TicketHolder, piece_urls
from hfbt.cluster import LocalCluster, free_port
from hfbt.manifest import PIECE_LENGTH
from hfbt.seed.pieces import PieceBook, serve
from hfbt.synth import make_model_repo
from hfbt.tickets import ANY_TORRENT, TICKET_HEADER, TicketSigner
from hfbt.wire import PIECE_HEADER, seed_hands_out
from tests.conftest import Clock, files_of, pull_cmd, run_hfbt
from tests.test_status_metrics import scrape
from tracker.announce import AnnounceError, parse_announce
from tracker.handout import keep_roles_apart
from tracker.peerstore import Peer
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


def _serving(blob: Path, signer: TicketSigner | None, clock: Clock) -> tuple[str, list[tuple[str, int]]]:
    """A real piece server (uvicorn on 127.0.0.1) for `blob` as IH, checking tickets with `signer`'s
    key (None: an open tracker); returns its base URL and what it counted as served."""
    book = PieceBook()
    book.add(IH, blob, blob.stat().st_size)
    book.tickets.trust(signer.public_key if signer else None, clock=clock)
    port = free_port()
    served: list[tuple[str, int]] = []
    serve(book, "127.0.0.1", port, on_served=lambda how, n: served.append((how, n)))
    return f"http://127.0.0.1:{port}/v1/pieces", served


def _ticket(signer: TicketSigner, info_hash: str = IH, ttl: float = 60, role: str = "node") -> dict[str, str]:
    return {TICKET_HEADER: signer.mint("node1", info_hash, role, ttl)[0]}


def test_piece_server_over_http(blob: Path, signer: TicketSigner, clock: Clock) -> None:
    base, served = _serving(blob, signer, clock)
    ok = _ticket(signer)
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
    other = "cd" * 20
    r = httpx.post(f"{base}/{other}/next", headers=_ticket(signer, other))
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "NotFound"
    # A seed's ticket covers every torrent (seeds fetching from seeds is no leak).
    assert httpx.get(f"{base}/{IH}/0", headers=_ticket(signer, ANY_TORRENT, role="seed")).status_code == 200


def test_piece_server_refuses_a_missing_forged_expired_or_foreign_ticket(
    blob: Path, signer: TicketSigner, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hfbt.seed.pieces")
    base, served = _serving(blob, signer, clock)
    stranger = TicketSigner(Ed25519PrivateKey.generate(), clock)  # another tracker's key
    good = _ticket(signer, ttl=60)
    expiring = _ticket(signer, ttl=5)
    valid_text = good[TICKET_HEADER]
    payload, _, sig = valid_text.partition(".")
    cases: list[tuple[dict[str, str], int, str, str]] = [
        ({}, 401, "Unauthorized", "no ticket"),
        ({"Authorization": "Bearer s3cret"}, 401, "Unauthorized", "no ticket"),  # the old cluster token
        ({TICKET_HEADER: ""}, 401, "Unauthorized", "no ticket"),
        (_ticket(stranger), 403, "Forbidden", "signature"),
        ({TICKET_HEADER: f"{payload}.{sig[::-1]}"}, 403, "Forbidden", ""),
        ({TICKET_HEADER: "x" * 10_000}, 403, "Forbidden", "malformed"),
        ({TICKET_HEADER: "not-a-ticket"}, 403, "Forbidden", "malformed"),
        (_ticket(signer, "cd" * 20), 403, "Forbidden", "another torrent"),
    ]
    clock.now += 10  # `expiring` is past its life now, `good` is not
    cases.append((expiring, 403, "Forbidden", "expired"))
    for headers, status, code, reason in cases:
        for method, path in (("POST", f"{base}/{IH}/next"), ("GET", f"{base}/{IH}/0")):
            r = httpx.request(method, path, headers=headers)
            assert (r.status_code, r.headers["X-Error-Code"]) == (status, code), (method, headers, r.text)
            assert reason in r.json()["error"]
            assert PIECE_HEADER not in r.headers
    assert served == []  # not one byte went out
    # The ticket's reason reaches the node only; no ticket reaches the seed's log.
    assert "ticket is for another torrent" in caplog.text
    assert valid_text not in caplog.text and expiring[TICKET_HEADER] not in caplog.text
    # The good ticket still works: refusals change nothing in the hand-out.
    r = httpx.post(f"{base}/{IH}/next", headers=good)
    assert r.status_code == 200 and r.headers[PIECE_HEADER] == "0"


def test_piece_server_serves_nobody_until_it_knows_the_trackers_key(blob: Path) -> None:
    book = PieceBook()
    book.add(IH, blob, blob.stat().st_size)
    port = free_port()
    serve(book, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/v1/pieces/{IH}/0"
    r = httpx.get(url)
    assert (r.status_code, r.headers["X-Error-Code"]) == (503, "Unavailable")
    book.tickets.trust(None)  # an open tracker: no ticket needed
    assert httpx.get(url).content == blob.read_bytes()[:PIECE_LENGTH]


class _TakerSwarm:
    """What a PieceFetcher needs of a swarm: pieces handed in by add_piece, nobody else around."""

    def __init__(self, pieces: int, on_piece=lambda piece: None) -> None:
        self.pieces = pieces
        self.got: dict[int, bytes] = {}
        self.on_piece = on_piece
        self.trackers: list[list[str]] = []

    def wait_finished(self, ih: str, timeout: float | None = None) -> bool:
        return len(self.got) == self.pieces

    def status(self, ih: str) -> SimpleNamespace:
        return SimpleNamespace(peers=0, done=sum(len(d) for d in self.got.values()))

    def availability(self, ih: str) -> list[int]:
        return [0] * self.pieces

    def pieces_without_source(self, ih: str) -> list[int]:
        return [p for p in range(self.pieces) if p not in self.got]

    def add_piece(self, ih: str, piece: int, data: bytes | bytearray) -> None:
        self.got[piece] = bytes(data)  # as libtorrent does: the fetcher reuses its buffer afterwards
        self.on_piece(piece)

    def replace_trackers(self, ih: str, urls: list[str]) -> None:
        self.trackers.append(urls)


def _wait_for(cond, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_renewed_ticket_reaches_a_fetcher_already_running(
    blob: Path, signer: TicketSigner, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker: the next request starts after piece 0 is handed in (and the ticket renewed); with two,
    # the second may already be on its way with the first ticket when the clock jumps past its expiry.
    monkeypatch.setattr(pieces_module, "WORKERS", 1)
    base, _served = _serving(blob, signer, clock)
    announce = "http://tracker.test/announce"
    first = signer.mint("node1", IH, "node", ttl=60)[0]
    holder = TicketHolder(f"{announce}/{first}", first, pieces=True)

    def renew_after_first_piece(piece: int) -> None:
        if piece == 0:
            clock.now += 120  # the first ticket has expired: only the renewed one gets more pieces
            fresh = signer.mint("node1", IH, "node", ttl=60)[0]
            assert holder.renewed(f"{announce}/{fresh}", fresh) == [f"{announce}/{fresh}?hfbt=pieces"]

    swarm = _TakerSwarm(3, renew_after_first_piece)
    fetcher = PieceFetcher(swarm, IH, [base.removesuffix("/v1/pieces")], holder).start()  # type: ignore[arg-type]
    _wait_for(lambda: len(swarm.got) == 3)
    data = blob.read_bytes()
    assert b"".join(swarm.got[p] for p in range(3)) == data
    assert fetcher.fetched == 3 and swarm.trackers == []  # never refused, so never fell back to BT


class _CountingBuffers(PieceBuffers):
    def __init__(self) -> None:
        super().__init__()
        self.made = 0

    def take(self) -> bytearray:
        with self._lock:
            if not self._free:
                self.made += 1
        return super().take()


def test_piece_bodies_are_read_into_reused_buffers(
    tmp_path: Path, signer: TicketSigner, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new 4 MiB body per piece, kept alive by httpx's reference cycles until a garbage collection,
    # was most of a node's memory; the fetcher now reads every body into one of a few buffers.
    big = tmp_path / "big"
    big.write_bytes(os.urandom(12 * PIECE_LENGTH + 7))  # 13 pieces, the last one short
    buffers = _CountingBuffers()
    monkeypatch.setattr(pieces_module, "BUFFERS", buffers)
    base, _served = _serving(big, signer, clock)
    ticket = signer.mint("node1", IH, "node", ttl=600)[0]
    holder = TicketHolder(f"http://tracker.test/announce/{ticket}", ticket, pieces=True)
    swarm = _TakerSwarm(13)
    PieceFetcher(swarm, IH, [base.removesuffix("/v1/pieces")], holder).start()  # type: ignore[arg-type]
    _wait_for(lambda: len(swarm.got) == 13, seconds=30)
    assert b"".join(swarm.got[p] for p in range(13)) == big.read_bytes()
    assert 1 <= buffers.made <= 3, buffers.made  # one per request in flight or being handed over


def test_a_refused_ticket_sends_the_node_to_the_bt_seed_without_its_piece_role(
    blob: Path, signer: TicketSigner, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.pieces")
    base, served = _serving(blob, signer, clock)
    announce = "http://tracker.test/announce"
    wrong = signer.mint("node1", "cd" * 20, "node", ttl=60)[0]  # a ticket for another torrent
    holder = TicketHolder(f"{announce}/{wrong}", wrong, pieces=True)
    swarm = _TakerSwarm(3)
    PieceFetcher(swarm, IH, [base.removesuffix("/v1/pieces")], holder).start()  # type: ignore[arg-type]
    _wait_for(lambda: swarm.trackers)
    assert swarm.trackers == [[f"{announce}/{wrong}"]] and not holder.pieces  # renewals stay plain too
    assert served == [] and swarm.got == {}
    assert "why='HTTP 403: ticket is for another torrent'" in caplog.text
    assert wrong not in caplog.text


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
        # BitTorrent can finish the pull while the fetcher waits to retry the refused connection: the
        # node notices the dead server half a second later, not necessarily before the pull returns.
        _wait_for(lambda: "fallback=bt_seed" in node.proc.log_text())
        assert "event=piece_server_unusable" in node.proc.log_text()


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


def test_nodes_that_stop_reading_cannot_pile_pieces_up_in_the_seed(
    blob: Path, signer: TicketSigner, clock: Clock
) -> None:
    """The review's finding: unread 4 MiB responses grew without bound. Now at most `max_connections`
    are open (the rest get 503 at once), and a stalled one is dropped after `send_timeout`."""
    book = PieceBook()
    book.add(IH, blob, blob.stat().st_size)
    book.tickets.trust(signer.public_key, clock=clock)
    port = free_port()
    serve(book, "127.0.0.1", port, max_connections=4, send_timeout=1.0)
    ticket = _ticket(signer)[TICKET_HEADER]
    request = f"GET /v1/pieces/{IH}/0 HTTP/1.1\r\nHost: x\r\n{TICKET_HEADER}: {ticket}\r\n\r\n".encode()
    pipelined = 4  # more than the kernel buffers of a loopback connection hold, so the seed must wait
    stalled = []
    for _ in range(12):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        s.connect(("127.0.0.1", port))
        s.sendall(request * pipelined)  # and read nothing for now
        stalled.append(s)
    try:
        time.sleep(0.5)
        heads = []
        for s in stalled:
            s.settimeout(5)
            heads.append(s.recv(12))
        assert sum(h.startswith(b"HTTP/1.1 503") for h in heads) >= 12 - 4, heads
        # Past the deadline the stalled ones are closed: reading now ends at EOF, short of what was asked.
        time.sleep(2.5)
        for s, head in zip(stalled, heads, strict=True):
            if head.startswith(b"HTTP/1.1 200"):
                got = len(head)
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
                assert got < pipelined * PIECE_LENGTH
        r = httpx.get(f"http://127.0.0.1:{port}/v1/pieces/{IH}/0", headers=_ticket(signer), timeout=10)
        assert r.status_code == 200 and len(r.content) == PIECE_LENGTH
    finally:
        for s in stalled:
            s.close()
