"""The registry: revisions, files, refs, torrents, seeds and mirror jobs in SQLite (stdlib sqlite3).

One connection guarded by a lock: callers come from the event loop and from uvicorn's threadpool, and
SQLite serializes writers anyway. WAL keeps readers of other processes (backups, `sqlite3` on the CLI)
from blocking us. Everything here survives a restart; the peer table (tracker/peers.py) deliberately does not.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hfbt.manifest import FileEntry, Manifest

JOB_STATES = ("queued", "running", "done", "failed")


class Immutable(ValueError):
    """A registration that would change what is registered: a commit's files, their hashes, its private
    flag, or a file's torrent. Nodes trust the manifest, so once set these never change."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(detail)
        self.what = what  # "revision" or "torrent": the metric's label


ACTIVE_STATES = ("queued", "running")
MANIFEST_CACHE_ENTRIES = 500_000  # file entries of complete revisions kept in memory (~150 B each)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, commit_id TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL,
    private INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_type, repo_id, commit_id)
);
CREATE TABLE IF NOT EXISTS files (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, commit_id TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, sha256 TEXT, info_hash TEXT,
    PRIMARY KEY (repo_type, repo_id, commit_id, path)
);
CREATE INDEX IF NOT EXISTS files_etag ON files (etag);
CREATE TABLE IF NOT EXISTS refs (
    repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, ref TEXT NOT NULL,
    commit_id TEXT NOT NULL, resolved_at REAL NOT NULL,
    PRIMARY KEY (repo_type, repo_id, ref)
);
CREATE TABLE IF NOT EXISTS torrents (
    info_hash TEXT PRIMARY KEY, etag TEXT NOT NULL, size INTEGER NOT NULL, info BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS torrents_etag ON torrents (etag, size);
CREATE TABLE IF NOT EXISTS seeds (
    seed_id TEXT PRIMARY KEY, origin TEXT, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, repo_type TEXT NOT NULL, repo_id TEXT NOT NULL, revision TEXT NOT NULL,
    state TEXT NOT NULL, seed_id TEXT, commit_id TEXT, error TEXT, detail TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
-- The database itself guarantees one active job per key, whatever the callers do.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active ON jobs (repo_type, repo_id, revision)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
-- Node identities (tracker/auth.py): only a hash of each node's secret, never the token itself.
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, token_hash TEXT NOT NULL, created REAL NOT NULL, revoked REAL
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


class Registry:
    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Announces check registration on every request: keep the set in memory, it is small (40 B/torrent).
        self._known = {bytes.fromhex(h) for (h,) in self._db.execute("SELECT info_hash FROM torrents")}
        self._complete_files: OrderedDict[tuple[str, str, str], tuple[FileEntry, ...]] = OrderedDict()
        self._cached_entries = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: Sequence = ()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Sequence = ()) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

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
        with self._tx() as db:
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
                " ON CONFLICT DO UPDATE SET updated=excluded.updated",  # private never changes
                (*key, now, now, int(manifest.private)),
            )
            self._update_complete(db, [key], now)
            if ref is not None and ref != manifest.commit:
                self._set_ref(db, manifest.repo_type, manifest.repo_id, ref, manifest.commit, now)
        stored = self.get_manifest(*key)
        assert stored is not None
        return stored

    @staticmethod
    def _torrent_matches(db: sqlite3.Connection, info_hash: str, f: FileEntry) -> bool:
        row = db.execute("SELECT etag, size FROM torrents WHERE info_hash=?", (info_hash,)).fetchone()
        return row is not None and tuple(row) == (f.etag, f.size)

    @staticmethod
    def _update_complete(db: sqlite3.Connection, keys: Sequence[tuple[str, str, str]], now: float) -> None:
        for key in keys:
            db.execute(
                "UPDATE revisions SET updated=?, complete = NOT EXISTS (SELECT 1 FROM files f"
                " WHERE f.repo_type=revisions.repo_type AND f.repo_id=revisions.repo_id"
                " AND f.commit_id=revisions.commit_id AND f.size > 0 AND f.info_hash IS NULL)"
                " WHERE repo_type=? AND repo_id=? AND commit_id=?",
                (now, *key),
            )

    def get_manifest(self, repo_type: str, repo_id: str, commit: str) -> Manifest | None:
        key = (repo_type, repo_id, commit)
        with self._lock:
            rev = self._db.execute(
                "SELECT complete, private FROM revisions WHERE repo_type=? AND repo_id=? AND commit_id=?", key
            ).fetchone()
            if rev is None:
                return None
            files = self._complete_files.get(key)
            if files is None:
                files = tuple(
                    FileEntry(*row)
                    for row in self._db.execute(
                        "SELECT path, size, etag, sha256, info_hash FROM files"
                        " WHERE repo_type=? AND repo_id=? AND commit_id=? ORDER BY path",
                        key,
                    )
                )
                if rev[0]:
                    self._remember_complete(key, files)
            else:
                self._complete_files.move_to_end(key)
            refs = self._db.execute(
                "SELECT ref FROM refs WHERE repo_type=? AND repo_id=? AND commit_id=? ORDER BY ref", key
            ).fetchall()
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
        # nodes asking for one 40k-file manifest then cost one SQLite read, not one each.
        self._complete_files[key] = files
        self._cached_entries += len(files)
        while self._cached_entries > MANIFEST_CACHE_ENTRIES and len(self._complete_files) > 1:
            _, dropped = self._complete_files.popitem(last=False)
            self._cached_entries -= len(dropped)

    def revisions_of_torrent(self, info_hash: str) -> list[tuple[str, str, str, str, bool]]:
        """(repo_type, repo_id, commit, path, private) of every file of a revision holding this blob."""
        return [
            (t, r, c, path, bool(p))
            for t, r, c, path, p in self._all(
                "SELECT DISTINCT f.repo_type, f.repo_id, f.commit_id, f.path, v.private FROM files f"
                " JOIN revisions v USING (repo_type, repo_id, commit_id) WHERE f.info_hash=?",
                (info_hash,),
            )
        ]

    def torrent_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM torrents")[0]

    def job_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def list_revisions(self, repo_type: str | None = None, repo_id: str | None = None) -> list[dict]:
        rows = self._all(
            "SELECT r.repo_type, r.repo_id, r.commit_id, r.complete,"
            " (SELECT group_concat(ref, char(10)) FROM (SELECT ref FROM refs f WHERE f.repo_type=r.repo_type"
            "  AND f.repo_id=r.repo_id AND f.commit_id=r.commit_id ORDER BY ref))"
            " FROM revisions r WHERE (?1 IS NULL OR r.repo_type=?1) AND (?2 IS NULL OR r.repo_id=?2)"
            " ORDER BY r.repo_type, r.repo_id, r.updated DESC",
            (repo_type, repo_id),
        )
        return [
            {
                "repo_type": t,
                "repo_id": i,
                "commit": c,
                "complete": bool(done),
                "refs": refs.split("\n") if refs else [],
            }
            for t, i, c, done, refs in rows
        ]

    def get_file(self, repo_type: str, repo_id: str, commit: str, path: str) -> FileEntry | None:
        row = self._one(
            "SELECT path, size, etag, sha256, info_hash FROM files"
            " WHERE repo_type=? AND repo_id=? AND commit_id=? AND path=?",
            (repo_type, repo_id, commit, path),
        )
        return FileEntry(*row) if row else None

    # -- refs ------------------------------------------------------------------------------------

    def get_ref(self, repo_type: str, repo_id: str, ref: str) -> Ref | None:
        row = self._one(
            "SELECT commit_id, resolved_at FROM refs WHERE repo_type=? AND repo_id=? AND ref=?",
            (repo_type, repo_id, ref),
        )
        return Ref(*row) if row else None

    def set_ref(self, repo_type: str, repo_id: str, ref: str, commit: str, now: float | None = None) -> None:
        with self._tx() as db:
            self._set_ref(db, repo_type, repo_id, ref, commit, time.time() if now is None else now)

    @staticmethod
    def _set_ref(
        db: sqlite3.Connection, repo_type: str, repo_id: str, ref: str, commit: str, now: float
    ) -> None:
        db.execute(
            "INSERT INTO refs (repo_type, repo_id, ref, commit_id, resolved_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET commit_id=excluded.commit_id, resolved_at=excluded.resolved_at",
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
        with self._tx() as db:
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
                " ON CONFLICT DO NOTHING",
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
        row = self._one("SELECT info FROM torrents WHERE info_hash=?", (info_hash,))
        return bytes(row[0]) if row else None

    def has_torrent(self, info_hash: bytes) -> bool:
        return info_hash in self._known

    # -- seeds -----------------------------------------------------------------------------------

    def seed_heartbeat(self, seed_id: str, origin: str | None = None, now: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO seeds (seed_id, origin, last_seen) VALUES (?, ?, ?) ON CONFLICT DO UPDATE"
                " SET last_seen=excluded.last_seen, origin=COALESCE(excluded.origin, seeds.origin)",
                (seed_id, origin, time.time() if now is None else now),
            )

    def seeds(self) -> list[Seed]:
        return [Seed(*r) for r in self._all("SELECT seed_id, origin, last_seen FROM seeds ORDER BY seed_id")]

    # -- jobs ------------------------------------------------------------------------------------

    def ensure_job(
        self, repo_type: str, repo_id: str, revision: str, now: float | None = None
    ) -> tuple[Job, bool]:
        """The active (queued/running) job for this key, or a new queued one; and whether it was created."""
        now = time.time() if now is None else now
        key = (repo_type, repo_id, revision)
        for _ in range(3):
            try:
                with self._tx() as db:
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
            except sqlite3.IntegrityError:
                continue  # another process sharing the file won the race: read its job
        raise RuntimeError(f"could not create or find the job for {key}")

    def get_job(self, job_id: str) -> Job | None:
        row = self._one(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,))
        return _job(row) if row else None

    def active_job(self, repo_type: str, repo_id: str, revision: str) -> Job | None:
        row = self._one(
            f"SELECT {_JOB_COLS} FROM jobs WHERE repo_type=? AND repo_id=? AND revision=?"
            " AND state IN ('queued', 'running')",
            (repo_type, repo_id, revision),
        )
        return _job(row) if row else None

    def jobs_for_commit(self, repo_type: str, repo_id: str, commit: str) -> list[Job]:
        """Jobs that asked for this commit or registered it, newest first."""
        rows = self._all(
            f"SELECT {_JOB_COLS} FROM jobs WHERE repo_type=? AND repo_id=? AND (revision=?3 OR commit_id=?3)"
            " ORDER BY updated DESC LIMIT 20",
            (repo_type, repo_id, commit),
        )
        return [_job(r) for r in rows]

    def list_jobs(self, limit: int = 200, state: str | None = None) -> list[Job]:
        rows = self._all(
            f"SELECT {_JOB_COLS} FROM jobs WHERE (?1 IS NULL OR state=?1) ORDER BY created DESC LIMIT ?2",
            (state, limit),
        )
        return [_job(r) for r in rows]

    def claim_job(self, seed_id: str, now: float | None = None) -> Job | None:
        """Hand the oldest queued job to `seed_id` (it becomes running)."""
        now = time.time() if now is None else now
        with self._tx() as db:
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
        with self._tx() as db:
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
        with self._tx() as db:
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

    def requeue_running(self, seed_ids: Sequence[str] | None = None, now: float | None = None) -> list[Job]:
        """Put running jobs (all, or those of `seed_ids`) back in the queue; returns them."""
        now = time.time() if now is None else now
        with self._tx() as db:
            if seed_ids is None:
                rows = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state='running'").fetchall()
            else:
                marks = ",".join("?" * len(seed_ids))
                rows = db.execute(
                    f"SELECT {_JOB_COLS} FROM jobs WHERE state='running' AND seed_id IN ({marks})",
                    tuple(seed_ids),
                ).fetchall()
            db.executemany(
                "UPDATE jobs SET state='queued', seed_id=NULL, updated=? WHERE id=?",
                [(now, r[0]) for r in rows],
            )
        return [_job(r) for r in rows]

    # --- node identities ---

    def add_node(self, name: str, token_hash: str, now: float | None = None) -> bool:
        """Issue `name` (False: it is already live; revoke it first). A revoked name may be issued again."""
        with self._tx() as db:
            row = db.execute("SELECT revoked FROM nodes WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] is None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO nodes (name, token_hash, created, revoked) VALUES (?, ?, ?, NULL)",
                (name, token_hash, time.time() if now is None else now),
            )
            return True

    def revoke_node(self, name: str, now: float | None = None) -> bool:
        """False: no live node of that name."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE nodes SET revoked=? WHERE name=? AND revoked IS NULL",
                (time.time() if now is None else now, name),
            )
            return cur.rowcount == 1

    def node_hash(self, name: str) -> str | None:
        row = self._one("SELECT token_hash FROM nodes WHERE name=? AND revoked IS NULL", (name,))
        return row[0] if row else None

    def list_nodes(self) -> list[dict]:
        return [
            {"name": n, "created": c, "revoked": r}
            for n, c, r in self._all("SELECT name, created, revoked FROM nodes ORDER BY name")
        ]

    def running_seed_ids(self) -> list[str]:
        return [s for (s,) in self._all("SELECT DISTINCT seed_id FROM jobs WHERE state='running'") if s]


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
