"""A node: pulls revisions from the swarm into the HF cache and keeps seeding what it published.

Used by the agent daemon (long-lived, one per node) and by `hfbt pull` when no agent runs (an
embedded, short-lived session). A blob goes: torrent added under `<etag>.hfbt-partial` → all pieces
verified by BitTorrent → sha256 / git-sha1 checked against the manifest → renamed to `blobs/<etag>`
→ snapshot symlink → (after every selected file) refs/<revision>.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hfbt import cache
from hfbt.agent.pieces import PieceFetcher, piece_urls
from hfbt.agent.protocol import Emit, PullRequest
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError
from hfbt.hub.client import HubClient
from hfbt.manifest import FileEntry, Manifest, is_commit, select_files
from hfbt.published import PublishedBlob, PublishedStore, forget_published
from hfbt.swarm import Swarm, SwarmError
from hfbt.trackerclient import TrackerClient
from hfbt.wire import seed_hands_out

log = logging.getLogger("hfbt.node")

POLL_S = 0.3
REANNOUNCE_S = 3.0


@dataclass
class _Download:
    entry: FileEntry
    info_hash: str
    torrent: bytes
    started: float = field(default_factory=time.monotonic)
    last_announce: float = field(default_factory=time.monotonic)
    finalizing: Future | None = None


class Node:
    def __init__(self, cfg: NodeConfig, swarm: Swarm) -> None:
        self.cfg = cfg
        self.swarm = swarm
        self.tracker = TrackerClient(cfg.tracker, cfg.auth_token, node_name=cfg.node_name)
        self.published = PublishedStore(cfg.state_dir / "published")
        self._finalize = ThreadPoolExecutor(2, thread_name_prefix="finalize")
        self._etag_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._joined: dict[str, str] = {}  # etag -> info-hash of blobs whose swarm this node joined
        self._background = ThreadPoolExecutor(8, thread_name_prefix="fetch")
        self._fetches: dict[PullRequest, Future] = {}

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        self._finalize.shutdown(wait=True)
        self.tracker.close()

    def reseed(self) -> int:
        """Seed every blob this node published before, if it is still in the cache (no re-hash)."""
        found = self.published.all()
        for rec, torrent in found:
            self.swarm.add(torrent, Path(rec.path).parent, seeding=True)
        return len(found)

    # --- pull ------------------------------------------------------------------------------------

    def pull(self, req: PullRequest, emit: Emit = lambda _e: None) -> Path:
        req.validate()
        deadline = None if req.timeout is None else time.monotonic() + req.timeout
        wait = min(20.0, self.cfg.stall_timeout or 20.0)  # the tracker holds the call while it mirrors
        reply = self.tracker.manifest(req.repo_type, req.repo_id, req.revision, wait, req.token)
        repo = cache.repo_dir(self.cfg.cache_dir, req.repo_type, req.repo_id)
        downloads: dict[str, _Download] = {}  # by etag
        done: set[str] = set()  # paths linked into the snapshot
        last_emit = 0.0
        stall = _StallWatch(self.cfg.stall_timeout)
        while True:
            if reply.manifest is None:
                detail = _waiting_detail(reply.job)
                emit({"event": "waiting", "detail": detail})
                _check_deadline(deadline, req)
                stall.check(None, f"{req.repo_id}@{req.revision}: {detail}")
                reply = self.tracker.manifest(req.repo_type, req.repo_id, req.revision, wait, req.token)
                continue
            manifest = reply.manifest
            selected = select_files(manifest.files, req.include, req.exclude)
            if not selected:
                raise HfbtError(
                    "EntryNotFound", f"no file of {req.repo_id}@{manifest.commit} matches the filters"
                )
            for f in selected:
                if f.path in done or f.etag in downloads:
                    continue
                if self._publish_if_local(repo, manifest.commit, f):
                    done.add(f.path)
                elif f.info_hash and f.etag not in downloads:
                    downloads[f.etag] = self._start(repo, f, req.token)
            for f in selected:
                if f.path in done or f.etag not in downloads:
                    continue
                d = downloads[f.etag]
                if d.finalizing is None and self._finished(d):
                    d.finalizing = self._finalize.submit(self._finish, repo, d)
                if d.finalizing is not None and d.finalizing.done():
                    d.finalizing.result()  # raises the blob's integrity/rename error
                    cache.link_snapshot(repo, manifest.commit, f)
                    done.add(f.path)
            now = time.monotonic()
            if len(done) == len(selected):
                break
            if now - last_emit >= 0.5:
                progress = self._progress(selected, done, downloads)
                emit(progress)
                last_emit = now
                missing = [f.path for f in selected if f.path not in done]
                names = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                try:
                    stall.check(
                        (progress["files_done"], progress["done"]),
                        f"{req.repo_id}@{manifest.commit[:12]}: no peer sent data for {names}"
                        " (is a seed running, and can it reach the origin?)",
                    )
                except HfbtError:
                    if not self.cfg.fallback_origin:
                        raise
                    for f in selected:
                        if f.path not in done:
                            self._from_origin(repo, manifest, f, req.token, downloads.pop(f.etag, None))
                            done.add(f.path)
            _check_deadline(deadline, req)
            time.sleep(POLL_S)
            if not manifest.complete and any(not f.info_hash for f in selected if f.path not in done):
                # The seed publishes file by file: look again for the torrents it has added since.
                # By commit: asking by branch again could start a new resolve job on the tracker.
                reply = self.tracker.manifest(
                    req.repo_type, req.repo_id, manifest.commit, wait=0, hf_token=req.token
                )
        if not is_commit(req.revision):
            cache.write_ref(repo, req.revision, manifest.commit)
        snap = cache.snapshot_dir(repo, manifest.commit)
        snap.mkdir(parents=True, exist_ok=True)
        emit(self._progress(selected, done, downloads))
        return snap

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

    def _start(self, repo: Path, f: FileEntry, hf_token: str | None) -> _Download:
        assert f.info_hash
        torrent = self.tracker.torrent(f.info_hash, hf_token=hf_token, pieces=seed_hands_out(f.size))
        if not self.swarm.has(f.info_hash):
            cache.blobs_dir(repo).mkdir(parents=True, exist_ok=True)
            self.swarm.add(torrent, cache.blobs_dir(repo), file_name=cache.partial_name(f.etag))
            urls, plain = piece_urls(torrent)
            log.info(
                "event=blob_join path=%s size=%d info_hash=%s piece_servers=%d",
                f.path, f.size, f.info_hash, len(urls),
            )  # fmt: skip
            if urls:
                PieceFetcher(self.swarm, f.info_hash, urls, plain, self.cfg.auth_token).start()
        with self._guard:
            self._joined[f.etag] = f.info_hash
        return _Download(f, f.info_hash, torrent)

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
                    self.swarm.remove(stalled.info_hash)
                    (cache.blobs_dir(repo) / cache.partial_name(f.etag)).unlink(missing_ok=True)
                if not cache.has_blob(repo, f):
                    origin = HubClient(self.cfg.fallback_origin or "", token, scratch)
                    got = origin.download(manifest.repo_type, manifest.repo_id, manifest.commit, f.path)
                    if not cache.verify_blob(got, f):
                        raise HfbtError("Integrity", f"{f.path}: the origin's bytes do not match {f.etag}")
                    cache.import_blob(repo, f, got)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        cache.link_snapshot(repo, manifest.commit, f)
        if f.info_hash and not self.swarm.has(f.info_hash):
            # Seed what we fetched: the next node gets it from us, not from the origin.
            torrent = stalled.torrent if stalled else self.tracker.torrent(f.info_hash, hf_token=token)
            final = cache.blob_path(repo, f.etag)
            self.swarm.add(torrent, final.parent, seeding=True)
            self.published.put(PublishedBlob(f.etag, f.info_hash, f.size, str(final)), torrent)

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

    def _finished(self, d: _Download) -> bool:
        try:
            if self.swarm.wait_finished(d.info_hash, timeout=0):
                return True
            st = self.swarm.status(d.info_hash)
        except SwarmError as e:
            raise HfbtError("SwarmError", f"{d.entry.path}: {e}") from None
        now = time.monotonic()
        if st.peers == 0 and now - d.last_announce > REANNOUNCE_S:
            self.swarm.reannounce(d.info_hash)
            d.last_announce = now
        return False

    def _copy_from_other_repo(self, repo: Path, f: FileEntry) -> bool:
        """The same blob published under another repo of this cache (shared files): link it in.

        One torrent per info-hash per session means the swarm cannot fetch it a second time.
        """
        found = self.published.get(f.etag)
        if found is None or Path(found[0].path).parent == cache.blobs_dir(repo):
            return False
        with self._etag_lock(f.etag):
            cache.import_blob(repo, f, Path(found[0].path))
        return True

    def _finish(self, repo: Path, d: _Download) -> None:
        f = d.entry
        if self._copy_from_other_repo(repo, f):
            return
        with self._etag_lock(f.etag):
            final = cache.blob_path(repo, f.etag)
            partial = cache.blobs_dir(repo) / cache.partial_name(f.etag)
            if not partial.exists() and final.is_file() and final.stat().st_size == f.size:
                return  # another pull of the same blob published it
            self.swarm.flush(d.info_hash)
            if not cache.verify_blob(partial, f):
                self.swarm.remove(d.info_hash)
                partial.unlink(missing_ok=True)
                raise HfbtError("Integrity", f"{f.path}: downloaded bytes do not match {f.etag}; discarded")
            try:
                self.swarm.rename(d.info_hash, f.etag)
            except SwarmError:
                if not final.exists():
                    raise
                # A Hub client sharing this cache published the blob first. Ours is verified, so it
                # replaces theirs atomically (same bytes if theirs is right) and we seed from it.
                self.swarm.remove(d.info_hash)
                os.replace(partial, final)
                self.swarm.add(d.torrent, final.parent, seeding=True)
            self.published.put(PublishedBlob(f.etag, d.info_hash, f.size, str(final)), d.torrent)
            log.info(
                "event=blob_published path=%s size=%d seconds=%.1f",
                f.path,
                f.size,
                time.monotonic() - d.started,
            )

    def _etag_lock(self, etag: str) -> threading.Lock:
        with self._guard:
            return self._etag_locks.setdefault(etag, threading.Lock())

    def _progress(self, selected: list[FileEntry], done: set[str], downloads: dict[str, _Download]) -> dict:
        total = sum(f.size for f in selected)
        have = 0
        rate = 0
        for f in selected:
            if f.path in done:
                have += f.size
            elif (d := downloads.get(f.etag)) is not None:
                try:
                    st = self.swarm.status(d.info_hash)
                except SwarmError:
                    continue
                have += st.done
                rate += st.download_rate
        return {
            "event": "progress",
            "done": have,
            "total": total,
            "files_done": len(done),
            "files_total": len(selected),
            "rate": rate,
        }

    # --- gc --------------------------------------------------------------------------------------

    def forget(self, paths: list[str]) -> dict:
        """`hfbt gc` is about to delete these blob files: stop seeding them, or seed a surviving copy.

        The published record goes too (or moves to the copy), so a restart does not re-seed them.
        """
        stopped = moved = 0
        # No lock here: gc holds the node's maintenance lock, so one forget runs at a time.
        for change in forget_published(self.published, paths, self.cfg.cache_dir):
            self.swarm.remove(change.old.info_hash)
            if change.new is None:
                stopped += 1
                log.info("event=blob_forgotten path=%s", change.old.path)
                continue
            self.swarm.add(change.torrent, Path(change.new.path).parent, seeding=True)
            moved += 1
            log.info("event=blob_moved from=%s to=%s", change.old.path, change.new.path)
        return {"stopped": stopped, "moved": moved}


class _StallWatch:
    """Fails a pull that has made no progress for `limit` seconds, instead of waiting forever."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._mark: object = None
        self._since = time.monotonic()

    def check(self, mark: object, why: str) -> None:
        now = time.monotonic()
        if mark != self._mark:
            self._mark, self._since = mark, now
        elif self.limit and now - self._since > self.limit:
            raise HfbtError("Stalled", f"no progress for {now - self._since:.0f}s: {why}")


def _waiting_detail(job: dict | None) -> str:
    if not job:
        return "waiting for the tracker"
    if job.get("seeds") == 0:
        return "no seed is registered with the tracker yet"
    return f"mirror job {job.get('state', 'queued')}"


def _check_deadline(deadline: float | None, req: PullRequest) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise HfbtError("Timeout", f"{req.repo_id}@{req.revision} did not complete within {req.timeout:.0f}s")
