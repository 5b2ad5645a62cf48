"""The registry: revisions, files, refs, torrents, seeds, mirror jobs and node identities.

In SQLite for one tracker process, in PostgreSQL shared by replicas (tracker/db.py holds the two). Everything
here survives a restart; the peer table (tracker/peerstore/) deliberately does not. What this process
keeps in memory is only what cannot go stale: the registered torrents (never removed) and the files of
complete revisions (immutable).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hfbt.manifest import FileEntry, Manifest
from tracker.db import Database, Tx, open_database

JOB_STATES = ("queued", "running", "done", "failed")


class Immutable(ValueError):
    """A registration that would change what is registered: a commit's files, their hashes, its private
    flag, or a file's torrent. Nodes trust the manifest, so once set these never change."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(detail)
        self.what = what  # "revision" or "torrent": the metric's label


ACTIVE_STATES = ("queued", "running")
MANIFEST_CACHE_ENTRIES = 500_000  # file entries of complete revisions kept in memory (~150 B each)
# A shared registry looks up an info_hash this process has not seen; an unknown one is not asked again
# for this long (a torrent registered on another replica is announced within a second of it).
UNKNOWN_TORRENT_TTL_S = 1.0
UNKNOWN_TORRENTS_MAX = 4096

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, commit_id TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    private INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_type, repo_id, commit_id)
);
CREATE TABLE IF NOT EXISTS files (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, commit_id TEXT NOT NULL, path TEXT NOT NULL,
    size BIGINT NOT NULL, etag TEXT NOT NULL, sha256 TEXT, info_hash TEXT,
    PRIMARY KEY (repo_type, repo_id, commit_id, path)
);
CREATE INDEX IF NOT EXISTS files_etag ON files (etag);
CREATE TABLE IF NOT EXISTS refs (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, ref TEXT NOT NULL,
    commit_id TEXT NOT NULL, resolved_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repo_type, repo_id, ref)
);
CREATE TABLE IF NOT EXISTS torrents (
    info_hash TEXT PRIMARY KEY, etag TEXT NOT NULL, size BIGINT NOT NULL, info BLOB NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS torrents_etag ON torrents (etag, size);
CREATE TABLE IF NOT EXISTS seeds (
    seed_id TEXT PRIMARY KEY, origin TEXT, last_seen DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, revision TEXT NOT NULL,
    state TEXT NOT NULL, seed_id TEXT, commit_id TEXT, error TEXT, detail TEXT,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL
);
-- The database itself guarantees one active job per key, whatever the callers do.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active ON jobs (repo_type, repo_id, revision)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
-- Node identities (tracker/auth.py): only a hash of each node's secret, never the token itself.
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, token_hash TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    revoked DOUBLE PRECISION
);
"""


@dataclass(frozen=True)
class Job:
    id: str
    repo_type: str
    repo_id: str
    revision: str
    state: str
    seed_id: str | None
    commit: str | None
    error: str | None
    detail: str | None
    created: float
    updated: float

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "state": self.state,
            "seed_id": self.seed_id,
            "commit": self.commit,
            "error": self.error,
            "detail": self.detail,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Ref:
    commit: str
    resolved_at: float


@dataclass(frozen=True)
class Seed:
    seed_id: str
    origin: str | None
    last_seen: float


_JOB_COLS = "id, repo_type, repo_id, revision, state, seed_id, commit_id, error, detail, created, updated"


def _job(row: Sequence) -> Job:
    return Job(*row)


def open_registry(db: str | Path, password: str | None = None) -> Registry:
    """The registry in a SQLite file, or in PostgreSQL for a postgresql:// URL (tracker/db.py)."""
    return Registry(open_database(db, SCHEMA, password))


class Registry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.shared = db.shared
        self._lock = threading.Lock()  # the in-memory caches below
        # Announces check registration on every request: keep the set in memory, it is small (40 B/torrent).
        self._known = {bytes.fromhex(h) for (h,) in db.all("SELECT info_hash FROM torrents")}
        self._unknown: OrderedDict[bytes, float] = OrderedDict()  # shared only: recent misses
        self._complete_files: OrderedDict[tuple[str, str, str], tuple[FileEntry, ...]] = OrderedDict()
        self._cached_entries = 0

    def close(self) -> None:
        self._db.close()

    # -- revisions -------------------------------------------------------------------------------

    def register_revision(
        self, manifest: Manifest, ref: str | None = None, now: float | None = None
    ) -> Manifest:
        """Store a validated manifest (idempotent) and point `ref` at its commit; returns the stored one.

        A commit registered before must come with the same files, hashes and private flag (else
        Immutable), and its files keep the torrents they have. A file's info_hash is otherwise kept only
        if that torrent is registered for the same blob; files without one get the info_hash of an
        already registered torrent of the same etag (dedup across revisions/repos).
        """
        now = time.time() if now is None else now
        key = (manifest.repo_type, manifest.repo_id, manifest.commit)
        with self._db.tx() as db:
            previous = {
                path: (size, etag, sha256, ih)
                for path, size, etag, sha256, ih in db.execute(
                    "SELECT path, size, etag, sha256, info_hash FROM files"
                    " WHERE repo_type=? AND repo_id=? AND commit_id=?",
                    key,
                )
            }
            known = db.execute(
                "SELECT private FROM revisions WHERE repo_type=? AND repo_id=? AND commit_id=?", key
            ).fetchone()
            if known is not None:
                _check_unchanged(manifest, bool(known[0]), previous)
            db.execute("DELETE FROM files WHERE repo_type=? AND repo_id=? AND commit_id=?", key)
            rows = []
            for f in manifest.files:
                ih = None
                old = previous.get(f.path)
                if f.needs_torrent and old is not None and old[3] is not None:
                    ih = old[3]  # set once (_check_unchanged refused any other)
                elif f.needs_torrent:
                    ih = f.info_hash if f.info_hash and self._torrent_matches(db, f.info_hash, f) else None
                    if ih is None:
                        row = db.execute(
                            "SELECT info_hash FROM torrents WHERE etag=? AND size=? ORDER BY created LIMIT 1",
                            (f.etag, f.size),
                        ).fetchone()
                        ih = row[0] if row else None
                rows.append((*key, f.path, f.size, f.etag, f.sha256, ih))
            db.executemany(
                "INSERT INTO files (repo_type, repo_id, commit_id, path, size, etag, sha256, info_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "INSERT INTO revisions (repo_type, repo_id, commit_id, complete, created, updated, private)"
                " VALUES (?, ?, ?, 0, ?, ?, ?)"
                # private never changes
                " ON CONFLICT (repo_type, repo_id, commit_id) DO UPDATE SET updated=excluded.updated",
                (*key, now, now, int(manifest.private)),
            )
            self._update_complete(db, [key], now)
            if ref is not None and ref != manifest.commit:
                self._set_ref(db, manifest.repo_type, manifest.repo_id, ref, manifest.commit, now)
        stored = self.get_manifest(*key)
        assert stored is not None
        return stored

    @staticmethod
    def _torrent_matches(db: Tx, info_hash: str, f: FileEntry) -> bool:
        row = db.execute("SELECT etag, size FROM torrents WHERE info_hash=?", (info_hash,)).fetchone()
        return row is not None and tuple(row) == (f.etag, f.size)

    @staticmethod
    def _update_complete(db: Tx, keys: Sequence[tuple[str, str, str]], now: float) -> None:
        for key in keys:
            db.execute(
                "UPDATE revisions SET updated=?, complete = CASE WHEN EXISTS (SELECT 1 FROM files f"
                " WHERE f.repo_type=revisions.repo_type AND f.repo_id=revisions.repo_id"
                " AND f.commit_id=revisions.commit_id AND f.size > 0 AND f.info_hash IS NULL)"
                " THEN 0 ELSE 1 END"
                " WHERE repo_type=? AND repo_id=? AND commit_id=?",
                (now, *key),
            )

    def get_manifest(self, repo_type: str, repo_id: str, commit: str) -> Manifest | None:
        key = (repo_type, repo_id, commit)
        rev = self._db.one(
            "SELECT complete, private FROM revisions WHERE repo_type=? AND repo_id=? AND commit_id=?", key
        )
        if rev is None:
            return None
        with self._lock:
            files = self._complete_files.get(key)
            if files is not None:
                self._complete_files.move_to_end(key)
        if files is None:
            files = tuple(
                FileEntry(*row)
                for row in self._db.all(
                    "SELECT path, size, etag, sha256, info_hash FROM files"
                    " WHERE repo_type=? AND repo_id=? AND commit_id=? ORDER BY path",
                    key,
                )
            )
            if rev[0]:
                self._remember_complete(key, files)
        refs = self._db.all(
            "SELECT ref FROM refs WHERE repo_type=? AND repo_id=? AND commit_id=? ORDER BY ref", key
        )
        return Manifest(
            repo_type=repo_type,
            repo_id=repo_id,
            commit=commit,
            files=files,
            refs=tuple(r for (r,) in refs),
            complete=bool(rev[0]),
            private=bool(rev[1]),
        )

    def _remember_complete(self, key: tuple[str, str, str], files: tuple[FileEntry, ...]) -> None:
        # A complete revision's files never change again (immutable, every torrent set): thousands of
        # nodes asking for one 40k-file manifest then cost one database read, not one each.
        with self._lock:
            if key in self._complete_files:
                return
            self._complete_files[key] = files
            self._cached_entries += len(files)
            while self._cached_entries > MANIFEST_CACHE_ENTRIES and len(self._complete_files) > 1:
                _, dropped = self._complete_files.popitem(last=False)
                self._cached_entries -= len(dropped)

    def revisions_of_torrent(self, info_hash: str) -> list[tuple[str, str, str, str, bool]]:
        """(repo_type, repo_id, commit, path, private) of every file of a revision holding this blob."""
        return [
            (t, r, c, path, bool(p))
            for t, r, c, path, p in self._db.all(
                "SELECT DISTINCT f.repo_type, f.repo_id, f.commit_id, f.path, v.private FROM files f"
                " JOIN revisions v USING (repo_type, repo_id, commit_id) WHERE f.info_hash=?",
                (info_hash,),
            )
        ]

    def torrent_count(self) -> int:
        return self._db.one("SELECT COUNT(*) FROM torrents")[0]

    def job_counts(self) -> dict[str, int]:
        return dict(self._db.all("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def list_revisions(self, repo_type: str | None = None, repo_id: str | None = None) -> list[dict]:
        where, args = _where(repo_type=repo_type, repo_id=repo_id)
        rows = self._db.all(
            f"SELECT repo_type, repo_id, commit_id, complete FROM revisions{where}"
            " ORDER BY repo_type, repo_id, updated DESC",
            args,
        )
        refs: dict[tuple[str, str, str], list[str]] = {}
        for t, i, c, ref in self._db.all(
            f"SELECT repo_type, repo_id, commit_id, ref FROM refs{where} ORDER BY ref", args
        ):
            refs.setdefault((t, i, c), []).append(ref)
        return [
            {
                "repo_type": t,
                "repo_id": i,
                "commit": c,
                "complete": bool(done),
                "refs": refs.get((t, i, c), []),
            }
            for t, i, c, done in rows
        ]

    def get_file(self, repo_type: str, repo_id: str, commit: str, path: str) -> FileEntry | None:
        row = self._db.one(
            "SELECT path, size, etag, sha256, info_hash FROM files"
            " WHERE repo_type=? AND repo_id=? AND commit_id=? AND path=?",
            (repo_type, repo_id, commit, path),
        )
        return FileEntry(*row) if row else None

    # -- refs ------------------------------------------------------------------------------------

    def get_ref(self, repo_type: str, repo_id: str, ref: str) -> Ref | None:
        row = self._db.one(
            "SELECT commit_id, resolved_at FROM refs WHERE repo_type=? AND repo_id=? AND ref=?",
            (repo_type, repo_id, ref),
        )
        return Ref(*row) if row else None

    def set_ref(self, repo_type: str, repo_id: str, ref: str, commit: str, now: float | None = None) -> None:
        with self._db.tx() as db:
            self._set_ref(db, repo_type, repo_id, ref, commit, time.time() if now is None else now)

    @staticmethod
    def _set_ref(db: Tx, repo_type: str, repo_id: str, ref: str, commit: str, now: float) -> None:
        db.execute(
            "INSERT INTO refs (repo_type, repo_id, ref, commit_id, resolved_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (repo_type, repo_id, ref) DO UPDATE"
            " SET commit_id=excluded.commit_id, resolved_at=excluded.resolved_at",
            (repo_type, repo_id, ref, commit, now),
        )

    # -- torrents --------------------------------------------------------------------------------

    def add_torrent(
        self,
        repo_type: str,
        repo_id: str,
        commit: str,
        path: str,
        info_hash: str,
        info: bytes,
        size: int,
        etag: str,
    ) -> bool:
        """Register a validated blob torrent for a file; returns whether its revision is now complete.

        Every other file with the same blob that still lacks a torrent gets this one too. A file's
        torrent is set once: the same one again is a no-op, another one is refused (Immutable).
        """
        now = time.time()
        with self._db.tx() as db:
            current = db.execute(
                "SELECT info_hash FROM files WHERE repo_type=? AND repo_id=? AND commit_id=? AND path=?",
                (repo_type, repo_id, commit, path),
            ).fetchone()
            if current is not None and current[0] is not None and current[0] != info_hash:
                raise Immutable(
                    "torrent",
                    f"{repo_type}:{repo_id}@{commit} {path} already has torrent {current[0]}; "
                    f"a file's torrent is set once (refused {info_hash})",
                )
            db.execute(
                "INSERT INTO torrents (info_hash, etag, size, info, created) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (info_hash) DO NOTHING",
                (info_hash, etag, size, info, now),
            )
            db.execute(
                "UPDATE files SET info_hash=? WHERE repo_type=? AND repo_id=? AND commit_id=? AND path=?",
                (info_hash, repo_type, repo_id, commit, path),
            )
            keys = db.execute(
                "SELECT DISTINCT repo_type, repo_id, commit_id FROM files"
                " WHERE etag=? AND size=? AND info_hash IS NULL",
                (etag, size),
            ).fetchall()
            db.execute(
                "UPDATE files SET info_hash=? WHERE etag=? AND size=? AND info_hash IS NULL",
                (info_hash, etag, size),
            )
            self._update_complete(db, [(repo_type, repo_id, commit), *map(tuple, keys)], now)
            row = db.execute(
                "SELECT complete FROM revisions WHERE repo_type=? AND repo_id=? AND commit_id=?",
                (repo_type, repo_id, commit),
            ).fetchone()
        self._known.add(bytes.fromhex(info_hash))
        return bool(row and row[0])

    def get_torrent_info(self, info_hash: str) -> bytes | None:
        row = self._db.one("SELECT info FROM torrents WHERE info_hash=?", (info_hash,))
        return bytes(row[0]) if row else None

    def has_torrent(self, info_hash: bytes, now: float | None = None) -> bool:
        """Whether a torrent of this info_hash is registered (announce asks, on every request).

        A registered torrent is never removed, so this process's set answers every hit. A miss is final
        in one process; with a shared registry another replica may have registered it, so the database
        answers, and a miss is remembered for UNKNOWN_TORRENT_TTL_S (bounded) so unknown hashes cost
        at most one query per second each.
        """
        if info_hash in self._known:
            return True
        if not self.shared:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            until = self._unknown.get(info_hash)
            if until is not None and until > now:
                return False
        found = self._db.one("SELECT 1 FROM torrents WHERE info_hash=?", (info_hash.hex(),)) is not None
        with self._lock:
            if found:
                self._known.add(info_hash)
                self._unknown.pop(info_hash, None)
            else:
                self._unknown[info_hash] = now + UNKNOWN_TORRENT_TTL_S
                self._unknown.move_to_end(info_hash)
                while len(self._unknown) > UNKNOWN_TORRENTS_MAX:
                    self._unknown.popitem(last=False)
        return found

    # -- seeds -----------------------------------------------------------------------------------

    def seed_heartbeat(self, seed_id: str, origin: str | None = None, now: float | None = None) -> None:
        with self._db.tx() as db:
            db.execute(
                "INSERT INTO seeds (seed_id, origin, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (seed_id) DO UPDATE"
                " SET last_seen=excluded.last_seen, origin=COALESCE(excluded.origin, seeds.origin)",
                (seed_id, origin, time.time() if now is None else now),
            )

    def seeds(self) -> list[Seed]:
        return [
            Seed(*r) for r in self._db.all("SELECT seed_id, origin, last_seen FROM seeds ORDER BY seed_id")
        ]

    # -- jobs ------------------------------------------------------------------------------------

    def ensure_job(
        self, repo_type: str, repo_id: str, revision: str, now: float | None = None
    ) -> tuple[Job, bool]:
        """The active (queued/running) job for this key, or a new queued one; and whether it was created."""
        now = time.time() if now is None else now
        key = (repo_type, repo_id, revision)
        for _ in range(3):
            try:
                with self._db.tx() as db:
                    row = db.execute(
                        f"SELECT {_JOB_COLS} FROM jobs WHERE repo_type=? AND repo_id=? AND revision=?"
                        " AND state IN ('queued', 'running')",
                        key,
                    ).fetchone()
                    if row is not None:
                        return _job(row), False
                    job = Job(uuid.uuid4().hex, *key, "queued", None, None, None, None, now, now)
                    db.execute(
                        f"INSERT INTO jobs ({_JOB_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", _astuple(job)
                    )
                    return job, True
            except self._db.integrity_error:
                continue  # another process sharing the file won the race: read its job
        raise RuntimeError(f"could not create or find the job for {key}")

    def get_job(self, job_id: str) -> Job | None:
        row = self._db.one(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,))
        return _job(row) if row else None

    def active_job(self, repo_type: str, repo_id: str, revision: str) -> Job | None:
        row = self._db.one(
            f"SELECT {_JOB_COLS} FROM jobs WHERE repo_type=? AND repo_id=? AND revision=?"
            " AND state IN ('queued', 'running')",
            (repo_type, repo_id, revision),
        )
        return _job(row) if row else None

    def jobs_for_commit(self, repo_type: str, repo_id: str, commit: str) -> list[Job]:
        """Jobs that asked for this commit or registered it, newest first."""
        rows = self._db.all(
            f"SELECT {_JOB_COLS} FROM jobs WHERE repo_type=? AND repo_id=? AND (revision=? OR commit_id=?)"
            " ORDER BY updated DESC LIMIT 20",
            (repo_type, repo_id, commit, commit),
        )
        return [_job(r) for r in rows]

    def list_jobs(self, limit: int = 200, state: str | None = None) -> list[Job]:
        where, args = _where(state=state)
        rows = self._db.all(
            f"SELECT {_JOB_COLS} FROM jobs{where} ORDER BY created DESC LIMIT ?", (*args, limit)
        )
        return [_job(r) for r in rows]

    def claim_job(self, seed_id: str, now: float | None = None) -> Job | None:
        """Hand the oldest queued job to `seed_id` (it becomes running)."""
        now = time.time() if now is None else now
        if not self.has_queued_job():
            return None  # the common answer, without taking the write lock
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT {_JOB_COLS} FROM jobs WHERE state='queued' ORDER BY created LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', seed_id=?, updated=? WHERE id=?", (seed_id, now, row[0])
            )
        return self.get_job(row[0])

    def set_job_commit(self, job_id: str, commit: str, now: float | None = None) -> Job | None:
        with self._db.tx() as db:
            db.execute(
                "UPDATE jobs SET commit_id=?, updated=? WHERE id=?",
                (commit, time.time() if now is None else now, job_id),
            )
        return self.get_job(job_id)

    def finish_job(
        self,
        job_id: str,
        ok: bool,
        commit: str | None = None,
        error: str | None = None,
        detail: str | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Mark a job done/failed. A late result for a finished job changes nothing (first result wins)."""
        with self._db.tx() as db:
            db.execute(
                "UPDATE jobs SET state=?, commit_id=COALESCE(?, commit_id), error=?, detail=?, updated=?"
                " WHERE id=? AND state IN ('queued', 'running')",
                (
                    "done" if ok else "failed",
                    commit,
                    None if ok else error,
                    detail,
                    time.time() if now is None else now,
                    job_id,
                ),
            )
        return self.get_job(job_id)

    def requeue_running(
        self,
        seed_ids: Sequence[str] | None = None,
        now: float | None = None,
        silent_since: float | None = None,
    ) -> list[Job]:
        """Put running jobs (all, or those of `seed_ids`) back in the queue; returns them.

        With `silent_since`, a seed heard from at or after it keeps its jobs: checked inside the write,
        so a seed that just heartbeated through another replica is never taken for dead.
        """
        now = time.time() if now is None else now
        with self._db.tx() as db:
            if seed_ids is None:
                rows = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state='running'").fetchall()
            else:
                marks = ",".join("?" * len(seed_ids))
                heard = (
                    ""
                    if silent_since is None
                    else " AND seed_id NOT IN (SELECT seed_id FROM seeds WHERE last_seen >= ?)"
                )
                args = tuple(seed_ids) if silent_since is None else (*seed_ids, silent_since)
                rows = db.execute(
                    f"SELECT {_JOB_COLS} FROM jobs WHERE state='running' AND seed_id IN ({marks}){heard}",
                    args,
                ).fetchall()
            db.executemany(
                "UPDATE jobs SET state='queued', seed_id=NULL, updated=? WHERE id=?",
                [(now, r[0]) for r in rows],
            )
        return [_job(r) for r in rows]

    def has_queued_job(self) -> bool:
        return self._db.one("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1") is not None

    def job_stamps(self, job_ids: Sequence[str]) -> dict[str, float]:
        """When each of these jobs last changed (`updated`): what a replica polls to wake its waiters."""
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        return dict(self._db.all(f"SELECT id, updated FROM jobs WHERE id IN ({marks})", tuple(job_ids)))

    # --- node identities ---

    def add_node(self, name: str, token_hash: str, now: float | None = None) -> bool:
        """Issue `name` (False: it is already live; revoke it first). A revoked name may be issued again."""
        with self._db.tx() as db:
            row = db.execute("SELECT revoked FROM nodes WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] is None:
                return False
            db.execute(
                "INSERT INTO nodes (name, token_hash, created, revoked) VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (name) DO UPDATE SET token_hash=excluded.token_hash, created=excluded.created,"
                " revoked=NULL",
                (name, token_hash, time.time() if now is None else now),
            )
            return True

    def revoke_node(self, name: str, now: float | None = None) -> bool:
        """False: no live node of that name."""
        with self._db.tx() as db:
            cur = db.execute(
                "UPDATE nodes SET revoked=? WHERE name=? AND revoked IS NULL",
                (time.time() if now is None else now, name),
            )
            return cur.rowcount == 1

    def node_hash(self, name: str) -> str | None:
        row = self._db.one("SELECT token_hash FROM nodes WHERE name=? AND revoked IS NULL", (name,))
        return row[0] if row else None

    def list_nodes(self) -> list[dict]:
        return [
            {"name": n, "created": c, "revoked": r}
            for n, c, r in self._db.all("SELECT name, created, revoked FROM nodes ORDER BY name")
        ]

    def running_seed_ids(self) -> list[str]:
        return [s for (s,) in self._db.all("SELECT DISTINCT seed_id FROM jobs WHERE state='running'") if s]


def _check_unchanged(manifest: Manifest, private: bool, previous: dict[str, tuple]) -> None:
    """Refuse a manifest that differs from the registered one of the same commit (Immutable)."""
    name = f"{manifest.repo_type}:{manifest.repo_id}@{manifest.commit}"
    if manifest.private != private:
        raise Immutable(
            "revision",
            f"{name} is registered as {'private' if private else 'public'}; "
            "a commit's private flag never changes",
        )
    files = {f.path: (f.size, f.etag, f.sha256) for f in manifest.files}
    if files != {path: row[:3] for path, row in previous.items()}:
        raise Immutable("revision", f"{name} is registered with other files or hashes; commits never change")
    for f in manifest.files:
        ih = previous[f.path][3]
        if f.info_hash and ih and f.info_hash != ih:
            raise Immutable("revision", f"{name} {f.path} already has torrent {ih}; it is set once")


def _where(**equal: str | None) -> tuple[str, tuple[str, ...]]:
    """` WHERE a=? AND b=?` over the arguments given (None: any), and their values."""
    given = {k: v for k, v in equal.items() if v is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in given), tuple(given.values())


def _astuple(job: Job) -> tuple:
    return (
        job.id,
        job.repo_type,
        job.repo_id,
        job.revision,
        job.state,
        job.seed_id,
        job.commit,
        job.error,
        job.detail,
        job.created,
        job.updated,
    )
