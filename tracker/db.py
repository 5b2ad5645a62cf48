"""The registry's SQL connection: SQLite (one process, the embedded default) or PostgreSQL (replicas).

The registry writes its SQL once, with `?` placeholders, in the subset both databases speak; this module
turns it into each one's dialect and gives both the same small surface: `tx()` for a write transaction,
`all`/`one` for reads.

Write transactions are serialized: SQLite by BEGIN IMMEDIATE, PostgreSQL by one transaction-scoped
advisory lock held by whichever replica writes. Registry writes are rare (registrations, jobs, seed
heartbeats; announces never write here), and one writer at a time makes every "read, decide, write"
(one active job per key, a file's torrent set once) hold across replicas exactly as it does in one
process. Reads take no lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tracker.unavailable import StoreUnavailable

# pg_advisory_xact_lock key of the registry's writers (any constant, the same in every replica).
WRITE_LOCK = 0x68666274  # "hfbt"
CONNECT_TIMEOUT_S = 5


class RegistryUnavailable(StoreUnavailable):
    """The registry's database cannot be reached; the call changed nothing."""


class DbError(ValueError):
    """A --db value that cannot be used (say a password in the URL)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """The registry's view of an open write transaction."""

    def execute(self, sql: str, args: Sequence = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None: ...


class Database(Protocol):
    shared: bool  # other processes write too: in-memory knowledge of the registry may be stale
    integrity_error: type[Exception]

    def tx(self) -> Any: ...  # a context manager yielding a Tx

    def all(self, sql: str, args: Sequence = ()) -> list[tuple]: ...

    def one(self, sql: str, args: Sequence = ()) -> tuple | None: ...

    def close(self) -> None: ...


def is_url(db: str | Path) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def open_database(db: str | Path, schema: str, password: str | None = None) -> Database:
    """A SQLite file path, or a postgresql:// URL; its password is `password` (HFBT_PG_PASSWORD), else
    libpq's own PGPASSWORD / PGPASSFILE."""
    if is_url(db):
        return PostgresDatabase(str(db), schema, password)
    return SqliteDatabase(Path(db), schema)


# -- SQLite --------------------------------------------------------------------------------------


class SqliteDatabase:
    """One connection guarded by a lock: callers come from the event loop and from the threadpool."""

    shared = False
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        # WAL keeps readers of other processes (backups, `sqlite3` on the CLI) from blocking us.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(schema)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def all(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def one(self, sql: str, args: Sequence = ()) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- PostgreSQL ----------------------------------------------------------------------------------


def to_postgres(sql: str) -> str:
    """The registry's SQLite-flavoured SQL in PostgreSQL's: placeholders and the one differing type."""
    return sql.replace("%", "%%").replace("?", "%s").replace(" BLOB ", " BYTEA ")


def check_url(url: str) -> None:
    """Refuse a URL carrying a password: a flag's value is world-readable in /proc and shell history."""
    import psycopg.conninfo

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise DbError(f"--db is not a valid postgresql:// URL: {e}") from None
    if params.get("password") is not None:
        raise DbError(
            "--db must not carry a password: set HFBT_PG_PASSWORD (or HFBT_PG_PASSWORD_FILE, PGPASSFILE)"
        )


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence = ()) -> Cursor:
        return self._conn.execute(to_postgres(sql), tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(to_postgres(sql), [tuple(r) for r in rows])


class PostgresDatabase:
    """One connection per replica, guarded by a lock; reconnects on the next call after an outage.

    An outage surfaces as RegistryUnavailable (a 503 the caller retries), never as a 500, and its
    message names neither the URL nor the password.
    """

    shared = True

    def __init__(self, url: str, schema: str, password: str | None = None) -> None:
        import psycopg

        check_url(url)
        self._password = password
        self._psycopg = psycopg
        self.integrity_error = psycopg.IntegrityError
        self._url = url
        self._lock = threading.RLock()
        self._conn: Any = None
        with self.tx() as db:
            for statement in _statements(schema):
                db.execute(statement)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                extra = {"password": self._password} if self._password else {}
                self._conn = self._psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name="hfbt-tracker",
                    **extra,
                )
            except self._psycopg.OperationalError as e:
                raise RegistryUnavailable(f"the registry database is unreachable ({_reason(e)})") from None
        return self._conn

    @contextmanager
    def _guard(self) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as e:
                conn.close()  # reconnect on the next call
                raise RegistryUnavailable(f"the registry database failed ({_reason(e)})") from None

    @contextmanager
    def tx(self) -> Iterator[_PgTx]:
        with self._guard() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield _PgTx(conn)

    def all(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._guard() as conn:
            return conn.execute(to_postgres(sql), tuple(args)).fetchall()

    def one(self, sql: str, args: Sequence = ()) -> tuple | None:
        with self._guard() as conn:
            return conn.execute(to_postgres(sql), tuple(args)).fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _statements(script: str) -> list[str]:
    """A schema script's statements, comment lines dropped (psycopg runs one statement per execute)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _reason(e: Exception) -> str:
    # libpq's first line says what failed ("connection refused", "password authentication failed for
    # user x"); the rest repeats host and port.
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
