"""Mirror jobs: resolve a revision on the origin, fetch each file once, publish its torrent, seed it.

Each file's torrent is registered as soon as that file is mirrored, so nodes start on shard 1
while shard 2 is still coming from the origin.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hfbt.cache import verify_blob
from hfbt.config import SeedConfig
from hfbt.errors import HfbtError
from hfbt.hub import Origin
from hfbt.manifest import FileEntry, Manifest, ManifestError
from hfbt.seed.store import SeededBlob, SeedStore
from hfbt.swarm import Swarm
from hfbt.torrents import make_blob_torrent
from hfbt.trackerclient import TrackerClient

log = logging.getLogger("hfbt.seed")


class SeedService:
    def __init__(self, cfg: SeedConfig) -> None:
        self.cfg = cfg
        self.seed_id = cfg.seed_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = TrackerClient(cfg.tracker, cfg.auth_token, node_name=f"seed-{self.seed_id}")
        self.origin = Origin(cfg.origin, cfg.token, cfg.data_dir / "hub")
        self.store = SeedStore(cfg.data_dir / "torrents")
        self.swarm = Swarm(cfg.swarm)
        self._etag_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._files = ThreadPoolExecutor(max(1, cfg.parallel_files), thread_name_prefix="seed-file")

    # --- lifecycle ---

    def run(self, stop: threading.Event) -> None:
        self.reseed()
        jobs = ThreadPoolExecutor(4, thread_name_prefix="seed-job")
        slots = threading.Semaphore(4)
        registered = False
        while not stop.is_set():
            try:
                if not registered:
                    self.tracker.register_seed(self.seed_id, self.origin.endpoint)
                    registered = True
                    log.info(
                        "event=seed_registered seed_id=%s bt_port=%d", self.seed_id, self.swarm.listen_port
                    )
                if not slots.acquire(timeout=1):
                    continue
                job = self.tracker.next_job(self.seed_id, wait=10)
                if job is None:
                    slots.release()
                    continue
                fut = jobs.submit(self.run_job, job)
                fut.add_done_callback(lambda _f: slots.release())
            except HfbtError as e:
                log.warning("event=tracker_unavailable error=%r", str(e))
                registered = False
                stop.wait(2)
        jobs.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._files.shutdown(wait=False, cancel_futures=True)
        self.swarm.close(save_resume=False)
        self.tracker.close()

    def reseed(self) -> None:
        """After a restart: seed every blob mirrored before, without hashing it again."""
        for rec in self.store.all():
            try:
                self.swarm.add(self.tracker.torrent(rec.info_hash), Path(rec.blob).parent, seeding=True)
            except HfbtError as e:
                log.warning("event=reseed_skipped etag=%s error=%r", rec.etag, str(e))

    # --- one job ---

    def run_job(self, job: dict) -> None:
        t0 = time.monotonic()
        rt, rid, rev = job["repo_type"], job["repo_id"], job["revision"]
        log.info("event=mirror_start job=%s repo=%s/%s revision=%s", job["id"], rt, rid, rev)
        try:
            commit = self.mirror(rt, rid, rev, job["id"])
        except HfbtError as e:
            log.warning("event=mirror_failed job=%s code=%s detail=%r", job["id"], e.code, e.message)
            self._report(job["id"], ok=False, error=e.code, detail=e.message)
            return
        except Exception as e:  # a bug must fail the job, not leave nodes waiting forever
            log.exception("event=mirror_crashed job=%s", job["id"])
            self._report(
                job["id"], ok=False, error="OriginError", detail=f"seed error: {type(e).__name__}: {e}"
            )
            return
        self._report(job["id"], ok=True, commit=commit)
        log.info("event=mirror_done job=%s commit=%s seconds=%.1f", job["id"], commit, time.monotonic() - t0)

    def _report(self, job_id: str, **kw) -> None:
        try:
            self.tracker.job_result(job_id, **kw)
        except HfbtError as e:
            log.warning("event=job_result_lost job=%s error=%r", job_id, str(e))

    def mirror(self, repo_type: str, repo_id: str, revision: str, job_id: str | None = None) -> str:
        commit = self.origin.resolve(repo_type, repo_id, revision)
        files = self.origin.list_files(repo_type, repo_id, commit)
        try:
            manifest = Manifest(repo_type, repo_id, commit, tuple(files)).validate()
        except ManifestError as e:
            raise HfbtError(
                "OriginError", f"the origin's file list for {repo_id}@{commit} is unusable: {e}"
            ) from None
        ref = None if revision == commit else revision
        registered = self.tracker.register_revision(manifest, ref, job_id)
        # One torrent per distinct blob: identical files in a revision share it.
        by_etag: dict[str, list[FileEntry]] = {}
        for f in registered.files:
            if f.needs_torrent:
                by_etag.setdefault(f.etag, []).append(f)
        futures = [self._files.submit(self._mirror_blob, manifest, entries) for entries in by_etag.values()]
        for fut in futures:
            fut.result()
        return commit

    def _mirror_blob(self, manifest: Manifest, entries: list[FileEntry]) -> None:
        first = entries[0]
        with self._etag_lock(first.etag):
            rec = self.store.get(first.etag)
            if rec is None:
                t0 = time.monotonic()
                blob = self.origin.download(manifest.repo_type, manifest.repo_id, manifest.commit, first.path)
                if not verify_blob(blob, first):
                    blob.unlink(missing_ok=True)
                    raise HfbtError(
                        "OriginError", f"{first.path}: the origin sent bytes that do not match {first.etag}"
                    )
                torrent = make_blob_torrent(blob, first.etag)
                rec = SeededBlob(first.etag, torrent.info_hash, str(blob), first.size)
                log.info(
                    "event=blob_mirrored path=%s size=%d seconds=%.1f",
                    first.path,
                    first.size,
                    time.monotonic() - t0,
                )
                data = torrent.data
            else:
                data = None
            for f in entries:
                if f.info_hash != rec.info_hash:
                    if data is None:
                        data = make_blob_torrent(Path(rec.blob), rec.etag).data
                    self.tracker.register_torrent(manifest, f.path, data)
            self.store.put(rec)
            if not self.swarm.has(rec.info_hash):
                self.swarm.add(self.tracker.torrent(rec.info_hash), Path(rec.blob).parent, seeding=True)

    def _etag_lock(self, etag: str) -> threading.Lock:
        with self._locks_guard:
            return self._etag_locks.setdefault(etag, threading.Lock())
