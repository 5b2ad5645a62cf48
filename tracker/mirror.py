"""The mirror scheduler: on a registry miss, one mirror job per (repo_type, repo_id, revision) for a seed.

Jobs live in the registry (they survive a restart); what lives here is who is waiting for them. All
methods run on the event loop: the waits are asyncio events and the job decisions are plain synchronous
registry calls with no await in between, so "look for an active job, else create one" cannot interleave
(the registry's unique index on active jobs backs this up across processes).

Replicas sharing one registry (PostgreSQL) learn of each other's changes by `poll_registry`, which the
app runs every SHARED_POLL_S: one query for all the jobs this replica's nodes wait on, one for whether a
job is queued while seeds wait here. Waiters never query on their own, so a thousand nodes waiting on
one job cost one query per second per replica, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hfbt.manifest import Manifest, ManifestError, check_repo_id, check_repo_type, check_revision, is_commit
from tracker.registry import Job, Registry
from tracker.torrentfile import check_blob_torrent

log = logging.getLogger("tracker.mirror")

SEED_TIMEOUT_S = 90.0
SHARED_POLL_S = 1.0
MAX_WAIT_S = 60.0
# A partial revision whose last job ended this recently is not re-mirrored yet (no retry storm).
REMIRROR_AFTER_S = 60.0
# Every queued job is a (repo, revision) some node asked for and no seed has taken yet. Any node can ask
# for names that do not exist, so the queue is bounded: past this, a request for a new key is refused.
MAX_QUEUED_JOBS = 1000
FAILURE_STATUS = {"RepoNotFound": 404, "RevisionNotFound": 404, "OriginError": 502, "TooManyJobs": 503}


def _clamp_wait(wait: float) -> float:
    return min(max(wait, 0.0), MAX_WAIT_S) if math.isfinite(wait) else 0.0


class MirrorFailed(Exception):
    """The mirror job for the request failed; `code` is one of FAILURE_STATUS."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code if code in FAILURE_STATUS else "OriginError"
        self.detail = detail

    @property
    def status(self) -> int:
        return FAILURE_STATUS[self.code]


class NotFound(LookupError):
    """An unknown job, revision or file."""


@dataclass(frozen=True)
class Lookup:
    """A manifest request's answer: a manifest, or the pending job it waits on."""

    manifest: Manifest | None = None
    job: Job | None = None
    seeds: int = 0

    @property
    def status(self) -> str:
        if self.manifest is None:
            return "pending"
        return "complete" if self.manifest.complete else "partial"


class Scheduler:
    def __init__(
        self,
        registry: Registry,
        ref_ttl: float,
        seed_timeout: float = SEED_TIMEOUT_S,
        remirror_after: float = REMIRROR_AFTER_S,
        clock: Callable[[], float] = time.time,
        max_queued_jobs: int = MAX_QUEUED_JOBS,
    ) -> None:
        self.registry = registry
        self.max_queued_jobs = max_queued_jobs
        self.ref_ttl = ref_ttl
        self.seed_timeout = seed_timeout
        self.remirror_after = remirror_after
        self.clock = clock
        self._queued = asyncio.Event()
        self._job_events: dict[str, asyncio.Event] = {}
        self._polling: dict[str, int] = {}
        self._stamps: dict[str, float] = {}  # job id -> the `updated` its waiters last read
        self._closing = False
        if not registry.shared:
            # The seeds that ran them are gone with the previous process, or will ask again. A shared
            # registry's running jobs may be other replicas' seeds' work: reap_dead_seeds judges those.
            for job in registry.requeue_running():
                log.info("event=job_requeued id=%s reason=restart", job.id)

    # -- notifications: set the current event and replace it, so a waiter that takes the event before
    #    checking state can never miss a change.

    def _notify_job(self, job_id: str) -> None:
        self._stamps.pop(job_id, None)
        ev = self._job_events.pop(job_id, None)
        if ev is not None:
            ev.set()

    def _notify_queued(self) -> None:
        ev, self._queued = self._queued, asyncio.Event()
        ev.set()

    def close(self) -> None:
        """Wake every long-poll: a shutdown must not wait (then cancel, with a traceback) for them."""
        self._closing = True
        self._notify_queued()
        for job_id in list(self._job_events):
            self._notify_job(job_id)

    # -- nodes -----------------------------------------------------------------------------------

    def ensure_job(self, repo_type: str, repo_id: str, revision: str) -> Job:
        """The queued/running job for this key, or a new queued one.

        Raises ManifestError for a key no origin could have, and MirrorFailed("TooManyJobs") when a new
        job would pass `max_queued_jobs`: joining an existing job is always possible.
        """
        check_repo_type(repo_type)
        check_repo_id(repo_id)
        check_revision(revision)
        if self.registry.active_job(repo_type, repo_id, revision) is None:
            queued = self.registry.job_counts().get("queued", 0)
            if queued >= self.max_queued_jobs:
                log.warning("event=job_refused reason=queue_full queued=%d", queued)
                raise MirrorFailed("TooManyJobs", f"too many pending mirror jobs ({queued}); retry later")
        job, created = self.registry.ensure_job(repo_type, repo_id, revision, self.clock())
        if created:
            log.info("event=job_created id=%s repo=%s:%s revision=%s", job.id, repo_type, repo_id, revision)
            self._notify_queued()
        return job

    async def get_manifest(self, repo_type: str, repo_id: str, revision: str, wait: float) -> Lookup:
        """Answer from the registry if fresh, else make/join the job and wait up to `wait` s for it.

        Raises ManifestError for invalid arguments and MirrorFailed when the job failed.
        """
        check_repo_type(repo_type)
        check_repo_id(repo_id)
        check_revision(revision)
        wait = _clamp_wait(wait)
        if is_commit(revision):
            manifest = self.registry.get_manifest(repo_type, repo_id, revision)
            if manifest is not None:
                self._keep_mirroring(manifest)
                return Lookup(manifest=manifest)
        stale: Manifest | None = None
        if not is_commit(revision):
            ref = self.registry.get_ref(repo_type, repo_id, revision)
            if ref is not None:
                stale = self.registry.get_manifest(repo_type, repo_id, ref.commit)
                if stale is not None and self.clock() - ref.resolved_at < self.ref_ttl:
                    self._keep_mirroring(stale)
                    return Lookup(manifest=stale)
        try:
            job = self.ensure_job(repo_type, repo_id, revision)
        except MirrorFailed:
            if stale is not None:
                return Lookup(manifest=stale)  # the queue is full: the last known commit still answers
            raise
        if stale is not None and self.alive_seeds() == 0:
            # Nobody can re-resolve the ref now: the last known commit beats blocking every node.
            # The queued job refreshes the ref once a seed comes back.
            return Lookup(manifest=stale)
        deadline = time.monotonic() + wait
        while True:
            event = self._job_events.setdefault(job.id, asyncio.Event())
            current = self.registry.get_job(job.id)
            assert current is not None
            job = current
            self._stamps[job.id] = job.updated
            try:
                answer = self._outcome(job)
            except MirrorFailed as e:
                if stale is not None and e.code == "OriginError":
                    return Lookup(manifest=stale)  # origin down: keep serving what the cluster has
                raise
            if answer is not None:
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                return Lookup(job=job, seeds=self.alive_seeds())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _outcome(self, job: Job) -> Lookup | None:
        if job.commit is not None:
            manifest = self.registry.get_manifest(job.repo_type, job.repo_id, job.commit)
            if manifest is not None:
                return Lookup(manifest=manifest)
        if job.state == "failed":
            raise MirrorFailed(job.error or "OriginError", job.detail or "the mirror job failed")
        if job.state == "done":
            raise MirrorFailed("OriginError", "the mirror job finished without registering the revision")
        return None

    def _keep_mirroring(self, manifest: Manifest) -> None:
        """A partial revision nobody is mirroring (its job failed or was lost) gets a job for its commit.

        Without this, nodes asking for a commit whose mirror died half-way would poll a partial manifest
        forever: a known commit is otherwise answered without a job.
        """
        if manifest.complete:
            return
        jobs = self.registry.jobs_for_commit(manifest.repo_type, manifest.repo_id, manifest.commit)
        if any(j.active for j in jobs):
            return
        if jobs and self.clock() - jobs[0].updated < self.remirror_after:
            return
        try:
            self.ensure_job(manifest.repo_type, manifest.repo_id, manifest.commit)
        except MirrorFailed:
            pass  # the queue is full: the partial manifest still answers, a later request retries

    def poll_registry(self) -> None:
        """Wake the waiters of jobs another replica changed, and the seeds waiting here for a job."""
        stamps = self.registry.job_stamps(list(self._job_events))
        for job_id, updated in stamps.items():
            if self._stamps.get(job_id) != updated:
                self._notify_job(job_id)
        if self._polling and self.registry.has_queued_job():
            self._notify_queued()

    # -- seeds -----------------------------------------------------------------------------------

    def heartbeat(self, seed_id: str, origin: str | None = None) -> None:
        self.registry.seed_heartbeat(seed_id, origin, self.clock())

    def alive_seeds(self) -> int:
        return len(self.alive_seed_ids())

    def alive_seed_ids(self) -> set[str]:
        cutoff = self.clock() - self.seed_timeout
        alive = {s.seed_id for s in self.registry.seeds() if s.last_seen >= cutoff}
        return alive | {s for s, n in self._polling.items() if n > 0}

    async def next_job(
        self, seed_id: str, wait: float, disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> Job | None:
        """Long-poll: hand the oldest queued job to this seed (now running), or None after `wait` s."""
        wait = _clamp_wait(wait)
        deadline = time.monotonic() + wait
        self._polling[seed_id] = self._polling.get(seed_id, 0) + 1
        try:
            while True:
                self.heartbeat(seed_id)
                event = self._queued
                job = self.registry.claim_job(seed_id, self.clock())
                if job is not None:
                    log.info("event=job_started id=%s seed=%s", job.id, seed_id)
                    self._notify_job(job.id)
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return None
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    return None
                # A job handed to a seed that already hung up would sit "running" until the seed dies.
                if disconnected is not None and await disconnected():
                    return None
        finally:
            self._polling[seed_id] -= 1
            if not self._polling[seed_id]:
                del self._polling[seed_id]

    def register_revision(
        self, manifest: Manifest, job_id: str | None = None, ref: str | None = None
    ) -> Manifest:
        """Store a seed's (validated) manifest, point `ref` at it and release whoever waits on the job."""
        job = None
        if job_id is not None:
            job = self.registry.get_job(job_id)
            if job is None:
                # The work is still good (say the registry was reset under a running seed): keep it.
                log.warning("event=unknown_job id=%s action=register_without_job", job_id)
        if job is not None:
            if (job.repo_type, job.repo_id) != (manifest.repo_type, manifest.repo_id):
                raise ManifestError(
                    f"job {job_id} is for {job.repo_type}:{job.repo_id}, not this manifest's repo"
                )
            if is_commit(job.revision) and job.revision != manifest.commit:
                raise ManifestError(f"job {job_id} asked for commit {job.revision}, not {manifest.commit}")
            if ref is None and not is_commit(job.revision):
                ref = job.revision
        stored = self.registry.register_revision(manifest, ref, self.clock())
        if job is None:
            # A seed mirroring on its own (outside next-job) still satisfies the nodes waiting on that key.
            for revision in (ref, manifest.commit):
                if revision is not None:
                    job = self.registry.active_job(manifest.repo_type, manifest.repo_id, revision) or job
        if job is not None:
            self.registry.set_job_commit(job.id, manifest.commit, self.clock())
            if job.seed_id:
                self.heartbeat(job.seed_id)
            self._notify_job(job.id)
        log.info(
            "event=revision_registered repo=%s:%s commit=%s ref=%s files=%d complete=%s job=%s",
            manifest.repo_type,
            manifest.repo_id,
            manifest.commit,
            ref,
            len(stored.files),
            stored.complete,
            job.id if job else None,
        )
        return stored

    def register_torrent(
        self, repo_type: str, repo_id: str, commit: str, path: str, raw: bytes
    ) -> tuple[str, bool]:
        """Check and store a blob torrent for one file; returns (info_hash, revision complete).

        Raises NotFound for an unknown revision/file and TorrentError for a torrent that does not fit.
        """
        entry = self.registry.get_file(repo_type, repo_id, commit, path)
        if entry is None:
            raise NotFound(f"{repo_type}:{repo_id}@{commit} has no file {path!r}")
        torrent = check_blob_torrent(raw, entry)
        complete = self.registry.add_torrent(
            repo_type, repo_id, commit, path, torrent.info_hash, torrent.info, entry.size, entry.etag
        )
        log.info(
            "event=torrent_registered info_hash=%s etag=%s complete=%s",
            torrent.info_hash,
            entry.etag,
            complete,
        )
        return torrent.info_hash, complete

    def job_result(
        self,
        job_id: str,
        ok: bool,
        commit: str | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> Job:
        job = self.registry.get_job(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id}")
        now = self.clock()
        if ok and job.active:
            commit = commit or job.commit
            if (
                commit
                and not is_commit(job.revision)
                and self.registry.get_manifest(job.repo_type, job.repo_id, commit) is not None
            ):
                # The seed re-resolved the branch just now: that makes the ref fresh again.
                self.registry.set_ref(job.repo_type, job.repo_id, job.revision, commit, now)
        finished = self.registry.finish_job(job_id, ok, commit, error, detail, now)
        assert finished is not None
        if job.seed_id:
            self.heartbeat(job.seed_id)
        log.info("event=job_finished id=%s state=%s error=%s", job_id, finished.state, finished.error)
        self._notify_job(job_id)
        return finished

    def reap_dead_seeds(self) -> list[Job]:
        """Requeue the running jobs of seeds not heard from within `seed_timeout`."""
        cutoff = self.clock() - self.seed_timeout
        last_seen = {s.seed_id: s.last_seen for s in self.registry.seeds()}
        dead = [
            s
            for s in self.registry.running_seed_ids()
            if s not in self._polling and last_seen.get(s, float("-inf")) < cutoff
        ]
        if not dead:
            return []
        jobs = self.registry.requeue_running(dead, self.clock(), silent_since=cutoff)
        for job in jobs:
            log.warning("event=job_requeued id=%s seed=%s reason=seed_dead", job.id, job.seed_id)
            self._notify_job(job.id)
        if jobs:
            self._notify_queued()
        return jobs
