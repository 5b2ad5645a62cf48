"""A real PostgreSQL on 127.0.0.1 for the tests (Debian's `postgresql`; scripts/test installs it).

The server runs as an unprivileged user (PostgreSQL refuses root), with fsync off (a test cluster), and
asks for a password over TCP: the trackers under test get it the way production does, from PGPASSWORD.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hfbt.cluster import free_port
from tests.redisserver import wait_listening

SUPERUSER = "hfbt"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PgServer:
    port: int
    password: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


def _as_owner(owner: pwd.struct_passwd | None) -> dict:
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def start_postgres(workdir: Path) -> tuple[subprocess.Popen, PgServer]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    data = workdir / "data"
    password = secrets.token_urlsafe(16)
    pwfile = workdir / "pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    init = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile)]
    init += ["--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-sync"]
    subprocess.run(init, check=True, capture_output=True, **_as_owner(owner))
    pwfile.unlink()
    port = free_port()
    args = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(workdir)]
    args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log = open(workdir / "postgres.log", "wb")  # noqa: SIM115 - the server's lifetime
    proc = subprocess.Popen(args, stdout=log, stderr=log, **_as_owner(owner))
    wait_listening(proc, port, "postgres", 30, workdir / "postgres.log")
    return proc, PgServer(port, password)


def stop_postgres(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # Not under pytest's tmp dir: that is 0700 root's, and the server runs as `postgres`.
    workdir = Path(tempfile.mkdtemp(prefix="hfbt-pg-"))
    try:
        proc, server = start_postgres(workdir)
        try:
            yield server
        finally:
            stop_postgres(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(server: PgServer) -> str:
    """A fresh, empty database; its URL (no password: that comes from PGPASSWORD)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.url(), password=server.password, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url(name)


@pytest.fixture
def pg_url(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database for one test, with PGPASSWORD set for this process and its children."""
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    return create_database(pg_server)
