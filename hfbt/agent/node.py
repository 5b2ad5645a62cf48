"""A node: pulls revisions from the swarm into the HF cache and keeps seeding what it published.

Used by the agent daemon (long-lived, one per node) and by `hfbt pull` when no agent runs (an
embedded, short-lived session). A Node gets its collaborators passed in: the libtorrent session, the
tracker client, the store of published blobs and a factory for the origin fallback's Hub client;
`open_node` is the one place that wires the real ones, so a test can drive a pull with fakes.

A pull (`_PullRun`) asks the tracker for the manifest, emitting "waiting" events while the tracker
mirrors the revision, then moves every selected file (`BlobPull`) on by one step per poll:

    WAITING_TORRENT  not in the cache, and the seed has not published the blob's torrent yet: the
                     manifest is asked for again (by commit) until it names one
    DOWNLOADING      the torrent is in the swarm, writing `blobs/<etag>.hfbt-partial`
    VERIFYING        all pieces verified by BitTorrent; on the finalize pool, the sha256 / git-sha1 is
                     checked against the manifest, the file renamed to `blobs/<etag>` and recorded
                     as published (this node seeds it from now on)
    DONE             under its final name and linked into snapshots/<commit>/
    FAILED           the bytes failed that check (`BlobPull.failure` says why): discarded, never under
                     the final name, logged as event=integrity_failure; the pull fails with "Integrity"

A file already in the cache, or published under another repo of it, goes straight to DONE; files of
the same content share one download. A pull with no progress for `stall_timeout` seconds fails, or,
with `fallback_origin` set, fetches every file not DONE yet from the origin (checked against the
manifest like any blob, then seeded). After the last file: refs/<revision>.

Tickets: on a closed tracker each torrent announces with a ticket for this node and that torrent,
valid minutes. `_Renewals` (one thread for every torrent) asks the tracker for a fresh one at about
half its life, with the Hub token of the pull that joined it (kept in memory only), and gives the
torrent the new announce URL; the piece fetcher reads the ticket through the same `TicketHolder`. A
refused renewal (the Hub token no longer reads the repo, the node was revoked) ends the renewals of
that torrent, and its seeding once it only seeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from hfbt import cache
from hfbt.agent.linger import Asking
from hfbt.agent.pieces import PieceFetcher, TicketHolder, piece_urls
from hfbt.agent.protocol import Emit, PullRequest
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError
from hfbt.hashing import git_blob_sha1, sha256_file
from hfbt.manifest import FileEntry, Manifest, is_commit, select_files
from hfbt.published import PublishedBlob, PublishedStore, forget_published
from hfbt.swarm import Swarm, SwarmError, TorrentStatus
from hfbt.trackerclient import (
    ManifestReply,
    TicketGrant,
    TrackerClient,
    TrackerRefused,
    grant_of_announce,
    retry_in,
)
from hfbt.wire import seed_hands_out

log = logging.getLogger("hfbt.node")

POLL_S = 0.3
REANNOUNCE_S = 3.0
PROGRESS_S = 0.5  # progress events, and the stall check that reads them, at most this often
# The renewal thread looks again at least this often (a clock that jumped, a grant added meanwhile).
RENEW_IDLE_S = 30.0


class OriginClient(Protocol):
    """What the origin fallback needs of a Hub client (hfbt.hub.client.HubClient)."""

    def download(self, repo_type: str, repo_id: str, commit: str, path: str) -> Path: ...


# (endpoint, the caller's Hub token, a scratch folder for the client's own cache: removed afterwards)
HubClientFactory = Callable[[str, str | None, Path], OriginClient]


def hub_client(endpoint: str, token: str | None, cache_dir: Path) -> OriginClient:
    """The real Hub client, imported only when a pull falls back to the origin: huggingface_hub is
    most of an embedded pull's start-up (≈ 0.2 s of ≈ 0.5 s of imports here)."""
    from hfbt.hub.client import HubClient

    return HubClient(endpoint, token, cache_dir)


@contextmanager
def open_node(cfg: NodeConfig) -> Iterator[Node]:
    """A node wired to its real collaborators: a libtorrent session (resume data in the state dir),
    the tracker over HTTP and the published store; all closed, node first, when the block ends."""
    with ExitStack() as stack:
        swarm = Swarm(cfg.swarm, resume_dir=cfg.state_dir / "resume")
        stack.callback(swarm.close)
        tracker = TrackerClient(cfg.tracker, cfg.node_token, node_name=cfg.node_name, zone=cfg.swarm.zone)
        stack.callback(tracker.close)
        node = Node(cfg, swarm, tracker, PublishedStore(cfg.state_dir / "published"))
        stack.callback(node.close)
        yield node


class BlobState(Enum):
    WAITING_TORRENT = "waiting_torrent"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


@dataclass
class BlobPull:
    """One selected file of a pull and where its blob stands (module docstring: the states)."""

    entry: FileEntry  # replaced when a manifest refresh brings the blob's info-hash
    state: BlobState = BlobState.WAITING_TORRENT
    failure: str | None = None  # FAILED: why (one sentence, as the pull's error says it)


@dataclass
class _Download:
    """A blob's torrent in the swarm, for one pull; the files of a revision with this etag share it."""

    entry: FileEntry
    info_hash: str
    torrent: bytes
    repo_id: str  # for the logs
    started: float = field(default_factory=time.monotonic)
    last_announce: float = field(default_factory=time.monotonic)
    finalizing: Future | None = None


class Node:
    def __init__(
        self,
        cfg: NodeConfig,
        swarm: Swarm,
        tracker: TrackerClient,
        published: PublishedStore,
        hub_client_factory: HubClientFactory = hub_client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """clock: wall-clock seconds, the time tickets expire in (tests pass their own)."""
        self.cfg = cfg
        self._swarm = swarm
        self._tracker = tracker
        self._published = published
        self._hub_client = hub_client_factory
        self._finalize = ThreadPoolExecutor(2, thread_name_prefix="finalize")
        self._etag_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._joined: dict[str, str] = {}  # etag -> info-hash of blobs whose swarm this node joined
        self._background = ThreadPoolExecutor(8, thread_name_prefix="fetch")
        self._fetches: dict[PullRequest, Future] = {}
        self._renewals = _Renewals(tracker, swarm, clock)
        self._verdicts: dict[str, _Verdict] = {}  # etag -> the final check of its latest download
        self._integrity_failures = 0

    def close(self) -> None:
        """Stop the node's own threads (a blob being verified is finished first); the collaborators
        are closed by whoever made them (open_node)."""
        self._background.shutdown(wait=False, cancel_futures=True)
        self._finalize.shutdown(wait=True)
        self._renewals.close()

    def reseed(self) -> int:
        """Seed every blob this node published before, if it is still in the cache (no re-hash).

        The stored torrents' tickets have expired meanwhile: each announces once the renewal thread
        has a fresh ticket for it (without a Hub token: a private repo's blob stays out of the swarm
        until a pull with a token that reads it joins it again)."""
        found = self._published.all()
        for rec, torrent in found:
            self._seed(rec.info_hash, torrent, Path(rec.path).parent)
        return len(found)

    # --- pull ------------------------------------------------------------------------------------

    def pull(self, req: PullRequest, emit: Emit = lambda _e: None) -> Path:
        """Pull the request's files into the cache; returns the snapshot folder."""
        req.validate()
        return _PullRun(self, req, emit).run()

    # --- what the agent's API, its status report and the shim read ---------------------------------

    @property
    def listen_port(self) -> int:
        return self._swarm.listen_port

    def manifest(
        self, repo_type: str, repo_id: str, revision: str, wait: float = 20.0, token: str | None = None
    ) -> ManifestReply:
        """The tracker's manifest of a revision; `wait`: how long the tracker may hold the call while it
        mirrors (the reply is still "pending" without a manifest after that)."""
        return self._tracker.manifest(repo_type, repo_id, revision, wait=wait, hf_token=token)

    def read_piece(self, info_hash: str, piece: int) -> bytes:
        """One verified piece of a joined blob, fetched first if need be; SwarmError if it never comes."""
        return self._swarm.read_piece(info_hash, piece)

    def read_ahead(self, info_hash: str, pieces: range) -> None:
        """Ask the swarm for the pieces a reader needs next, in reading order."""
        self._swarm.read_ahead(info_hash, pieces)

    def torrents(self) -> list[TorrentStatus]:
        """Every torrent of the session: downloads and seeds."""
        return self._swarm.statuses()

    def totals(self) -> dict[str, int]:
        """Payload bytes up and down since the session started, removed torrents included; and
        `integrity_failures`: downloads whose bytes failed the final sha256/git-sha1 check."""
        with self._guard:
            failures = self._integrity_failures
        return {**self._swarm.totals(), "integrity_failures": failures}

    def asking(self) -> Asking:
        """Who still wants this node's pieces (an embedded pull lingers while someone does)."""
        return Asking(self._swarm.interested_peers(), self._swarm.totals()["uploaded"])

    def published_blobs(self) -> list[PublishedBlob]:
        """The blobs this node verified and seeds, with the file each is seeded from."""
        return [rec for rec, _ in self._published.all()]

    # --- for readers that stream (the HF_ENDPOINT shim) --------------------------------------------

    def fetch(self, req: PullRequest) -> Future:
        """Pull in the background, once per identical request at a time; the future gives the snapshot."""
        with self._guard:
            fut = self._fetches.get(req)
            if fut is None or fut.done():
                fut = self._background.submit(self.pull, req)
                self._fetches[req] = fut
        return fut

    def joined(self, etag: str) -> str | None:
        """The info-hash of this blob's torrent once the node has joined its swarm."""
        with self._guard:
            return self._joined.get(etag)

    def blob_verified(self, etag: str, timeout: float = 0.0) -> bool | None:
        """Whether the latest download of this blob passed its final sha256/git-sha1 check.

        For a reader that streamed the blob from the swarm (pieces are SHA-1 checked one by one, the
        whole file only at the end): True once the blob is published under its final name; False if
        it failed the check (blob_failure says why: the bytes streamed are not the file, and were
        discarded); None if not decided within `timeout` seconds, or the node never joined it."""
        with self._guard:
            verdict = self._verdicts.get(etag)
        if verdict is None or not verdict.decided.wait(timeout):
            return None
        return verdict.failure is None

    def blob_failure(self, etag: str) -> str | None:
        """Why the latest download of this blob failed its final hash check (None: it did not)."""
        with self._guard:
            verdict = self._verdicts.get(etag)
        return verdict.failure if verdict is not None and verdict.decided.is_set() else None

    # --- one blob: the steps of a pull that touch the cache, the swarm and the published store ---

    def _publish_if_local(self, repo: Path, commit: str, f: FileEntry) -> bool:
        if cache.is_linked(repo, commit, f):
            return True
        if f.size == 0:
            cache.write_empty_blob(repo, f)
        elif not cache.has_blob(repo, f) and not self._copy_from_other_repo(repo, f):
            return False
        # Only hfbt and the Hub client write final blob names, both after a complete download.
        cache.link_snapshot(repo, commit, f)
        return True

    def _start(self, repo: Path, f: FileEntry, hf_token: str | None, repo_id: str) -> _Download:
        assert f.info_hash
        torrent = self._tracker.torrent(f.info_hash, hf_token=hf_token, pieces=seed_hands_out(f.size))
        urls, announce = piece_urls(torrent)
        # The torrent's announce URL carries this node's ticket for it (on a closed tracker).
        grant = grant_of_announce(announce, self._tracker.skew)
        with self._guard:
            verdict = self._verdicts.get(f.etag)
            if verdict is None or verdict.decided.is_set():
                self._verdicts[f.etag] = _Verdict()
        if not self._swarm.has(f.info_hash):
            cache.blobs_dir(repo).mkdir(parents=True, exist_ok=True)
            holder = _holder(grant, pieces=bool(urls))
            self._swarm.add(
                torrent,
                cache.blobs_dir(repo),
                file_name=cache.partial_name(f.etag),
                trackers=holder.trackers(),
            )
            self._renewals.track(f.info_hash, holder, grant, hf_token)
            log.info(
                "event=blob_join path=%s size=%d info_hash=%s piece_servers=%d",
                f.path, f.size, f.info_hash, len(urls),
            )  # fmt: skip
            if urls:
                PieceFetcher(self._swarm, f.info_hash, urls, holder).start()
        else:
            # Another pull holds it: this pull's Hub token (just accepted by the tracker) renews it now.
            self._renewals.refresh(f.info_hash, grant, hf_token)
        with self._guard:
            self._joined[f.etag] = f.info_hash
        return _Download(f, f.info_hash, torrent, repo_id)

    def _seed(self, info_hash: str, torrent: bytes, folder: Path, hf_token: str | None = None) -> None:
        """Seed a verified blob from `folder`, announcing with the ticket the node holds for it; without
        one (a restart, gc moving the blob) once the renewal thread has asked the tracker for one."""
        # Never the torrent's own announce URL: its ticket may have expired long ago.
        self._swarm.add(torrent, folder, seeding=True, trackers=self._renewals.trackers(info_hash))
        self._renewals.seeding(info_hash, hf_token)

    def _downloaded(self, d: _Download) -> bool:
        """Whether BitTorrent has verified every piece; reannounces a torrent that has no peer yet."""
        try:
            if self._swarm.wait_finished(d.info_hash, timeout=0):
                return True
            st = self._swarm.status(d.info_hash)
        except SwarmError as e:
            raise HfbtError("SwarmError", f"{d.entry.path}: {e}") from None
        now = time.monotonic()
        if st.peers == 0 and now - d.last_announce > REANNOUNCE_S:
            self._swarm.reannounce(d.info_hash)
            d.last_announce = now
        return False

    def _download_progress(self, d: _Download) -> tuple[int, int]:
        """(bytes verified, download rate) of a blob's torrent; nothing once it left the session."""
        try:
            st = self._swarm.status(d.info_hash)
        except SwarmError:
            return 0, 0
        return st.done, st.download_rate

    def _verify_and_publish(self, repo: Path, d: _Download) -> None:
        """The finalize pool's part: hash check, rename to the final name, published record."""
        f = d.entry
        if self._copy_from_other_repo(repo, f):
            self._decide(f.etag, None)
            return
        with self._etag_lock(f.etag):
            final = cache.blob_path(repo, f.etag)
            partial = cache.blobs_dir(repo) / cache.partial_name(f.etag)
            if not partial.exists() and final.is_file() and final.stat().st_size == f.size:
                self._decide(f.etag, None)
                return  # another pull of the same blob published it
            self._swarm.flush(d.info_hash)
            if not cache.verify_blob(partial, f):
                self._integrity_failed(d.repo_id, f, d.info_hash, partial, "swarm")
                self._swarm.remove(d.info_hash)
                self._renewals.forget(d.info_hash)
                partial.unlink(missing_ok=True)
                message = f"{f.path}: downloaded bytes do not match {f.etag}; discarded"
                self._decide(f.etag, message)
                raise HfbtError("Integrity", message)
            try:
                self._swarm.rename(d.info_hash, f.etag)
                self._renewals.seeding(d.info_hash)
            except SwarmError:
                if not final.exists():
                    raise
                # A Hub client sharing this cache published the blob first. Ours is verified, so it
                # replaces theirs atomically (same bytes if theirs is right) and we seed from it.
                self._swarm.remove(d.info_hash)
                os.replace(partial, final)
                self._seed(d.info_hash, d.torrent, final.parent)
            self._published.put(PublishedBlob(f.etag, d.info_hash, f.size, str(final)), d.torrent)
            self._decide(f.etag, None)
            log.info(
                "event=blob_published path=%s size=%d seconds=%.1f",
                f.path,
                f.size,
                time.monotonic() - d.started,
            )

    def _from_origin(
        self, repo: Path, manifest: Manifest, f: FileEntry, token: str | None, stalled: _Download | None
    ) -> None:
        """The swarm could not deliver this file: fetch it from the origin, check it, publish and seed it."""
        log.warning(
            "event=origin_fallback path=%s size=%d origin=%s", f.path, f.size, self.cfg.fallback_origin
        )
        scratch = self.cfg.state_dir / "origin-fallback" / uuid.uuid4().hex
        try:
            with self._etag_lock(f.etag):
                if stalled is not None:
                    self._swarm.remove(stalled.info_hash)
                    (cache.blobs_dir(repo) / cache.partial_name(f.etag)).unlink(missing_ok=True)
                if not cache.has_blob(repo, f):
                    origin = self._hub_client(self.cfg.fallback_origin or "", token, scratch)
                    got = origin.download(manifest.repo_type, manifest.repo_id, manifest.commit, f.path)
                    if not cache.verify_blob(got, f):
                        self._integrity_failed(manifest.repo_id, f, f.info_hash, got, "origin")
                        raise HfbtError("Integrity", f"{f.path}: the origin's bytes do not match {f.etag}")
                    cache.import_blob(repo, f, got)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        cache.link_snapshot(repo, manifest.commit, f)
        self._decide(f.etag, None)
        if f.info_hash and not self._swarm.has(f.info_hash):
            # Seed what we fetched: the next node gets it from us, not from the origin.
            torrent = stalled.torrent if stalled else self._tracker.torrent(f.info_hash, hf_token=token)
            final = cache.blob_path(repo, f.etag)
            self._seed(f.info_hash, torrent, final.parent, token)
            self._published.put(PublishedBlob(f.etag, f.info_hash, f.size, str(final)), torrent)

    def _copy_from_other_repo(self, repo: Path, f: FileEntry) -> bool:
        """The same blob published under another repo of this cache (shared files): link it in.

        One torrent per info-hash per session means the swarm cannot fetch it a second time.
        """
        found = self._published.get(f.etag)
        if found is None or Path(found[0].path).parent == cache.blobs_dir(repo):
            return False
        with self._etag_lock(f.etag):
            cache.import_blob(repo, f, Path(found[0].path))
        return True

    def _etag_lock(self, etag: str) -> threading.Lock:
        with self._guard:
            return self._etag_locks.setdefault(etag, threading.Lock())

    # --- integrity -------------------------------------------------------------------------------

    def _integrity_failed(
        self, repo_id: str, f: FileEntry, info_hash: str | None, got: Path, source: str
    ) -> None:
        """One loud line and the counter: bytes that passed BitTorrent's SHA-1s (or came from the
        origin) and still are not the file the manifest names. Hashed again only here, on failure."""
        with self._guard:
            self._integrity_failures += 1
        expected = f.sha256 or "none"
        also = "" if f.sha256 else f" expected_git_sha1={f.etag}"
        log.error(
            "event=integrity_failure repo=%s path=%s info_hash=%s expected_sha256=%s%s got=%s source=%s",
            repo_id, f.path, info_hash or "none", expected, also, _observed(got, f), source,
        )  # fmt: skip

    def _decide(self, etag: str, failure: str | None) -> None:
        with self._guard:
            verdict = self._verdicts.setdefault(etag, _Verdict())
        verdict.failure = failure
        verdict.decided.set()

    # --- gc --------------------------------------------------------------------------------------

    def forget(self, paths: list[str]) -> dict:
        """`hfbt gc` is about to delete these blob files: stop seeding them, or seed a surviving copy.

        The published record goes too (or moves to the copy), so a restart does not re-seed them.
        """
        stopped = moved = 0
        # No lock here: gc holds the node's maintenance lock, so one forget runs at a time.
        for change in forget_published(self._published, paths, self.cfg.cache_dir):
            self._swarm.remove(change.old.info_hash)
            if change.new is None:
                self._renewals.forget(change.old.info_hash)
                stopped += 1
                log.info("event=blob_forgotten path=%s", change.old.path)
                continue
            self._seed(change.new.info_hash, change.torrent, Path(change.new.path).parent)
            moved += 1
            log.info("event=blob_moved from=%s to=%s", change.old.path, change.new.path)
        return {"stopped": stopped, "moved": moved}


class _PullRun:
    """One pull: the manifest it works from, the state of each selected file, progress and stall."""

    def __init__(self, node: Node, req: PullRequest, emit: Emit) -> None:
        self.node = node
        self.req = req
        self.emit = emit
        self.deadline = None if req.timeout is None else time.monotonic() + req.timeout
        self.wait = min(20.0, node.cfg.stall_timeout or 20.0)  # the tracker holds the call while it mirrors
        self.repo = cache.repo_dir(node.cfg.cache_dir, req.repo_type, req.repo_id)
        self.manifest: Manifest | None = None
        self.blobs: list[BlobPull] = []  # the selected files, in manifest order
        self._by_path: dict[str, BlobPull] = {}
        self.downloads: dict[str, _Download] = {}  # by etag
        self.stall = _StallWatch(node.cfg.stall_timeout)
        self.last_emit = 0.0

    def run(self) -> Path:
        manifest = self._wait_for_manifest(self._ask(self.req.revision, self.wait))
        while True:
            self._select(manifest)
            self._step()
            if all(b.state is BlobState.DONE for b in self.blobs):
                break
            if (stall := self._report()) is not None:
                if not self.node.cfg.fallback_origin:
                    raise stall
                self._fall_back()
            _check_deadline(self.deadline, self.req)
            time.sleep(POLL_S)
            if self._torrents_missing():
                # The seed publishes file by file: look again for the torrents it has added since.
                # By commit: asking by branch again could start a new resolve job on the tracker.
                manifest = self._wait_for_manifest(self._ask(manifest.commit, wait=0))
        return self._finish()

    def _ask(self, revision: str, wait: float) -> ManifestReply:
        return self.node.manifest(self.req.repo_type, self.req.repo_id, revision, wait, self.req.token)

    def _wait_for_manifest(self, reply: ManifestReply) -> Manifest:
        """The reply's manifest, or (while the tracker mirrors the revision) the one it sends later."""
        while reply.manifest is None:
            detail = _waiting_detail(reply.job)
            self.emit({"event": "waiting", "detail": detail})
            _check_deadline(self.deadline, self.req)
            if (seconds := self.stall.stalled(None)) is not None:
                # No fallback here: without a manifest there is no file to fetch from the origin.
                raise _stalled(seconds, f"{self.req.repo_id}@{self.req.revision}: {detail}")
            reply = self._ask(self.req.revision, self.wait)
        return reply.manifest

    def _select(self, manifest: Manifest) -> None:
        """Work from this manifest: the files the filters select, each keeping its state on a refresh."""
        if manifest is self.manifest:
            return
        selected = select_files(manifest.files, self.req.include, self.req.exclude)
        if not selected:
            raise HfbtError(
                "EntryNotFound", f"no file of {self.req.repo_id}@{manifest.commit} matches the filters"
            )
        blobs = []
        for f in selected:
            blob = self._by_path.setdefault(f.path, BlobPull(f))
            blob.entry = f  # a refresh brings the info-hashes the seed has published since
            blobs.append(blob)
        self.manifest, self.blobs = manifest, blobs

    def _step(self) -> None:
        """One poll's worth for every file: join the torrents that can be joined, then advance them."""
        for blob in self.blobs:
            if blob.state is BlobState.WAITING_TORRENT:
                self._join(blob)
        for blob in self.blobs:
            if blob.state in (BlobState.DOWNLOADING, BlobState.VERIFYING):
                self._advance(blob)

    def _join(self, blob: BlobPull) -> None:
        """WAITING_TORRENT → DONE if the cache has the blob, → DOWNLOADING once it has a torrent."""
        f = blob.entry
        if f.etag in self.downloads:  # another file of the revision, same content: one download
            blob.state = BlobState.DOWNLOADING
        elif self.node._publish_if_local(self.repo, self._commit, f):
            blob.state = BlobState.DONE
        elif f.info_hash:
            self.downloads[f.etag] = self.node._start(self.repo, f, self.req.token, self.req.repo_id)
            blob.state = BlobState.DOWNLOADING

    def _advance(self, blob: BlobPull) -> None:
        """DOWNLOADING → VERIFYING once every piece is in, → DONE once verified and renamed."""
        d = self.downloads[blob.entry.etag]
        if d.finalizing is None and self.node._downloaded(d):
            d.finalizing = self.node._finalize.submit(self.node._verify_and_publish, self.repo, d)
        if d.finalizing is None:
            return
        blob.state = BlobState.VERIFYING
        if d.finalizing.done():
            try:
                d.finalizing.result()
            except Exception as e:  # the blob's integrity or rename error: the pull's error
                blob.state, blob.failure = BlobState.FAILED, str(e)
                raise
            cache.link_snapshot(self.repo, self._commit, blob.entry)
            blob.state = BlobState.DONE

    def _report(self) -> HfbtError | None:
        """Emit progress (at most every PROGRESS_S); returns the Stalled error once nothing moved for
        stall_timeout, for the caller to raise or to fall back on."""
        now = time.monotonic()
        if now - self.last_emit < PROGRESS_S:
            return None
        progress = self._progress()
        self.emit(progress)
        self.last_emit = now
        seconds = self.stall.stalled((progress["files_done"], progress["done"]))
        if seconds is None:
            return None
        missing = [b.entry.path for b in self.blobs if b.state is not BlobState.DONE]
        names = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return _stalled(
            seconds,
            f"{self.req.repo_id}@{self._commit[:12]}: no peer sent data for {names}"
            " (is a seed running, and can it reach the origin?)",
        )

    def _fall_back(self) -> None:
        """Every file not DONE → DONE from the origin (the stalled ones and the rest alike)."""
        assert self.manifest is not None
        for blob in self.blobs:
            if blob.state is not BlobState.DONE:
                stalled = self.downloads.pop(blob.entry.etag, None)
                self.node._from_origin(self.repo, self.manifest, blob.entry, self.req.token, stalled)
                blob.state = BlobState.DONE

    def _torrents_missing(self) -> bool:
        """Whether a file still waits for a torrent the seed has yet to publish."""
        assert self.manifest is not None
        return not self.manifest.complete and any(
            not b.entry.info_hash for b in self.blobs if b.state is not BlobState.DONE
        )

    def _finish(self) -> Path:
        if not is_commit(self.req.revision):
            cache.write_ref(self.repo, self.req.revision, self._commit)
        snap = cache.snapshot_dir(self.repo, self._commit)
        snap.mkdir(parents=True, exist_ok=True)
        self.emit(self._progress())
        return snap

    @property
    def _commit(self) -> str:
        assert self.manifest is not None
        return self.manifest.commit

    def _progress(self) -> dict:
        have = rate = 0
        for blob in self.blobs:
            if blob.state is BlobState.DONE:
                have += blob.entry.size
            elif (d := self.downloads.get(blob.entry.etag)) is not None:
                done, down = self.node._download_progress(d)
                have += done
                rate += down
        return {
            "event": "progress",
            "done": have,
            "total": sum(b.entry.size for b in self.blobs),
            "files_done": sum(b.state is BlobState.DONE for b in self.blobs),
            "files_total": len(self.blobs),
            "rate": rate,
        }


@dataclass
class _Verdict:
    """The final hash check of a blob's latest download, for readers that streamed it (blob_verified)."""

    decided: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None


def _observed(path: Path, f: FileEntry) -> str:
    """What the bytes at `path` hash to, in the manifest's terms: sha256 for LFS files, else git sha1."""
    try:
        size = path.stat().st_size
        if size != f.size:
            return f"size:{size}"  # the check stopped at the size: no hash to show
        return sha256_file(path) if f.sha256 else git_blob_sha1(path)
    except OSError as e:
        return f"unreadable:{type(e).__name__}"


def _holder(grant: TicketGrant | None, pieces: bool) -> TicketHolder:
    if grant is None:
        return TicketHolder(None, None, pieces)
    return TicketHolder(grant.announce, grant.ticket, pieces)


@dataclass
class _Grant:
    """One torrent's ticket as the renewal thread keeps it. In memory only: the Hub token it renews
    with is never written or logged."""

    holder: TicketHolder
    hf_token: str | None = field(repr=False)
    due: float | None  # when to renew (the node's clock); None: nothing to renew (open, or refused)
    seeding: bool = False  # complete and published: a refusal ends its seeding too
    refused: bool = False
    failures: int = 0


class _Renewals:
    """Every torrent's ticket, renewed before it expires by one thread for all (started on first use).

    A renewal asks the tracker (`TrackerClient.ticket`, with the Hub token the pull came with) at about
    half the ticket's remaining life and gives the torrent the new announce URL. Refused (401/403):
    one `event=ticket_refused` line and no more renewals; a torrent that only seeds leaves the swarm
    (its file stays). Anything else: tried again after 1, 2, 4 ... s.
    """

    def __init__(self, tracker: TrackerClient, swarm: Swarm, clock: Callable[[], float]) -> None:
        self._tracker = tracker
        self._swarm = swarm
        self._clock = clock
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the node tells it ---

    def track(self, ih: str, holder: TicketHolder, grant: TicketGrant | None, hf_token: str | None) -> None:
        """A torrent just joined, announcing with `holder`'s trackers."""
        with self._lock:
            self._grants[ih] = _Grant(holder, hf_token, self._due(grant))
        self._kick()

    def refresh(self, ih: str, grant: TicketGrant | None, hf_token: str | None) -> None:
        """A pull joined a torrent the node already holds, with a torrent (and ticket) just granted."""
        with self._lock:
            g = self._grants.get(ih)
            if g is None:  # held outside the renewals (should not happen): from now on inside
                g = self._grants[ih] = _Grant(_holder(grant, pieces=False), hf_token, None)
            elif hf_token:
                g.hf_token = hf_token  # the latest pull's: the one most likely to read the repo still
            if grant is None or grant.ticket is None or not (g.refused or g.due is None):
                return
            # Refused before, granted again now (a new Hub token): renew with this grant.
            trackers = g.holder.renewed(grant.announce, grant.ticket)
            g.refused, g.failures, g.due = False, 0, self._due(grant)
        self._replace(ih, trackers)
        self._kick()

    def seeding(self, ih: str, hf_token: str | None = None) -> None:
        """The torrent is complete and seeds; one the node holds no grant for gets one at once."""
        with self._lock:
            g = self._grants.get(ih)
            if g is None:
                g = self._grants[ih] = _Grant(TicketHolder(None, None, False), hf_token, self._clock())
            g.seeding = True
            refused = g.refused
            if refused:
                del self._grants[ih]
        if refused:
            # Refused while it downloaded: it may keep the bytes, not go on sharing them.
            log.info("event=seed_stopped info_hash=%s why=ticket_refused", ih)
            self._swarm.remove(ih)
        self._kick()

    def trackers(self, ih: str) -> list[str]:
        with self._lock:
            g = self._grants.get(ih)
        return g.holder.trackers() if g is not None else []

    def forget(self, ih: str) -> None:
        """The torrent left the swarm."""
        with self._lock:
            self._grants.pop(ih, None)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the thread ---

    def _due(self, grant: TicketGrant | None) -> float | None:
        if grant is None or grant.ticket is None:
            return None  # an open tracker: the announce URL never expires
        now = self._clock()
        if grant.expires is None:
            return now  # a ticket we cannot read the expiry of: ask for one we can
        return now + (grant.renew_in(now) or 0.0)

    def _kick(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="ticket-renewals", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            now = self._clock()
            with self._lock:
                due = [(ih, g) for ih, g in self._grants.items() if g.due is not None and g.due <= now]
                upcoming = [g.due for g in self._grants.values() if g.due is not None and g.due > now]
            for ih, g in due:
                if self._stop.is_set():
                    return
                try:
                    self._renew(ih, g)
                except Exception:  # a bug must not end every renewal: this torrent is tried later
                    log.exception("event=ticket_renewal_crashed info_hash=%s", ih)
                    with self._lock:
                        g.failures += 1
                        g.due = self._clock() + retry_in(g.failures)
            if due:
                continue  # renewals took time: look again before sleeping
            wait = min(upcoming, default=now + RENEW_IDLE_S) - now
            self._wake.wait(min(max(wait, 0.0), RENEW_IDLE_S))

    def _renew(self, ih: str, g: _Grant) -> None:
        try:
            grant = self._tracker.ticket(ih, hf_token=g.hf_token)
        except TrackerRefused as e:
            self._refused(ih, g, e)
            return
        except HfbtError as e:
            with self._lock:
                g.failures += 1
                g.due = self._clock() + retry_in(g.failures)
            log.warning(
                "event=ticket_renewal_failed info_hash=%s code=%s error=%r failures=%d retry_in=%.0f",
                ih, e.code, e.message, g.failures, retry_in(g.failures),
            )  # fmt: skip
            return
        with self._lock:
            if self._grants.get(ih) is not g:
                return  # forgotten (or joined afresh) while we asked
            trackers = g.holder.renewed(grant.announce, grant.ticket)
            g.failures, g.due = 0, self._due(grant)
        log.debug("event=ticket_renewed info_hash=%s", ih)
        self._replace(ih, trackers)

    def _refused(self, ih: str, g: _Grant, e: TrackerRefused) -> None:
        with self._lock:
            if self._grants.get(ih) is not g:
                return
            g.refused, g.due = True, None
            leave = g.seeding
            if leave:
                del self._grants[ih]
        log.warning(
            "event=ticket_refused info_hash=%s reason=%s status=%d detail=%r left_swarm=%s",
            ih, e.code, e.status, e.message, "yes" if leave else "no",
        )  # fmt: skip
        if leave:
            self._swarm.remove(ih)  # the file stays in the cache: only the sharing ends

    def _replace(self, ih: str, trackers: list[str]) -> None:
        try:
            self._swarm.replace_trackers(ih, trackers)
        except SwarmError:
            self.forget(ih)  # it left the swarm meanwhile


class _StallWatch:
    """Tells when a pull has made no progress for `limit` seconds, instead of letting it wait forever."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._mark: object = None
        self._since = time.monotonic()

    def stalled(self, mark: object) -> float | None:
        """Seconds without a new `mark`, once that is over the limit (0: never); else None."""
        now = time.monotonic()
        if mark != self._mark:
            self._mark, self._since = mark, now
        elif self.limit and now - self._since > self.limit:
            return now - self._since
        return None


def _stalled(seconds: float, why: str) -> HfbtError:
    return HfbtError("Stalled", f"no progress for {seconds:.0f}s: {why}")


def _waiting_detail(job: dict | None) -> str:
    if not job:
        return "waiting for the tracker"
    if job.get("seeds") == 0:
        return "no seed is registered with the tracker yet"
    return f"mirror job {job.get('state', 'queued')}"


def _check_deadline(deadline: float | None, req: PullRequest) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise HfbtError("Timeout", f"{req.repo_id}@{req.revision} did not complete within {req.timeout:.0f}s")
