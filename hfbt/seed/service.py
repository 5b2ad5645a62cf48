"""Mirror jobs: resolve a revision on the origin, fetch each file once, publish its torrent, seed it.

Each file's torrent is registered as soon as that file is mirrored, so nodes start on shard 1
while shard 2 is still coming from the origin.

The seed announces every torrent with one grant from the tracker (on a closed tracker, a ticket for
every torrent, valid minutes): a thread renews it at about half its life and gives every announced
torrent the new URL. It also learns the tracker's ticket key when it registers, for its piece server.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hfbt.cache import verify_blob
from hfbt.config import SeedConfig
from hfbt.errors import HfbtError
from hfbt.hub.client import HubClient
from hfbt.manifest import FileEntry, Manifest, ManifestError
from hfbt.metrics import SeedMetrics
from hfbt.published import PublishedBlob, PublishedStore
from hfbt.seed.pieces import PieceBook
from hfbt.swarm import Swarm, SwarmError
from hfbt.torrents import make_blob_torrent
from hfbt.trackerclient import TicketGrant, TrackerClient, retry_in
from hfbt.wire import ROLE_SEED, seed_hands_out, with_role

log = logging.getLogger("hfbt.seed")
JOB_SLOTS = 4
# How often the renewal thread looks at its grant: renewals land within this of when they are due.
RENEW_TICK_S = 1.0


class SeedService:
    """Built by hfbt.seed.daemon.build_seed, which owns the collaborators' wiring."""

    def __init__(
        self,
        cfg: SeedConfig,
        *,
        seed_id: str,
        tracker: TrackerClient,
        origin: HubClient,
        store: PublishedStore,
        swarm: Swarm,
        metrics: SeedMetrics,
        pieces: PieceBook,
        piece_port: int,
    ) -> None:
        self.cfg = cfg
        self.seed_id = seed_id
        self.tracker = tracker
        self.origin = origin
        self.store = store
        self.swarm = swarm
        self.metrics = metrics  # served by `hfbt seed --metrics-port`
        self.pieces = pieces  # served by `hfbt seed --piece-port` (hfbt/seed/pieces.py)
        # The port the piece server really listens on, 0 for none: cfg.piece_port is only what was asked.
        self.piece_port = piece_port
        # The announce grant and the URL list every announced torrent has; the lock keeps a renewal and a
        # torrent being announced from crossing (the torrent would keep the old ticket until it expires).
        self._announce_lock = threading.Lock()
        self._grant: TicketGrant | None = None
        self._announce: list[str] = []
        self._announced: set[str] = set()  # info-hashes given self._announce
        self._etag_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._files = ThreadPoolExecutor(max(1, cfg.parallel_files), thread_name_prefix="seed-file")

    # --- lifecycle ---

    def run(self, stop: threading.Event) -> None:
        threading.Thread(
            target=self._keep_announce_fresh, args=(stop,), name="seed-tickets", daemon=True
        ).start()
        jobs = ThreadPoolExecutor(JOB_SLOTS, thread_name_prefix="seed-job")
        slots = threading.Semaphore(JOB_SLOTS)
        registered = False
        while not stop.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
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

    def _register(self) -> None:
        port = self.piece_port or None  # 0: no piece server, so no URL to advertise either
        self.tracker.register_seed(
            self.seed_id, self.origin.endpoint, port, self.cfg.piece_url if port else None
        )
        # Tickets expire on the tracker's clock: the piece server judges them by it.
        self.pieces.tickets.trust(self.tracker.ticket_key(), clock=lambda: time.time() + self.tracker.skew)
        first = self._grant is None
        self._use_grant(self.tracker.announce_url())
        count = self.reseed() if first else 0
        log.info(
            "event=seed_registered seed_id=%s bt_port=%d reseeded=%d",
            self.seed_id,
            self.swarm.listen_port,
            count,
        )

    # --- the announce grant ---

    def _use_grant(self, grant: TicketGrant) -> None:
        """Announce with this grant from now on, every torrent announced so far included."""
        with self._announce_lock:
            self._grant = grant
            # The role keeps the seed away from nodes that take its pieces over HTTP (tracker/handout.py).
            self._announce = [with_role(grant.announce, ROLE_SEED)]
            for ih in sorted(self._announced):
                try:
                    self.swarm.replace_trackers(ih, self._announce)
                except SwarmError:
                    self._announced.discard(ih)  # no longer in the session

    def _announce_with_grant(self, ih: str) -> None:
        with self._announce_lock:
            self.swarm.replace_trackers(ih, self._announce)
            self._announced.add(ih)

    def _keep_announce_fresh(self, stop: threading.Event) -> None:
        """Renew the announce grant at about half its remaining life, retrying with backoff; never
        raises (a dead renewal thread would silently end every announce when the ticket expires)."""
        seen: TicketGrant | None = None
        due: float | None = None
        failures = 0
        while not stop.wait(RENEW_TICK_S):
            with self._announce_lock:
                grant = self._grant
            if grant is not seen:  # registered, re-registered or renewed: schedule from the new grant
                seen, failures = grant, 0
                wait = grant.renew_in() if grant is not None else None
                due = None if wait is None else time.monotonic() + wait
            if due is None or time.monotonic() < due:
                continue
            try:
                self._use_grant(self.tracker.announce_url())
                log.info("event=announce_renewed torrents=%d", len(self._announced))
            except Exception as e:  # HfbtError, or a bug: either way, try again later
                failures += 1
                due = time.monotonic() + retry_in(failures)
                log.warning(
                    "event=announce_renewal_failed error=%r failures=%d retry_in=%.0f",
                    str(e),
                    failures,
                    retry_in(failures),
                )

    def close(self) -> None:
        self._files.shutdown(wait=False, cancel_futures=True)
        self.swarm.close(save_resume=False)
        self.tracker.close()

    def reseed(self) -> int:
        """After a restart: seed every blob mirrored before, without hashing it again."""
        found = self.store.all()
        for rec, torrent in found:
            self._seed(rec, torrent)
        return len(found)

    def _seed(self, rec: PublishedBlob, torrent: bytes, announce: bool = True) -> None:
        # Our own torrent plus this seed's announce URL: no tracker round trip (or Hub token check) per blob.
        # announce=False: not yet, the tracker does not know the torrent (it would refuse the announce).
        with self._announce_lock:
            trackers = list(self._announce) if announce else None
            ih = self.swarm.add(torrent, Path(rec.path).parent, seeding=True, trackers=trackers)
            if announce:
                self._announced.add(ih)
        if seed_hands_out(rec.size):
            self.pieces.add(ih, Path(rec.path), rec.size)
        if self.cfg.swarm.super_seed and seed_hands_out(rec.size):
            self.swarm.super_seed(ih)

    # --- one job ---

    def run_job(self, job: dict) -> None:
        t0 = time.monotonic()
        rt, rid, rev = job["repo_type"], job["repo_id"], job["revision"]
        log.info("event=mirror_start job=%s repo=%s/%s revision=%s", job["id"], rt, rid, rev)
        self.metrics.job_started()
        try:
            commit = self.mirror(rt, rid, rev, job["id"])
        except HfbtError as e:
            log.warning("event=mirror_failed job=%s code=%s detail=%r", job["id"], e.code, e.message)
            self._report(job["id"], ok=False, error=_job_error(e.code), detail=e.message)
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
        self.metrics.job_finished(ok=kw["ok"])  # every job reports exactly once
        try:
            self.tracker.job_result(job_id, **kw)
        except HfbtError as e:
            log.warning("event=job_result_lost job=%s error=%r", job_id, str(e))

    def mirror(self, repo_type: str, repo_id: str, revision: str, job_id: str | None = None) -> str:
        commit, private = self.origin.resolve(repo_type, repo_id, revision)
        files = self.origin.list_files(repo_type, repo_id, commit)
        try:
            manifest = Manifest(repo_type, repo_id, commit, tuple(files), private=private).validate()
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
            found = self.store.get(first.etag)
            if found is None:
                found = self._fetch(manifest, first)
            rec, torrent = found
            fresh = not self.swarm.has(rec.info_hash)
            if fresh:
                # Seeding before the nodes learn of the torrent, announcing only once the tracker has
                # it: a private tracker refuses unknown torrents, and libtorrent backs off ~15 s.
                self._seed(rec, torrent, announce=False)
            for f in entries:
                if f.info_hash != rec.info_hash:
                    self.tracker.register_torrent(manifest, f.path, torrent)
            # Every time, not only when fresh: after a registration that failed, the job's retry finds
            # the blob already seeded, still without its announce URL.
            self._announce_with_grant(rec.info_hash)

    def _fetch(self, manifest: Manifest, f: FileEntry) -> tuple[PublishedBlob, bytes]:
        t0 = time.monotonic()
        blob = self.origin.download(manifest.repo_type, manifest.repo_id, manifest.commit, f.path)
        if not verify_blob(blob, f):
            blob.unlink(missing_ok=True)
            self.metrics.integrity_failed()
            log.error(
                "event=integrity_failure source=origin repo=%s path=%s expected=%s",
                manifest.repo_id,
                f.path,
                f.etag,
            )
            raise HfbtError("OriginError", f"{f.path}: the origin sent bytes that do not match {f.etag}")
        self.metrics.blob_fetched(f.size)
        torrent = make_blob_torrent(blob, f.etag)
        rec = PublishedBlob(f.etag, torrent.info_hash, f.size, str(blob))
        self.store.put(rec, torrent.data)
        log.info("event=blob_mirrored path=%s size=%d seconds=%.1f", f.path, f.size, time.monotonic() - t0)
        return rec, torrent.data

    def _etag_lock(self, etag: str) -> threading.Lock:
        with self._locks_guard:
            return self._etag_locks.setdefault(etag, threading.Lock())


def _job_error(code: str) -> str:
    # The tracker knows three outcomes; a gated repo the seed cannot read is "not found" to the nodes.
    # Conflict: the origin now lists other files for a registered commit; the tracker keeps the old.
    return {"GatedRepo": "RepoNotFound", "EntryNotFound": "OriginError", "Conflict": "OriginError"}.get(
        code, code
    )
