"""A real redis-server on 127.0.0.1 for the tests (Debian's `redis-server`; scripts/test installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfbt.cluster import free_port

REDIS_SERVER = shutil.which("redis-server")


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    """redis-server with no persistence, bound to loopback, configured from a file in `workdir`."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"
    lines = [f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no", f"dir {workdir}"]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    proc = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(proc, port, "redis-server", 10)
    return proc, port


def wait_listening(
    proc: subprocess.Popen, port: int, name: str, timeout: float, log: Path | None = None
) -> None:
    """Until a server process accepts on 127.0.0.1:port; killed and an error if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                said = log.read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"{name} exited at start {said}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start listening")


def stop_redis(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        stop_redis(proc)


@pytest.fixture
def redis_url(redis_server: int) -> Iterator[str]:
    """A fresh database: FLUSHDB between tests."""
    import redis

    url = f"redis://127.0.0.1:{redis_server}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url
