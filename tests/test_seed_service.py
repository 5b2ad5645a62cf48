"""hfbt.seed.service.SeedService with in-memory collaborators: mirror jobs, failures, restarts.

The tracker, the origin (Hub) and the libtorrent swarm are fakes that record every call; the
published store, the piece book and the metrics are the real ones. Nothing here starts a process
or opens a socket.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import fastbencode
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hfbt import trackerclient
from hfbt.cache import repo_dir
from hfbt.config import SeedConfig, SwarmConfig
from hfbt.errors import HfbtError
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import PIECE_LENGTH, FileEntry, Manifest, is_lfs
from hfbt.metrics import SeedMetrics
from hfbt.published import PublishedStore
from hfbt.seed import service as seed_service
from hfbt.seed.pieces import PieceBook
from hfbt.seed.service import SeedService
from hfbt.tickets import TICKET_HEADER, TicketSigner
from hfbt.trackerclient import TicketGrant
from hfbt.wire import HANDOUT_MIN_PIECES, seed_hands_out

REPO = "acme/tiny"
C1 = "1" * 40
C2 = "2" * 40
ANNOUNCE = "http://tracker.test/announce"
SEED_ANNOUNCE = "http://tracker.test/announce?hfbt=seed"  # spelled out: the role parameter is the contract
ORIGIN = "http://origin.test"
CONFIG = b'{"architectures": ["TinyModel"], "hidden_size": 8}\n'


@cache
def big_blob() -> bytes:
    """Exactly the smallest blob the seed hands out piece by piece (8 pieces of 4 MiB)."""
    return random.Random(0).randbytes(HANDOUT_MIN_PIECES * PIECE_LENGTH)


def entry_for(path: str, data: bytes) -> FileEntry:
    """The Hub's listing: sha256 etag for LFS files, git blob sha1 for the others."""
    if is_lfs(path, len(data)):
        sha = hashlib.sha256(data).hexdigest()
        return FileEntry(path, len(data), sha, sha256=sha)
    return FileEntry(path, len(data), git_blob_sha1_bytes(data))


def info_hash_of(torrent: bytes) -> str:
    return hashlib.sha1(fastbencode.bencode(fastbencode.bdecode(torrent)[b"info"])).hexdigest()


# --- fakes ---------------------------------------------------------------------------------------


class FakeTracker:
    """In-memory tracker API: keeps the registered manifests the way the real registry does."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.seeds: list[tuple] = []
        self.revisions: list[tuple] = []  # (commit, ref, job_id) per register_revision call
        self.stored: dict[tuple[str, str, str], Manifest] = {}
        self.torrents: list[tuple[str, str, str, bytes]] = []  # (commit, path, info_hash, torrent)
        self.results: list[tuple[str, dict]] = []
        self.jobs: list[dict] = []
        self.on_register_revision = threading.Event()
        self.fail_once: dict[str, HfbtError] = {}  # method name -> what its next call raises
        self.closed = False
        self.skew = 0.0
        # An open tracker's grant by default: no ticket, nothing to renew.
        self.make_grant: Callable[[], TicketGrant] = lambda: TicketGrant(None, ANNOUNCE, None)
        self.grants_asked = 0
        self.key: str | None = None

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail_once:
            raise self.fail_once.pop(method)

    def register_seed(
        self, seed_id: str, origin: str, piece_port: int | None = None, piece_url: str | None = None
    ) -> None:
        self.seeds.append((seed_id, origin, piece_port, piece_url))

    def announce_url(self) -> TicketGrant:
        self._maybe_fail("announce_url")
        self.grants_asked += 1
        return self.make_grant()

    def ticket_key(self) -> str | None:
        return self.key

    def next_job(self, seed_id: str, wait: float = 25.0) -> dict | None:
        return self.jobs.pop(0) if self.jobs else None

    def register_revision(self, manifest: Manifest, ref: str | None, job_id: str | None) -> Manifest:
        self._maybe_fail("register_revision")
        manifest.validate()
        key = (manifest.repo_type, manifest.repo_id, manifest.commit)
        with self.lock:
            self.revisions.append((manifest.commit, ref, job_id))
            stored = self.stored.get(key) or replace(manifest, refs=(), complete=False)
            # A commit never changes: the same files and hashes every time (tracker/registry.py).
            assert [(f.path, f.size, f.etag, f.sha256) for f in stored.files] == [
                (f.path, f.size, f.etag, f.sha256) for f in manifest.files
            ]
            if ref and ref not in stored.refs:
                stored = replace(stored, refs=(*stored.refs, ref))
            self.stored[key] = stored
        self.on_register_revision.set()
        return stored

    def register_torrent(self, manifest: Manifest, path: str, torrent: bytes) -> str:
        self._maybe_fail("register_torrent")
        key = (manifest.repo_type, manifest.repo_id, manifest.commit)
        with self.lock:
            stored = self.stored[key]  # the real tracker answers 404 for an unregistered revision
            entry = next(f for f in stored.files if f.path == path)
            info = fastbencode.bdecode(torrent)[b"info"]
            # What tracker/torrentfile.check_blob_torrent insists on.
            assert info[b"name"] == entry.etag.encode() and info[b"length"] == entry.size
            assert info[b"piece length"] == PIECE_LENGTH and info[b"private"] == 1
            ih = info_hash_of(torrent)
            assert entry.info_hash in (None, ih), "an info-hash is set once"
            files = tuple(replace(f, info_hash=ih) if f.path == path else f for f in stored.files)
            complete = all(f.info_hash for f in files if f.needs_torrent)
            self.stored[key] = replace(stored, files=files, complete=complete)
            self.torrents.append((manifest.commit, path, ih, torrent))
            self.events.append(("register_torrent", ih, path))
        return ih

    def job_result(
        self, job_id: str, ok: bool, commit: str | None = None, error: str = "", detail: str = ""
    ) -> None:
        self.results.append((job_id, {"ok": ok, "commit": commit, "error": error, "detail": detail}))
        self._maybe_fail("job_result")

    def close(self) -> None:
        self.closed = True


class FakeHub:
    """The origin: repos of commits of {path: bytes}; downloads land in an HF-cache-like blobs folder."""

    endpoint = ORIGIN

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.repos: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple] = []
        self.downloads: list[tuple[str, str]] = []  # (commit, path)
        self.wrong_bytes: set[str] = set()  # paths whose download returns other bytes of the same size
        self.fail: dict[str, BaseException] = {}  # method name -> what it raises
        self.listing_override: list[FileEntry] | None = None
        self.gate: threading.Event | None = None  # set: the first download waits for it
        self.download_started = threading.Event()

    def add_repo(
        self,
        repo_id: str,
        commits: dict[str, dict[str, bytes]],
        refs: dict[str, str],
        *,
        private: bool = False,
        repo_type: str = "model",
    ) -> None:
        self.repos[(repo_type, repo_id)] = {"commits": commits, "refs": refs, "private": private}

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, bool]:
        self.calls.append(("resolve", repo_type, repo_id, revision))
        self._maybe_fail("resolve")
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HfbtError("RepoNotFound", f"repository {repo_id} not found on the origin (or no access)")
        commit = repo["refs"].get(revision, revision)
        if commit not in repo["commits"]:
            raise HfbtError("RevisionNotFound", f"revision not found in {repo_id}")
        return commit, repo["private"]

    def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[FileEntry]:
        self.calls.append(("list_files", repo_type, repo_id, commit))
        self._maybe_fail("list_files")
        if self.listing_override is not None:
            return list(self.listing_override)
        files = self.repos[(repo_type, repo_id)]["commits"][commit]
        return [entry_for(path, data) for path, data in files.items()]

    def download(self, repo_type: str, repo_id: str, commit: str, path: str) -> Path:
        self.calls.append(("download", repo_type, repo_id, commit, path))
        self.downloads.append((commit, path))
        first = not self.download_started.is_set()
        self.download_started.set()
        if first and self.gate is not None:
            assert self.gate.wait(10)
        self._maybe_fail("download")
        data = self.repos[(repo_type, repo_id)]["commits"][commit][path]
        etag = entry_for(path, data).etag
        if path in self.wrong_bytes:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        blob = repo_dir(self.cache_dir, repo_type, repo_id) / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        return blob


class FakeSwarm:
    """A libtorrent session's surface as the seed uses it; refuses calls for torrents it lacks."""

    listen_port = 51413

    def __init__(self, events: list) -> None:
        self.events = events
        self.torrents: dict[str, dict] = {}  # info_hash -> {"folder", "name", "trackers"}
        self.adds: list[tuple[str, Path, bool, list[str] | None]] = []
        self.tracker_updates: list[tuple[str, list[str]]] = []
        self.super_seeded: list[str] = []
        self.closed: list[bool] = []

    def add(
        self,
        torrent: bytes,
        save_path: Path,
        *,
        file_name: str | None = None,
        seeding: bool = False,
        trackers: list[str] | None = None,
    ) -> str:
        ih = info_hash_of(torrent)
        self.adds.append((ih, Path(save_path), seeding, None if trackers is None else list(trackers)))
        self.events.append(("swarm_add", ih, trackers))
        name = fastbencode.bdecode(torrent)[b"info"][b"name"].decode()
        self.torrents.setdefault(
            ih, {"folder": Path(save_path), "name": file_name or name, "trackers": list(trackers or [])}
        )
        return ih

    def has(self, ih: str) -> bool:
        return ih in self.torrents

    def replace_trackers(self, ih: str, urls: list[str]) -> None:
        self.torrents[ih]["trackers"] = list(urls)
        self.tracker_updates.append((ih, list(urls)))
        self.events.append(("replace_trackers", ih, list(urls)))

    def super_seed(self, ih: str) -> None:
        assert ih in self.torrents
        self.super_seeded.append(ih)

    # What SeedMetrics reads at scrape time.
    def info_hashes(self) -> list[str]:
        return list(self.torrents)

    def statuses(self) -> list[SimpleNamespace]:
        return [self.status(ih) for ih in self.torrents]

    def status(self, ih: str) -> SimpleNamespace:
        return SimpleNamespace(peers=0, seeds=0, download_rate=0, upload_rate=0)

    def totals(self) -> dict[str, int]:
        return {"uploaded": 0, "downloaded": 0, "from_piece_servers": 0, "torrents": len(self.torrents)}

    def close(self, save_resume: bool = True) -> None:
        self.closed.append(save_resume)


# --- the rig -------------------------------------------------------------------------------------


@dataclass
class Rig:
    service: SeedService
    tracker: FakeTracker
    swarm: FakeSwarm
    store: PublishedStore
    pieces: PieceBook
    metrics: SeedMetrics
    events: list = field(default_factory=list)

    def sample(self, name: str, labels: dict | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


class Seeds:
    """Builds seed services over one data dir; a second one is the same seed after a restart."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "seed"
        self.hub = FakeHub(self.data_dir / "hub")
        self.built: list[Rig] = []

    def start(self, *, super_seed: bool = False, parallel_files: int = 1, register: bool = True) -> Rig:
        events: list = []
        cfg = SeedConfig(
            tracker="http://tracker.test",
            data_dir=self.data_dir,
            swarm=SwarmConfig(listen_port=0, super_seed=super_seed),
            parallel_files=parallel_files,
        )
        tracker, swarm = FakeTracker(events), FakeSwarm(events)
        store, pieces, metrics = PublishedStore(self.data_dir / "published"), PieceBook(), SeedMetrics(swarm)
        service = SeedService(
            cfg,
            seed_id="seed-a",
            tracker=tracker,
            origin=self.hub,
            store=store,
            swarm=swarm,
            metrics=metrics,
            pieces=pieces,
            piece_port=0,
        )
        rig = Rig(service, tracker, swarm, store, pieces, metrics, events)
        self.built.append(rig)
        if register:
            service._register()  # what run() does first: the announce URL, then reseed
        return rig


@pytest.fixture
def seeds(tmp_path: Path) -> Iterator[Seeds]:
    s = Seeds(tmp_path)
    yield s
    for rig in s.built:
        rig.service.close()


def job(job_id: str, revision: str, repo_id: str = REPO) -> dict:
    return {"id": job_id, "repo_type": "model", "repo_id": repo_id, "revision": revision}


def ok(commit: str) -> dict:
    return {"ok": True, "commit": commit, "error": "", "detail": ""}


def three_files() -> dict[str, bytes]:
    return {
        "config.json": CONFIG,
        "model.safetensors": big_blob(),
        "copies/model.safetensors": big_blob(),  # same blob under a second path
    }


def published(store: PublishedStore) -> dict[str, tuple]:
    return {rec.etag: (rec, torrent) for rec, torrent in store.all()}


# --- 1. a whole job ------------------------------------------------------------------------------


@pytest.mark.parametrize("super_seed", [False, True])
def test_a_job_mirrors_each_blob_once_registers_every_path_and_seeds(seeds: Seeds, super_seed: bool) -> None:
    seeds.hub.add_repo(REPO, {C1: three_files()}, {"main": C1})
    rig = seeds.start(super_seed=super_seed)
    small, big = entry_for("config.json", CONFIG), entry_for("model.safetensors", big_blob())
    assert small.sha256 is None and big.sha256 == big.etag  # git sha1 vs LFS sha256 etags
    assert rig.tracker.seeds == [("seed-a", ORIGIN, None, None)]

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [("job-1", ok(C1))]
    assert rig.tracker.revisions == [(C1, "main", "job-1")]
    stored = rig.tracker.stored[("model", REPO, C1)]
    assert stored.refs == ("main",) and stored.complete
    # Each distinct blob came from the origin once.
    assert sorted(seeds.hub.downloads) == [(C1, "config.json"), (C1, "model.safetensors")]

    # One torrent per blob, registered for every path that holds it.
    by_path = {path: (ih, t) for commit, path, ih, t in rig.tracker.torrents if commit == C1}
    assert len(rig.tracker.torrents) == 3 and set(by_path) == set(three_files())
    ih_small, ih_big = by_path["config.json"][0], by_path["model.safetensors"][0]
    assert ih_small != ih_big
    assert by_path["copies/model.safetensors"] == by_path["model.safetensors"]
    assert {f.path: f.info_hash for f in stored.files} == {
        "config.json": ih_small,
        "model.safetensors": ih_big,
        "copies/model.safetensors": ih_big,
    }

    # Seeded from the verified blob file, first without trackers, then with the seed's announce URL.
    blobs = repo_dir(seeds.hub.cache_dir, "model", REPO) / "blobs"
    # One file at a time (parallel_files=1), in the revision's order.
    assert rig.swarm.adds == [(ih_small, blobs, True, None), (ih_big, blobs, True, None)]
    for ih, data in ((ih_small, CONFIG), (ih_big, big_blob())):
        t = rig.swarm.torrents[ih]
        assert (t["folder"] / t["name"]).read_bytes() == data
        assert t["trackers"] == [SEED_ANNOUNCE]
        mine = [e for e in rig.events if e[1] == ih]
        kinds = [e[0] for e in mine]
        # Not announced before the tracker knows the torrent; announced once it does.
        assert kinds[0] == "swarm_add" and kinds[-1] == "replace_trackers", mine
        assert set(kinds[1:-1]) == {"register_torrent"}, mine
    assert rig.swarm.tracker_updates == [(ih_small, [SEED_ANNOUNCE]), (ih_big, [SEED_ANNOUNCE])]

    # Published: what a restart seeds again.
    recs = published(rig.store)
    assert set(recs) == {small.etag, big.etag}
    assert sorted(p.name for p in rig.store.folder.iterdir()) == sorted(
        f"{e}{s}" for e in (small.etag, big.etag) for s in (".json", ".torrent")
    )
    for e, ih, data, path in (
        (small, ih_small, CONFIG, "config.json"),
        (big, ih_big, big_blob(), "model.safetensors"),
    ):
        rec, torrent = recs[e.etag]
        assert (rec.info_hash, rec.size) == (ih, len(data))
        assert Path(rec.path).read_bytes() == data
        assert torrent == by_path[path][1]

    # The piece book serves exactly the blobs the seed hands out: the 8-piece one, not config.json.
    assert seed_hands_out(len(big_blob())) and not seed_hands_out(len(CONFIG))
    assert rig.pieces.take_next(ih_big) == 0
    assert rig.pieces.read(ih_big, 7) == big_blob()[7 * PIECE_LENGTH :]
    with pytest.raises(KeyError):
        rig.pieces.take_next(ih_small)
    assert rig.swarm.super_seeded == ([ih_big] if super_seed else [])

    assert rig.sample("hfbt_seed_origin_download_bytes_total") == len(CONFIG) + len(big_blob())
    assert rig.sample("hfbt_seed_blobs_mirrored_total") == 2
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "done"}) == 1
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "failed"}) == 0
    assert rig.sample("hfbt_seed_mirror_jobs_running") == 0
    assert rig.sample("hfbt_seed_torrents") == 2


def test_an_empty_file_is_listed_but_neither_fetched_nor_torrented(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"a.txt": b"hello\n", "empty.txt": b""}}, {"main": C1})
    rig = seeds.start()

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [("job-1", ok(C1))]
    assert seeds.hub.downloads == [(C1, "a.txt")]
    assert [path for _, path, _, _ in rig.tracker.torrents] == ["a.txt"]
    stored = rig.tracker.stored[("model", REPO, C1)]
    assert {f.path for f in stored.files} == {"a.txt", "empty.txt"} and stored.complete
    assert len(rig.swarm.adds) == 1


# --- 2. bytes that do not match ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["config.json", "weights.bin"])  # git sha1 etag, then sha256 (LFS suffix)
def test_bytes_that_do_not_match_the_etag_fail_the_job_and_are_removed(seeds: Seeds, path: str) -> None:
    data = CONFIG if path == "config.json" else b"\x00\x01" * 512
    seeds.hub.add_repo(REPO, {C1: {path: data}}, {"main": C1})
    seeds.hub.wrong_bytes.add(path)
    rig = seeds.start()
    etag = entry_for(path, data).etag
    assert (entry_for(path, data).sha256 is not None) == (path == "weights.bin")

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [
        (
            "job-1",
            {
                "ok": False,
                "commit": None,
                "error": "OriginError",
                "detail": f"{path}: the origin sent bytes that do not match {etag}",
            },
        )
    ]
    assert seeds.hub.downloads == [(C1, path)]
    assert rig.tracker.torrents == [] and rig.swarm.adds == [] and rig.swarm.tracker_updates == []
    assert rig.store.all() == [] and list(rig.store.folder.iterdir()) == []
    assert not (repo_dir(seeds.hub.cache_dir, "model", REPO) / "blobs" / etag).exists()
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "failed"}) == 1
    assert rig.sample("hfbt_seed_origin_download_bytes_total") == 0
    assert rig.sample("hfbt_seed_integrity_failures_total") == 1


# --- 3. origin errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "code", "reported"),
    [
        ("resolve", "RepoNotFound", "RepoNotFound"),
        ("resolve", "GatedRepo", "RepoNotFound"),  # the nodes see a gated repo as not found
        ("resolve", "RevisionNotFound", "RevisionNotFound"),
        ("list_files", "OriginError", "OriginError"),
        ("download", "EntryNotFound", "OriginError"),
        ("download", "RepoNotFound", "RepoNotFound"),
    ],
)
def test_origin_errors_become_the_job_error_the_tracker_knows(
    seeds: Seeds, method: str, code: str, reported: str
) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    seeds.hub.fail[method] = HfbtError(code, f"the origin says {code}")
    rig = seeds.start()

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [
        ("job-1", {"ok": False, "commit": None, "error": reported, "detail": f"the origin says {code}"})
    ]
    # Registered only once the file list is known; nothing published, nothing seeded.
    assert rig.tracker.revisions == ([(C1, "main", "job-1")] if method == "download" else [])
    assert rig.tracker.torrents == [] and rig.swarm.adds == [] and rig.store.all() == []
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "failed"}) == 1
    assert rig.sample("hfbt_seed_mirror_jobs_running") == 0


def test_an_unknown_repo_on_the_origin_is_repo_not_found(seeds: Seeds) -> None:
    rig = seeds.start()
    rig.service.run_job(job("job-1", "main", repo_id="acme/nope"))
    assert [(j, r["ok"], r["error"]) for j, r in rig.tracker.results] == [("job-1", False, "RepoNotFound")]
    assert [c[0] for c in seeds.hub.calls] == ["resolve"]


def test_an_unusable_file_list_is_an_origin_error_and_registers_nothing(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    seeds.hub.listing_override = [FileEntry("../escape", 3, git_blob_sha1_bytes(b"abc"))]
    rig = seeds.start()

    rig.service.run_job(job("job-1", "main"))

    [(job_id, result)] = rig.tracker.results
    assert (job_id, result["ok"], result["error"]) == ("job-1", False, "OriginError")
    assert f"{REPO}@{C1} is unusable" in result["detail"]
    assert rig.tracker.revisions == [] and seeds.hub.downloads == []


def test_a_crash_while_mirroring_still_fails_the_job(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    seeds.hub.fail["download"] = RuntimeError("disk on fire")
    rig = seeds.start()

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [
        (
            "job-1",
            {
                "ok": False,
                "commit": None,
                "error": "OriginError",
                "detail": "seed error: RuntimeError: disk on fire",
            },
        )
    ]
    assert rig.sample("hfbt_seed_mirror_jobs_running") == 0


# --- 4. restart ----------------------------------------------------------------------------------


def test_a_restarted_seed_reseeds_every_published_blob_without_the_origin(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: three_files()}, {"main": C1})
    first = seeds.start()
    first.service.run_job(job("job-1", "main"))
    assert first.tracker.results == [("job-1", ok(C1))]
    before = published(first.store)
    first.service.close()
    assert first.swarm.closed == [False] and first.tracker.closed
    seeds.hub.calls.clear()

    again = seeds.start()  # same data dir: same published store folder; new swarm, tracker, piece book

    assert seeds.hub.calls == []  # neither resolved, listed nor downloaded
    assert again.tracker.seeds == [("seed-a", ORIGIN, None, None)]
    assert again.tracker.revisions == [] and again.tracker.torrents == []
    ihs = {etag: rec.info_hash for etag, (rec, _) in before.items()}
    big, small = entry_for("model.safetensors", big_blob()).etag, entry_for("config.json", CONFIG).etag
    assert set(ihs) == {big, small}
    # Every blob straight back in the swarm, announced at once (the tracker knows these torrents).
    assert sorted(again.swarm.adds) == sorted(
        (rec.info_hash, Path(rec.path).parent, True, [SEED_ANNOUNCE]) for rec, _ in before.values()
    )
    for rec, _ in before.values():
        t = again.swarm.torrents[rec.info_hash]
        assert (t["folder"] / t["name"]).stat().st_size == rec.size
    assert again.pieces.take_next(ihs[big]) == 0
    with pytest.raises(KeyError):
        again.pieces.take_next(ihs[small])
    assert again.sample("hfbt_seed_blobs_mirrored_total") == 0
    assert again.service.reseed() == 2  # the count _register logs

    # The job again on the restarted seed (say the tracker lost its registry): registered, not fetched.
    again.service.run_job(job("job-2", "main"))
    assert again.tracker.results == [("job-2", ok(C1))]
    assert seeds.hub.downloads == [(C1, "config.json"), (C1, "model.safetensors")]  # the first seed's only
    assert sorted(p for _, p, _, _ in again.tracker.torrents) == sorted(three_files())
    assert len(again.swarm.adds) == 2 + 2  # the reseed's and reseed() again; the job added none
    assert again.sample("hfbt_seed_origin_download_bytes_total") == 0


def test_a_blob_whose_file_went_away_is_not_reseeded_and_is_fetched_again(seeds: Seeds) -> None:
    files = {"config.json": CONFIG, "weights.bin": b"\x07" * 3000}
    seeds.hub.add_repo(REPO, {C1: files}, {"main": C1})
    first = seeds.start()
    first.service.run_job(job("job-1", "main"))
    recs = published(first.store)
    gone = entry_for("weights.bin", files["weights.bin"]).etag
    Path(recs[gone][0].path).unlink()
    first.service.close()
    seeds.hub.downloads.clear()

    again = seeds.start()
    assert [ih for ih, *_ in again.swarm.adds] == [recs[entry_for("config.json", CONFIG).etag][0].info_hash]

    again.service.run_job(job("job-2", "main"))
    assert again.tracker.results == [("job-2", ok(C1))]
    assert seeds.hub.downloads == [(C1, "weights.bin")]
    assert Path(published(again.store)[gone][0].path).read_bytes() == files["weights.bin"]


# --- 5. the same revision again, and a blob shared between revisions -------------------------------


def test_the_same_revision_again_downloads_nothing(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: three_files()}, {"main": C1})
    rig = seeds.start()
    rig.service.run_job(job("job-1", "main"))
    adds, torrents = list(rig.swarm.adds), list(rig.tracker.torrents)
    assert len(seeds.hub.downloads) == 2

    rig.service.run_job(job("job-2", C1))  # by commit this time: no ref

    assert rig.tracker.results == [("job-1", ok(C1)), ("job-2", ok(C1))]
    assert rig.tracker.revisions == [(C1, "main", "job-1"), (C1, None, "job-2")]
    assert len(seeds.hub.downloads) == 2 and [c for c in seeds.hub.calls if c[0] == "download"] == [
        ("download", "model", REPO, C1, p) for _, p in seeds.hub.downloads
    ]
    assert rig.tracker.torrents == torrents  # the tracker has every info-hash already
    assert rig.swarm.adds == adds  # already seeding
    # The announce URL is set again every time (a failed registration may have left it unset).
    assert len(rig.swarm.tracker_updates) == 4
    assert rig.sample("hfbt_seed_blobs_mirrored_total") == 2
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "done"}) == 2


def test_a_blob_shared_by_two_commits_is_fetched_once_and_registered_for_both(seeds: Seeds) -> None:
    weights = b"\x42" * 5000  # small, but LFS by its suffix: a sha256 etag
    seeds.hub.add_repo(
        REPO,
        {
            C1: {"config.json": CONFIG, "weights.bin": weights},
            C2: {"config.json": b"{}\n", "weights.bin": weights},
        },
        {"main": C2, "v1": C1},
    )
    rig = seeds.start()

    rig.service.run_job(job("job-1", "v1"))
    rig.service.run_job(job("job-2", "main"))

    assert rig.tracker.results == [("job-1", ok(C1)), ("job-2", ok(C2))]
    assert sorted(seeds.hub.downloads) == [(C1, "config.json"), (C1, "weights.bin"), (C2, "config.json")]
    registered = {(commit, path): ih for commit, path, ih, _ in rig.tracker.torrents}
    assert set(registered) == {(c, p) for c in (C1, C2) for p in ("config.json", "weights.bin")}
    assert registered[(C1, "weights.bin")] == registered[(C2, "weights.bin")]
    assert registered[(C1, "config.json")] != registered[(C2, "config.json")]
    assert len(rig.swarm.adds) == 3 and len(published(rig.store)) == 3
    for ih in set(registered.values()):  # nothing here is big enough to hand out
        with pytest.raises(KeyError):
            rig.pieces.take_next(ih)


def test_two_jobs_at_once_fetch_a_shared_blob_once(seeds: Seeds) -> None:
    weights = b"\x42" * 5000
    seeds.hub.add_repo(
        REPO,
        {C1: {"weights.bin": weights}, C2: {"weights.bin": weights, "config.json": CONFIG}},
        {"v1": C1, "main": C2},
    )
    seeds.hub.gate = threading.Event()
    rig = seeds.start(parallel_files=2)  # a free file slot: job 2 reaches the blob while job 1 fetches it

    one = threading.Thread(target=rig.service.run_job, args=(job("job-1", "v1"),))
    one.start()
    assert seeds.hub.download_started.wait(5)
    rig.tracker.on_register_revision.clear()
    two = threading.Thread(target=rig.service.run_job, args=(job("job-2", "main"),))
    two.start()
    assert rig.tracker.on_register_revision.wait(5)
    time.sleep(0.2)  # job 2's weights.bin is now waiting on the blob's lock
    seeds.hub.gate.set()
    one.join(10)
    two.join(10)

    assert sorted(rig.tracker.results) == [("job-1", ok(C1)), ("job-2", ok(C2))]
    assert sorted(seeds.hub.downloads) == [(C1, "weights.bin"), (C2, "config.json")]
    assert len(rig.swarm.adds) == 2
    assert sorted((c, p) for c, p, _, _ in rig.tracker.torrents) == [
        (C1, "weights.bin"),
        (C2, "config.json"),
        (C2, "weights.bin"),
    ]


# --- the tracker failing under a job -------------------------------------------------------------


def test_a_refused_revision_fails_the_job_with_the_trackers_code(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    rig = seeds.start()
    rig.tracker.fail_once["register_revision"] = HfbtError("TrackerUnreachable", "tracker down")

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [
        ("job-1", {"ok": False, "commit": None, "error": "TrackerUnreachable", "detail": "tracker down"})
    ]
    assert seeds.hub.downloads == [] and rig.swarm.adds == []


def test_a_commit_the_tracker_holds_with_other_files_fails_the_job_as_an_origin_error(seeds: Seeds) -> None:
    # The tracker never lets a registered commit change (409 Conflict); the job's outcome must be one of
    # the three the tracker accepts, or its result would be refused and the nodes left waiting.
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    rig = seeds.start()
    rig.tracker.fail_once["register_revision"] = HfbtError("Conflict", "registered with other files")

    rig.service.run_job(job("job-1", "main"))

    assert rig.tracker.results == [
        (
            "job-1",
            {"ok": False, "commit": None, "error": "OriginError", "detail": "registered with other files"},
        )
    ]
    assert seeds.hub.downloads == [] and rig.swarm.adds == []


def test_a_lost_torrent_registration_is_made_good_by_the_retry(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    rig = seeds.start()
    rig.tracker.fail_once["register_torrent"] = HfbtError("TrackerUnreachable", "tracker down")

    rig.service.run_job(job("job-1", "main"))

    assert [(j, r["ok"], r["error"]) for j, r in rig.tracker.results] == [
        ("job-1", False, "TrackerUnreachable")
    ]
    [(ih, _, _, trackers)] = rig.swarm.adds
    # Seeding, but not announcing a torrent the tracker does not know.
    assert trackers is None and rig.swarm.tracker_updates == [] and rig.swarm.torrents[ih]["trackers"] == []

    rig.service.run_job(job("job-2", "main"))

    assert rig.tracker.results[1] == ("job-2", ok(C1))
    assert seeds.hub.downloads == [(C1, "config.json")]  # published the first time: not fetched again
    assert [(p, i) for _, p, i, _ in rig.tracker.torrents] == [("config.json", ih)]
    assert len(rig.swarm.adds) == 1 and rig.swarm.tracker_updates == [(ih, [SEED_ANNOUNCE])]


def test_a_lost_job_result_does_not_escape_run_job(seeds: Seeds) -> None:
    seeds.hub.add_repo(REPO, {C1: {"config.json": CONFIG}}, {"main": C1})
    rig = seeds.start()
    rig.tracker.fail_once["job_result"] = HfbtError("TrackerUnreachable", "tracker down")

    rig.service.run_job(job("job-1", "main"))  # must not raise: the job is done, only its report was lost

    assert rig.tracker.results == [("job-1", ok(C1))]
    assert rig.sample("hfbt_seed_mirror_jobs_total", {"result": "done"}) == 1
    assert rig.sample("hfbt_seed_mirror_jobs_running") == 0


# --- the announce grant and the ticket key -------------------------------------------------------


def test_the_seed_renews_its_grant_before_it_expires_and_reannounces_every_torrent(
    seeds: Seeds, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(seed_service, "RENEW_TICK_S", 0.01)
    monkeypatch.setattr(seed_service, "retry_in", lambda failures: 0.05)
    monkeypatch.setattr(trackerclient, "RENEW_MIN_S", 0.05)
    seeds.hub.add_repo(REPO, {C1: three_files()}, {"main": C1})
    rig = seeds.start(register=False)
    minted: list[str] = []

    def grant() -> TicketGrant:  # a fresh seed ticket at every call, valid 0.3 s
        minted.append(f"seed-ticket-{len(minted):03d}-s3cret")
        return TicketGrant(minted[-1], f"{ANNOUNCE}/{minted[-1]}", time.time() + 0.3)

    rig.tracker.make_grant = grant
    rig.service._register()
    rig.service.run_job(job("job-1", "main"))
    ihs = sorted(rig.swarm.torrents)
    assert len(ihs) == 2
    assert all(rig.swarm.torrents[ih]["trackers"] == [f"{ANNOUNCE}/{minted[0]}?hfbt=seed"] for ih in ihs)

    stop = threading.Event()
    renewer = threading.Thread(target=rig.service._keep_announce_fresh, args=(stop,))
    renewer.start()
    try:
        deadline = time.monotonic() + 5
        while len(minted) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rig.tracker.fail_once["announce_url"] = HfbtError("TrackerUnreachable", "tracker down")
        while len(minted) < 4:  # one renewal fails, the seed tries again and goes on renewing
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        renewer.join(5)
    assert not renewer.is_alive()
    last = [f"{ANNOUNCE}/{minted[-1]}?hfbt=seed"]
    assert all(rig.swarm.torrents[ih]["trackers"] == last for ih in ihs)  # every torrent, the last grant
    for i in range(1, len(minted)):
        assert (
            sorted(
                ih for ih, urls in rig.swarm.tracker_updates if urls == [f"{ANNOUNCE}/{minted[i]}?hfbt=seed"]
            )
            == ihs
        )
    assert caplog.text.count("event=announce_renewal_failed") == 1
    assert not [t for t in minted if t in caplog.text]


def test_the_seed_learns_the_ticket_key_when_it_registers(seeds: Seeds) -> None:
    signer = TicketSigner(Ed25519PrivateKey.generate())
    rig = seeds.start(register=False)
    gate = rig.pieces.tickets
    ih = "ab" * 20
    valid = SimpleNamespace(headers={TICKET_HEADER: signer.mint("node1", ih, "node", 60)[0]})
    nothing = SimpleNamespace(headers={})
    refused = gate.refusal(nothing, ih)  # type: ignore[arg-type]
    assert refused is not None and refused.status_code == 503  # before: nobody
    rig.tracker.key = signer.public_key
    rig.service._register()
    assert gate.refusal(valid, ih) is None  # type: ignore[arg-type]
    assert gate.refusal(valid, "cd" * 20).status_code == 403  # type: ignore[arg-type,union-attr]
    assert gate.refusal(nothing, ih).status_code == 401  # type: ignore[arg-type,union-attr]
    # The tracker opened (say, redeployed without tokens): the next registration learns that too.
    rig.tracker.key = None
    rig.service._register()
    assert gate.refusal(nothing, ih) is None  # type: ignore[arg-type]
