"""The pull engine of hfbt.agent.node.Node, in one process: a real Node, a real HF cache folder and
published store in tmp_path, and in-memory fakes for the tracker, the libtorrent session and the
origin fallback's Hub client. No subprocess, no network, no libtorrent session."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import fastbencode
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hfbt import cache, trackerclient
from hfbt.agent import node as engine
from hfbt.agent.node import Node
from hfbt.agent.pieces import TicketHolder
from hfbt.agent.protocol import PullRequest
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import PIECE_LENGTH, FileEntry, Manifest, is_lfs
from hfbt.published import PublishedBlob, PublishedStore
from hfbt.swarm import SwarmError, TorrentStatus
from hfbt.tickets import TicketSigner
from hfbt.trackerclient import ManifestReply, TicketGrant, TrackerRefused
from hfbt.wire import PIECE_URLS_KEY

# A regression here tends to make a pull wait forever: fail it instead.
pytestmark = pytest.mark.timeout(10)

REPO = "acme/tiny"
COMMIT = "c0ffee" + "0" * 34
ORIGIN = "http://origin.invalid"
OPEN_ANNOUNCE = "http://tracker.invalid/announce"


# --- a revision ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    entry: FileEntry  # with the info-hash of its torrent (None for an empty file: it has no torrent)
    data: bytes
    torrent: bytes


def make_blob(path: str, data: bytes) -> Blob:
    """A file's manifest entry and torrent: sha256 etag for an LFS file, git blob sha1 otherwise."""
    sha = hashlib.sha256(data).hexdigest() if is_lfs(path, len(data)) else None
    etag = sha or git_blob_sha1_bytes(data)
    info = {b"length": len(data), b"name": etag.encode(), b"piece length": PIECE_LENGTH}
    torrent = fastbencode.bencode({b"announce": b"http://tracker.invalid/announce", b"info": info})
    info_hash = hashlib.sha1(fastbencode.bencode(info)).hexdigest() if data else None
    return Blob(FileEntry(path, len(data), etag, sha, info_hash), data, torrent)


CONFIG = make_blob("config.json", b'{"model_type": "llama"}\n')
MODEL = make_blob("model.safetensors", os.urandom(3 * 1024 * 1024 + 17))
VOCAB = make_blob("tokenizer/vocab.txt", b"hello\nworld\n")
EMPTY = make_blob("empty.txt", b"")


def manifest(*blobs: Blob, unpublished: tuple[Blob, ...] = (), complete: bool = True) -> Manifest:
    """`unpublished`: files whose torrent the seed has not added yet (no info-hash in the manifest)."""
    files = tuple(replace(b.entry, info_hash=None) if b in unpublished else b.entry for b in blobs)
    return Manifest("model", REPO, COMMIT, files, refs=("main",), complete=complete)


def ready(m: Manifest) -> ManifestReply:
    return ManifestReply("complete" if m.complete else "partial", m, None)


def pending(job: dict | None) -> ManifestReply:
    return ManifestReply("pending", None, job)


# --- fakes ----------------------------------------------------------------------------------------


class FakeTracker:
    """The tracker client: hands out the replies in order (the last one again and again). An open
    tracker: its torrents announce to a plain URL, and a ticket is never needed."""

    skew = 0.0

    def __init__(self, *replies: ManifestReply, blobs: tuple[Blob, ...] = ()) -> None:
        self.replies = list(replies)
        self.torrents = {b.entry.info_hash: b.torrent for b in blobs if b.entry.info_hash}
        self.asked: list[tuple[str, float]] = []  # (revision, wait) of each manifest call
        self.torrents_asked: list[str] = []
        self.tickets_asked: list[tuple[str, str | None]] = []  # (info-hash, Hub token)

    def ticket(self, info_hash: str, hf_token: str | None = None) -> TicketGrant:
        self.tickets_asked.append((info_hash, hf_token))
        return TicketGrant(None, OPEN_ANNOUNCE, None)

    def manifest(
        self, repo_type: str, repo_id: str, revision: str, wait: float = 20.0, hf_token: str | None = None
    ) -> ManifestReply:
        assert (repo_type, repo_id) == ("model", REPO)
        self.asked.append((revision, wait))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply.manifest is None:
            time.sleep(0.01)  # the real tracker holds the call while it mirrors
        return reply

    def torrent(self, info_hash: str, hf_token: str | None = None, pieces: bool = False) -> bytes:
        self.torrents_asked.append(info_hash)
        return self.torrents[info_hash]

    def close(self) -> None:
        pass


@dataclass
class _Torrent:
    save_path: Path
    file_name: str
    data: bytes
    finished: bool
    seeding: bool
    polls: int = 0


class FakeSwarm:
    """The libtorrent session: a torrent "downloads" by writing `payload[info_hash]` into its file
    once it has been polled `polls` times (never, with polls=None: a swarm with no peer)."""

    listen_port = 6881

    def __init__(self, payload: dict[str, bytes], polls: int | None = 2) -> None:
        self.payload = payload
        self.polls = polls
        self._torrents: dict[str, _Torrent] = {}
        self.added: list[
            tuple[str, Path, str | None, bool]
        ] = []  # (info-hash, save_path, file_name, seeding)
        self.removed: list[str] = []
        self.flushed: list[str] = []
        self.reannounced: list[str] = []
        self.trackers: dict[str, list[str] | None] = {}  # what each torrent announces with now
        self.joined_with: dict[str, list[str] | None] = {}  # ... and what it was added with
        self.tracker_updates: list[tuple[str, list[str]]] = []

    def add(
        self,
        torrent: bytes,
        save_path: Path,
        *,
        file_name: str | None = None,
        seeding: bool = False,
        trackers: list[str] | None = None,
    ) -> str:
        info = fastbencode.bdecode(torrent)[b"info"]
        ih = hashlib.sha1(fastbencode.bencode(info)).hexdigest()
        self.added.append((ih, save_path, file_name, seeding))
        if ih not in self._torrents:
            self.trackers[ih] = self.joined_with[ih] = None if trackers is None else list(trackers)
            name = file_name or info[b"name"].decode()
            if not seeding:
                (save_path / name).touch()  # libtorrent creates the file as it starts writing
            self._torrents[ih] = _Torrent(save_path, name, self.payload.get(ih, b""), seeding, seeding)
        return ih

    def _get(self, ih: str) -> _Torrent:
        try:
            return self._torrents[ih]
        except KeyError:
            raise SwarmError(f"torrent {ih} is not in the session") from None

    def has(self, ih: str) -> bool:
        return ih in self._torrents

    def info_hashes(self) -> list[str]:
        return list(self._torrents)

    def statuses(self) -> list[TorrentStatus]:
        return [self.status(ih) for ih in self._torrents]

    def wait_finished(self, ih: str, timeout: float | None = None) -> bool:
        t = self._get(ih)
        t.polls += 1
        if not t.finished and self.polls is not None and t.polls >= self.polls:
            (t.save_path / t.file_name).write_bytes(t.data)
            t.finished = True
        return t.finished

    def status(self, ih: str) -> TorrentStatus:
        t = self._get(ih)
        done = len(t.data) if t.finished else 0
        return TorrentStatus(ih, len(t.data), done, t.finished, t.seeding, 0, 0, 0, 0, 0, done, None)

    def reannounce(self, ih: str) -> None:
        self.reannounced.append(ih)

    def replace_trackers(self, ih: str, urls: list[str]) -> None:
        self._get(ih)
        self.trackers[ih] = list(urls)
        self.tracker_updates.append((ih, list(urls)))

    def flush(self, ih: str, timeout: float = 60.0) -> None:
        self.flushed.append(ih)

    def rename(self, ih: str, new_name: str, timeout: float = 60.0) -> None:
        t = self._get(ih)
        os.replace(t.save_path / t.file_name, t.save_path / new_name)
        t.file_name = new_name

    def remove(self, ih: str) -> None:
        self.removed.append(ih)
        self._torrents.pop(ih, None)

    def read_piece(self, ih: str, piece: int, timeout: float = 300.0) -> bytes:
        return self._get(ih).data[piece * PIECE_LENGTH : (piece + 1) * PIECE_LENGTH]

    def read_ahead(self, ih: str, pieces: range, step_ms: int = 200) -> None:
        self._get(ih)

    def totals(self) -> dict[str, int]:
        down = sum(len(t.data) for t in self._torrents.values() if t.finished and not t.seeding)
        return {"uploaded": 0, "downloaded": down, "from_piece_servers": 0, "torrents": len(self._torrents)}


class FakeHub:
    """hub_client_factory for the origin fallback: each download writes the file into the scratch folder."""

    def __init__(self, *blobs: Blob) -> None:
        self.files = {b.entry.path: b.data for b in blobs}
        self.clients: list[tuple[str, str | None, Path]] = []  # (endpoint, token, scratch)
        self.downloads: list[str] = []

    def __call__(self, endpoint: str, token: str | None, scratch: Path) -> FakeHub:
        self.clients.append((endpoint, token, scratch))
        return self

    def download(self, repo_type: str, repo_id: str, commit: str, path: str) -> Path:
        assert (repo_type, repo_id, commit) == ("model", REPO, COMMIT)
        self.downloads.append(path)
        out = self.clients[-1][2] / "blobs" / hashlib.sha1(path.encode()).hexdigest()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.files[path])
        return out


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "POLL_S", 0.01)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.fixture
def store(tmp_path: Path) -> PublishedStore:
    return PublishedStore(tmp_path / "state" / "published")


@pytest.fixture
def make_node(tmp_path: Path, cache_dir: Path, store: PublishedStore) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(tracker: FakeTracker, swarm: FakeSwarm, hub: FakeHub | None = None, **cfg: object) -> Node:
        node_cfg = NodeConfig("http://tracker.invalid", cache_dir, tmp_path / "state", **cfg)  # type: ignore[arg-type]
        extra = {"hub_client_factory": hub} if hub else {}
        nodes.append(Node(node_cfg, swarm, tracker, store, **extra))  # type: ignore[arg-type]
        return nodes[-1]

    yield make
    for n in nodes:
        n.close()


def repo_dir(cache_dir: Path) -> Path:
    return cache.repo_dir(cache_dir, "model", REPO)


def payload(*blobs: Blob) -> dict[str, bytes]:
    return {b.entry.info_hash: b.data for b in blobs if b.entry.info_hash}


def assert_snapshot(snap: Path, *blobs: Blob) -> None:
    assert snap == repo_dir(snap.parents[2]) / "snapshots" / COMMIT
    for b in blobs:
        link = snap / b.entry.path
        assert link.is_symlink() and os.readlink(link) == cache.blob_link_target(b.entry.path, b.entry.etag)
        assert link.read_bytes() == b.data


def progress_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "progress"]


# --- tests ----------------------------------------------------------------------------------------


def test_a_complete_pull_publishes_links_and_records_every_blob(
    make_node: Callable[..., Node], cache_dir: Path, store: PublishedStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    blobs = (CONFIG, MODEL, VOCAB, EMPTY)
    tracker = FakeTracker(ready(manifest(*blobs)), blobs=blobs)
    swarm = FakeSwarm(payload(*blobs), polls=3)
    node = make_node(tracker, swarm)
    events: list[dict] = []

    snap = node.pull(PullRequest(REPO), events.append)

    assert_snapshot(snap, *blobs)
    repo = repo_dir(cache_dir)
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(b.entry.etag for b in blobs)
    for b in (CONFIG, MODEL, VOCAB):
        assert (repo / "blobs" / b.entry.etag).read_bytes() == b.data
        rec, torrent = store.get(b.entry.etag) or (None, None)
        assert rec == PublishedBlob(
            b.entry.etag, b.entry.info_hash, b.entry.size, str(repo / "blobs" / b.entry.etag)
        )
        assert torrent == b.torrent
    # Each blob joined once under its partial name (none for the empty file), flushed before the check.
    assert sorted(swarm.added) == sorted(
        (b.entry.info_hash, repo / "blobs", cache.partial_name(b.entry.etag), False)
        for b in (CONFIG, MODEL, VOCAB)
    )
    assert sorted(swarm.flushed) == sorted(b.entry.info_hash for b in (CONFIG, MODEL, VOCAB))
    assert tracker.asked == [("main", 20.0)]  # complete from the start: never asked again
    # An open tracker: each torrent announces to its plain URL, and no ticket is ever renewed.
    assert all(swarm.joined_with[ih] == [OPEN_ANNOUNCE] for ih, *_ in swarm.added)
    assert tracker.tickets_asked == [] and swarm.tracker_updates == []
    total = sum(b.entry.size for b in blobs)
    assert events[-1] == {
        "event": "progress", "done": total, "total": total, "files_done": 4, "files_total": 4, "rate": 0
    }  # fmt: skip
    assert all(e["event"] == "progress" and e["total"] == total for e in events)
    log = caplog.text
    assert f"event=blob_join path=model.safetensors size={MODEL.entry.size}" in log
    assert "event=blob_published path=model.safetensors" in log
    assert "event=origin_fallback" not in log
    # What the agent's status report and the shim read, without reaching into the swarm.
    assert {t.info_hash for t in node.torrents()} == {b.entry.info_hash for b in (CONFIG, MODEL, VOCAB)}
    assert all(t.finished for t in node.torrents())
    assert node.totals()["torrents"] == 3 and node.listen_port == 6881
    assert {r.path for r in node.published_blobs()} == {
        str(repo / "blobs" / b.entry.etag) for b in (CONFIG, MODEL, VOCAB)
    }
    assert node.read_piece(MODEL.entry.info_hash, 0) == MODEL.data[:PIECE_LENGTH]


def test_a_pull_by_commit_writes_no_ref_and_a_second_pull_joins_nothing(
    make_node: Callable[..., Node], cache_dir: Path
) -> None:
    tracker = FakeTracker(ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(CONFIG, MODEL))
    node = make_node(tracker, swarm)
    assert_snapshot(node.pull(PullRequest(REPO, revision=COMMIT)), CONFIG, MODEL)
    assert not (repo_dir(cache_dir) / "refs").exists()
    joined = list(swarm.added)
    events: list[dict] = []
    assert_snapshot(node.pull(PullRequest(REPO, revision=COMMIT), events.append), CONFIG, MODEL)
    assert swarm.added == joined  # already linked: nothing to download
    assert events == [
        {"event": "progress", "done": CONFIG.entry.size + MODEL.entry.size,
         "total": CONFIG.entry.size + MODEL.entry.size, "files_done": 2, "files_total": 2, "rate": 0}
    ]  # fmt: skip


def test_a_revision_published_file_by_file_is_asked_again_by_commit(
    make_node: Callable[..., Node], cache_dir: Path
) -> None:
    first = manifest(CONFIG, MODEL, unpublished=(MODEL,), complete=False)
    tracker = FakeTracker(ready(first), ready(first), ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(CONFIG, MODEL), polls=1)
    node = make_node(tracker, swarm)

    snap = node.pull(PullRequest(REPO))

    assert_snapshot(snap, CONFIG, MODEL)
    # By branch once, then by commit (without holding the call) until the seed has added the torrent.
    assert tracker.asked == [("main", 20.0), (COMMIT, 0), (COMMIT, 0)]
    assert [ih for ih, *_ in swarm.added] == [CONFIG.entry.info_hash, MODEL.entry.info_hash]
    assert (repo_dir(cache_dir) / "refs" / "main").read_text() == COMMIT


def test_a_pending_manifest_is_waited_for(make_node: Callable[..., Node]) -> None:
    tracker = FakeTracker(
        pending({"state": "running", "seeds": 1}),
        pending({"state": "queued", "seeds": 0}),
        pending(None),
        ready(manifest(CONFIG)),
        blobs=(CONFIG,),
    )
    node = make_node(tracker, FakeSwarm(payload(CONFIG)), stall_timeout=5.0)
    events: list[dict] = []

    assert_snapshot(node.pull(PullRequest(REPO), events.append), CONFIG)

    assert events[:3] == [
        {"event": "waiting", "detail": "mirror job running"},
        {"event": "waiting", "detail": "no seed is registered with the tracker yet"},
        {"event": "waiting", "detail": "waiting for the tracker"},
    ]
    assert events[-1]["event"] == "progress" and events[-1]["files_done"] == 1
    assert tracker.asked == [("main", 5.0)] * 4  # held by the tracker for at most the stall timeout


def test_a_manifest_that_never_comes_stalls_even_with_a_fallback_origin(
    make_node: Callable[..., Node],
) -> None:
    hub = FakeHub(CONFIG)
    node = make_node(
        FakeTracker(pending({"seeds": 0})), FakeSwarm({}), hub, stall_timeout=0.3, fallback_origin=ORIGIN
    )
    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO))
    assert e.value.code == "Stalled"
    assert e.value.message.startswith("no progress for ")
    assert e.value.message.endswith(f"s: {REPO}@main: no seed is registered with the tracker yet")
    assert hub.clients == []


def test_bytes_that_do_not_match_the_manifest_are_discarded(
    make_node: Callable[..., Node], cache_dir: Path, store: PublishedStore
) -> None:
    wrong = bytes(b ^ 0xFF for b in MODEL.data[:4096]) + MODEL.data[4096:]  # same size, other bytes
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))
    swarm = FakeSwarm({MODEL.entry.info_hash: wrong})
    node = make_node(tracker, swarm)

    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO))

    assert e.value.code == "Integrity"
    assert (
        e.value.message == f"model.safetensors: downloaded bytes do not match {MODEL.entry.etag}; discarded"
    )
    blobs = repo_dir(cache_dir) / "blobs"
    assert not (blobs / MODEL.entry.etag).exists()
    assert not (blobs / cache.partial_name(MODEL.entry.etag)).exists()
    assert swarm.removed == [MODEL.entry.info_hash] and not swarm.has(MODEL.entry.info_hash)
    assert store.get(MODEL.entry.etag) is None
    assert not (repo_dir(cache_dir) / "snapshots" / COMMIT / "model.safetensors").exists()
    assert not (repo_dir(cache_dir) / "refs").exists()


def test_a_swarm_with_no_data_fails_the_pull_after_the_stall_timeout(
    make_node: Callable[..., Node], cache_dir: Path
) -> None:
    tracker = FakeTracker(ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(CONFIG, MODEL), polls=None)
    node = make_node(tracker, swarm, stall_timeout=0.5)
    events: list[dict] = []
    started = time.monotonic()

    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO), lambda ev: events.append({**ev, "at": time.monotonic()}))

    assert e.value.code == "Stalled"
    assert e.value.message.startswith("no progress for ")
    assert e.value.message.endswith(
        f"s: {REPO}@{COMMIT[:12]}: no peer sent data for config.json, model.safetensors"
        " (is a seed running, and can it reach the origin?)"
    )
    assert time.monotonic() - started >= 0.5
    progress = progress_events(events)
    assert len(progress) >= 2 and all(p["done"] == 0 and p["files_done"] == 0 for p in progress)
    # At most one progress event per 0.5 s.
    assert all(b["at"] - a["at"] >= 0.49 for a, b in zip(progress, progress[1:], strict=False))
    assert not (repo_dir(cache_dir) / "blobs" / MODEL.entry.etag).exists()


def test_a_stalled_pull_takes_every_remaining_file_from_the_origin(
    make_node: Callable[..., Node],
    tmp_path: Path,
    cache_dir: Path,
    store: PublishedStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    # model.safetensors has a torrent nobody serves; config.json no torrent at all yet.
    partial = manifest(CONFIG, MODEL, unpublished=(CONFIG,), complete=False)
    tracker = FakeTracker(ready(partial), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(MODEL), polls=None)
    hub = FakeHub(CONFIG, MODEL)
    node = make_node(tracker, swarm, hub, stall_timeout=0.5, fallback_origin=ORIGIN)
    events: list[dict] = []

    snap = node.pull(PullRequest(REPO, token="hf_user"), events.append)

    assert_snapshot(snap, CONFIG, MODEL)
    repo = repo_dir(cache_dir)
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert hub.downloads == ["config.json", "model.safetensors"]  # both: not only the stalled one
    assert [(endpoint, token) for endpoint, token, _ in hub.clients] == [(ORIGIN, "hf_user")] * 2
    assert not any(scratch.exists() for _, _, scratch in hub.clients)
    blobs = repo / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted([CONFIG.entry.etag, MODEL.entry.etag])
    # The stalled download is dropped, then the origin's verified copy is seeded and recorded.
    ih = MODEL.entry.info_hash
    assert swarm.removed == [ih]
    assert swarm.added == [(ih, blobs, cache.partial_name(MODEL.entry.etag), False), (ih, blobs, None, True)]
    rec, torrent = store.get(MODEL.entry.etag) or (None, None)
    assert rec == PublishedBlob(MODEL.entry.etag, ih, MODEL.entry.size, str(blobs / MODEL.entry.etag))
    assert torrent == MODEL.torrent
    assert store.get(CONFIG.entry.etag) is None  # no torrent to seed it with
    assert caplog.text.count("event=origin_fallback") == 2
    total = CONFIG.entry.size + MODEL.entry.size
    assert events[-1] == {
        "event": "progress", "done": total, "total": total, "files_done": 2, "files_total": 2, "rate": 0
    }  # fmt: skip


def test_bytes_from_the_origin_are_checked_too(make_node: Callable[..., Node], cache_dir: Path) -> None:
    hub = FakeHub(replace(MODEL, data=MODEL.data[::-1]))
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))
    node = make_node(
        tracker, FakeSwarm(payload(MODEL), polls=None), hub, stall_timeout=0.3, fallback_origin=ORIGIN
    )
    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO))
    assert (e.value.code, e.value.message) == (
        "Integrity",
        f"model.safetensors: the origin's bytes do not match {MODEL.entry.etag}",
    )
    assert not (repo_dir(cache_dir) / "blobs" / MODEL.entry.etag).exists()


def test_a_pull_past_its_timeout_fails(make_node: Callable[..., Node]) -> None:
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))
    node = make_node(tracker, FakeSwarm(payload(MODEL), polls=None), stall_timeout=0)  # never stalls
    started = time.monotonic()
    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO, timeout=0.4))
    assert (e.value.code, e.value.message) == ("Timeout", f"{REPO}@main did not complete within 0s")
    assert 0.4 <= time.monotonic() - started < 5


def test_a_blob_published_under_another_repo_is_linked_not_downloaded(
    make_node: Callable[..., Node], cache_dir: Path, store: PublishedStore
) -> None:
    other = cache.repo_dir(cache_dir, "model", "acme/other") / "blobs" / MODEL.entry.etag
    other.parent.mkdir(parents=True)
    other.write_bytes(MODEL.data)
    store.put(
        PublishedBlob(MODEL.entry.etag, MODEL.entry.info_hash, MODEL.entry.size, str(other)), MODEL.torrent
    )
    tracker = FakeTracker(ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(CONFIG, MODEL))
    node = make_node(tracker, swarm)

    assert_snapshot(node.pull(PullRequest(REPO)), CONFIG, MODEL)

    ours = repo_dir(cache_dir) / "blobs" / MODEL.entry.etag
    assert ours.stat().st_ino == other.stat().st_ino  # one copy on disk
    assert [ih for ih, *_ in swarm.added] == [CONFIG.entry.info_hash]  # the shared blob joined no swarm
    assert MODEL.entry.info_hash not in tracker.torrents_asked


def test_filters_that_match_no_file_fail_with_entry_not_found(
    make_node: Callable[..., Node], cache_dir: Path
) -> None:
    tracker = FakeTracker(ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL))
    swarm = FakeSwarm(payload(CONFIG, MODEL))
    node = make_node(tracker, swarm)
    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO, include=("*.gguf",), exclude=("config.json",)))
    assert (e.value.code, e.value.message) == (
        "EntryNotFound",
        f"no file of {REPO}@{COMMIT} matches the filters",
    )
    assert swarm.added == [] and not repo_dir(cache_dir).exists()


def test_filters_select_the_files_pulled(make_node: Callable[..., Node], cache_dir: Path) -> None:
    tracker = FakeTracker(ready(manifest(CONFIG, MODEL, VOCAB)), blobs=(CONFIG, MODEL, VOCAB))
    node = make_node(tracker, FakeSwarm(payload(CONFIG, MODEL, VOCAB)))
    snap = node.pull(PullRequest(REPO, include=("tokenizer/", "*.json")))
    assert_snapshot(snap, CONFIG, VOCAB)
    assert not (snap / "model.safetensors").exists()
    assert not (repo_dir(cache_dir) / "blobs" / MODEL.entry.etag).exists()


# --- integrity: what a failed final check leaves behind ------------------------------------------


def test_a_failed_final_check_is_loud_counted_and_told_to_streaming_readers(
    make_node: Callable[..., Node], cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    wrong_model = bytes(b ^ 0xFF for b in MODEL.data[:4096]) + MODEL.data[4096:]
    wrong_config = CONFIG.data.upper()  # same size; a git-sha1 etag (not an LFS file)
    for blob, wrong in ((MODEL, wrong_model), (CONFIG, wrong_config)):
        tracker = FakeTracker(ready(manifest(blob)), blobs=(blob,))
        node = make_node(tracker, FakeSwarm({blob.entry.info_hash: wrong}))
        assert node.blob_verified(blob.entry.etag) is None  # never joined
        with pytest.raises(HfbtError) as e:
            node.pull(PullRequest(REPO))
        assert e.value.code == "Integrity"
        # What a reader that streamed the blob from the swarm asks afterwards (the shim).
        assert node.blob_verified(blob.entry.etag, timeout=1) is False
        assert node.blob_failure(blob.entry.etag) == e.value.message
        assert node.totals()["integrity_failures"] == 1
        assert not (repo_dir(cache_dir) / "blobs" / blob.entry.etag).exists()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"event=integrity_failure repo={REPO} path=model.safetensors info_hash={MODEL.entry.info_hash}"
        f" expected_sha256={MODEL.entry.sha256} got={hashlib.sha256(wrong_model).hexdigest()} source=swarm",
        f"event=integrity_failure repo={REPO} path=config.json info_hash={CONFIG.entry.info_hash}"
        f" expected_sha256=none expected_git_sha1={CONFIG.entry.etag}"
        f" got={git_blob_sha1_bytes(wrong_config)} source=swarm",
    ]


def test_a_verified_blob_is_told_to_streaming_readers_too(make_node: Callable[..., Node]) -> None:
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))
    node = make_node(tracker, FakeSwarm(payload(MODEL)))
    node.pull(PullRequest(REPO))
    assert node.blob_verified(MODEL.entry.etag) is True and node.blob_failure(MODEL.entry.etag) is None
    assert node.totals()["integrity_failures"] == 0


def test_bytes_from_the_origin_that_do_not_match_are_logged_as_such(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    hub = FakeHub(replace(MODEL, data=MODEL.data[::-1]))
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))
    node = make_node(
        tracker, FakeSwarm(payload(MODEL), polls=None), hub, stall_timeout=0.3, fallback_origin=ORIGIN
    )
    with pytest.raises(HfbtError):
        node.pull(PullRequest(REPO))
    assert "event=integrity_failure repo=acme/tiny path=model.safetensors" in caplog.text
    assert "source=origin" in caplog.text and node.totals()["integrity_failures"] == 1


# --- tickets: a closed tracker's, renewed while the node holds the torrent -------------------------

BASE = "http://tracker.invalid"
PIECE_SERVER = "http://seed.invalid:6883"


class ClosedTracker(FakeTracker):
    """A closed tracker: a torrent's announce URL carries a ticket for this node valid `ttl` seconds,
    and ticket() renews it, or refuses (`refuse`), or fails (`fail`, raised in order first). Tickets
    expire in whole seconds, so two minted within a second for one torrent are the same text."""

    def __init__(self, *replies: ManifestReply, blobs: tuple[Blob, ...], ttl: float, pieces: bool = False):
        super().__init__(*replies, blobs=blobs)
        self.signer = TicketSigner(Ed25519PrivateKey.generate())
        self.ttl = ttl
        self.pieces = pieces  # list the seed's piece server in every torrent
        self.minted: dict[str, list[str]] = {}  # info-hash -> its tickets, oldest first
        self.refuse: TrackerRefused | None = None
        self.fail: list[HfbtError] = []
        self.lock = threading.Lock()

    def _mint(self, ih: str) -> str:
        text, _ = self.signer.mint("node1", ih, "node", self.ttl)
        with self.lock:
            self.minted.setdefault(ih, []).append(text)
        return text

    def torrent(self, info_hash: str, hf_token: str | None = None, pieces: bool = False) -> bytes:
        self.torrents_asked.append(info_hash)
        meta = fastbencode.bdecode(self.torrents[info_hash])
        role = "?hfbt=pieces" if self.pieces else ""
        meta[b"announce"] = f"{BASE}/announce/{self._mint(info_hash)}{role}".encode()
        if self.pieces:
            meta[PIECE_URLS_KEY] = [PIECE_SERVER.encode()]
        return fastbencode.bencode(meta)

    def ticket(self, info_hash: str, hf_token: str | None = None) -> TicketGrant:
        with self.lock:
            self.tickets_asked.append((info_hash, hf_token))
            failure = self.fail.pop(0) if self.fail else self.refuse
        if failure is not None:
            raise failure
        text = self._mint(info_hash)
        return TicketGrant(text, f"{BASE}/announce/{text}", time.time() + self.ttl)

    def tickets_count(self) -> int:
        with self.lock:
            return len(self.tickets_asked)


GATED = TrackerRefused("GatedRepo", "your Hub token does not read acme/tiny", 403)


@pytest.fixture
def quick_renewals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tickets of a second or less: renewals may come closer together than in a real cluster."""
    monkeypatch.setattr(trackerclient, "RENEW_MIN_S", 0.05)
    monkeypatch.setattr(engine, "retry_in", lambda failures: 0.05)


def wait_for(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.usefixtures("quick_renewals")
def test_every_torrents_ticket_is_renewed_with_the_pulls_hub_token_until_the_node_closes(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tracker = ClosedTracker(ready(manifest(CONFIG, MODEL)), blobs=(CONFIG, MODEL), ttl=0.4)
    swarm = FakeSwarm(payload(CONFIG, MODEL))
    node = make_node(tracker, swarm)
    node.pull(PullRequest(REPO, token="hf_user"))
    ihs = {CONFIG.entry.info_hash, MODEL.entry.info_hash}
    wait_for(lambda: all(len(tracker.minted[ih]) >= 4 for ih in ihs))  # the torrent's + 3 renewals
    node.close()
    assert not any(t.name == "ticket-renewals" for t in threading.enumerate())
    asked = tracker.tickets_count()
    time.sleep(0.3)
    assert tracker.tickets_count() == asked  # closed: no renewal after
    assert {t for _, t in tracker.tickets_asked} == {"hf_user"} and {
        ih for ih, _ in tracker.tickets_asked
    } == ihs
    for ih in ihs:
        first, *_, last = tracker.minted[ih]
        assert swarm.trackers[ih] == [f"{BASE}/announce/{last}"]  # the latest ticket, no role
        assert swarm.joined_with[ih] == [f"{BASE}/announce/{first}"]  # the torrent's own ticket
    # One thread for every torrent; no ticket and no Hub token in any line.
    minted = [t for tickets in tracker.minted.values() for t in tickets]
    assert not [t for t in minted if t in caplog.text] and "hf_user" not in caplog.text


@pytest.mark.usefixtures("quick_renewals")
def test_a_torrent_taking_the_seeds_pieces_keeps_its_role_through_renewals(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    fetchers: list[tuple[str, list[str], TicketHolder]] = []

    class RecordingFetcher:
        def __init__(self, swarm: object, ih: str, urls: list[str], holder: TicketHolder) -> None:
            fetchers.append((ih, urls, holder))

        def start(self) -> RecordingFetcher:
            return self

    monkeypatch.setattr(engine, "PieceFetcher", RecordingFetcher)
    tracker = ClosedTracker(ready(manifest(MODEL)), blobs=(MODEL,), ttl=0.4, pieces=True)
    swarm = FakeSwarm(payload(MODEL), polls=None)  # still downloading throughout
    node = make_node(tracker, swarm, stall_timeout=0)
    ih = MODEL.entry.info_hash
    pull = node.fetch(PullRequest(REPO, timeout=3))
    wait_for(lambda: len(tracker.minted.get(ih, [])) >= 2)
    [(fetched_ih, urls, holder)] = fetchers
    assert (fetched_ih, urls) == (ih, [PIECE_SERVER])
    assert swarm.joined_with[ih] == [f"{BASE}/announce/{tracker.minted[ih][0]}?hfbt=pieces"]
    wait_for(lambda: len(tracker.minted[ih]) >= 3)  # so the first renewal has been applied
    # Renewed with its role: the tracker keeps handing it peers other than the seed.
    assert (ih, [f"{BASE}/announce/{tracker.minted[ih][1]}?hfbt=pieces"]) in swarm.tracker_updates
    # No piece server answered (the fetcher says so): plain BitTorrent, renewals included.
    holder.without_pieces()
    seen = len(tracker.minted[ih])
    wait_for(lambda: len(tracker.minted[ih]) >= seen + 2)
    node.close()  # joins the renewal thread: the last ticket minted is the one in use
    last = tracker.minted[ih][-1]
    assert holder.ticket == last  # what the fetcher shows the seed now
    assert swarm.trackers[ih] == [f"{BASE}/announce/{last}"]
    with pytest.raises(HfbtError):
        pull.result(5)


@pytest.mark.usefixtures("quick_renewals")
def test_a_refused_renewal_ends_the_seeding_but_keeps_the_file(
    make_node: Callable[..., Node], cache_dir: Path, store: PublishedStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    tracker = ClosedTracker(ready(manifest(MODEL)), blobs=(MODEL,), ttl=2)  # renewed after the pull
    swarm = FakeSwarm(payload(MODEL))
    node = make_node(tracker, swarm)
    snap = node.pull(PullRequest(REPO, token="hf_user"))
    tracker.refuse = GATED  # the user lost access to the repo meanwhile
    ih = MODEL.entry.info_hash
    wait_for(lambda: ih in swarm.removed)
    time.sleep(0.3)
    assert tracker.tickets_count() == 1  # refused once: never asked again
    assert [r.getMessage() for r in caplog.records if "ticket_refused" in r.getMessage()] == [
        f"event=ticket_refused info_hash={ih} reason=GatedRepo status=403"
        " detail='your Hub token does not read acme/tiny' left_swarm=yes"
    ]
    assert not swarm.has(ih)
    # Only the sharing ends: the pulled file, its snapshot link and its record stay.
    assert (snap / "model.safetensors").read_bytes() == MODEL.data
    assert store.get(MODEL.entry.etag) is not None


@pytest.mark.usefixtures("quick_renewals")
def test_a_refused_renewal_of_a_download_keeps_the_download(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    tracker = ClosedTracker(ready(manifest(MODEL)), blobs=(MODEL,), ttl=0.4)
    tracker.refuse = TrackerRefused("Unauthorized", "node node1 was revoked", 401)
    swarm = FakeSwarm(payload(MODEL), polls=None)
    node = make_node(tracker, swarm, stall_timeout=0)
    with pytest.raises(HfbtError) as e:
        node.pull(PullRequest(REPO, timeout=1))
    assert e.value.code == "Timeout"
    assert tracker.tickets_count() == 1 and swarm.has(MODEL.entry.info_hash) and swarm.removed == []
    assert "reason=Unauthorized status=401 detail='node node1 was revoked' left_swarm=no" in caplog.text


@pytest.mark.usefixtures("quick_renewals")
def test_a_renewal_that_fails_is_tried_again(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfbt.node")
    tracker = ClosedTracker(ready(manifest(CONFIG)), blobs=(CONFIG,), ttl=0.4)
    tracker.fail = [HfbtError("TrackerUnreachable", "cannot reach the tracker")] * 2
    swarm = FakeSwarm(payload(CONFIG))
    node = make_node(tracker, swarm)
    node.pull(PullRequest(REPO))
    ih = CONFIG.entry.info_hash
    wait_for(lambda: len(tracker.minted[ih]) >= 2)  # the torrent's, then the first renewal's
    node.close()
    assert caplog.text.count("event=ticket_renewal_failed") == 2
    assert "code=TrackerUnreachable" in caplog.text and "ticket_refused" not in caplog.text
    assert swarm.has(ih) and swarm.trackers[ih] == [f"{BASE}/announce/{tracker.minted[ih][-1]}"]


def test_a_restarted_node_reseeds_with_a_fresh_announce_url_not_the_stored_one(
    make_node: Callable[..., Node], cache_dir: Path, store: PublishedStore
) -> None:
    blob = cache.blob_path(repo_dir(cache_dir), MODEL.entry.etag)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(MODEL.data)
    stale = fastbencode.bdecode(MODEL.torrent)
    stale[b"announce"] = f"{BASE}/announce/expired-long-ago".encode()
    store.put(
        PublishedBlob(MODEL.entry.etag, MODEL.entry.info_hash, MODEL.entry.size, str(blob)),
        fastbencode.bencode(stale),
    )
    tracker = FakeTracker(ready(manifest(MODEL)), blobs=(MODEL,))  # open: tickets are null
    swarm = FakeSwarm({})
    node = make_node(tracker, swarm)

    assert node.reseed() == 1

    ih = MODEL.entry.info_hash
    assert swarm.added == [(ih, blob.parent, None, True)]
    wait_for(lambda: swarm.trackers[ih] == [OPEN_ANNOUNCE])
    assert tracker.tickets_asked == [(ih, None)]  # no Hub token survives a restart
    assert swarm.tracker_updates == [(ih, [OPEN_ANNOUNCE])]
