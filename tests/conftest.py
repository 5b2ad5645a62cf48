"""Shared fixtures: a whole hfbt deployment as real processes on 127.0.0.1 (hfbt.cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hfbt.cluster import LocalCluster, free_port
from hfbt.synth import make_dataset_repo, make_model_repo
from hfbt.tickets import TicketSigner

# Real servers some tests need, started only when a test asks for their fixture.
pytest_plugins = ["tests.redisserver", "tests.pgserver"]

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

MODEL = "acme/tiny"
DATASET = "acme/corpus"


@dataclass
class Deployment:
    cluster: LocalCluster
    origin_root: Path

    @property
    def model_dir(self) -> Path:
        return self.origin_root / "models" / MODEL

    @property
    def dataset_dir(self) -> Path:
        return self.origin_root / "datasets" / DATASET

    def operator(self) -> httpx.Client:
        """The tracker's API as the operator (jobs, listings)."""
        headers = {"Authorization": f"Bearer {self.cluster.operator_token}"}
        return httpx.Client(base_url=self.cluster.tracker_url, headers=headers, timeout=30)


def make_origin(root: Path) -> Path:
    # 9 MiB + a few bytes per shard: three 4 MiB pieces, the last one partial.
    make_model_repo(root / "models" / MODEL, shard_mb=9, seed=0)
    make_dataset_repo(root / "datasets" / DATASET, seed=1)
    return root


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """origin + closed tracker + seed; `@pytest.mark.ref_ttl(0)` makes every branch pull re-resolve.

    The test process itself is a node ("pytest"): its HFBT_NODE_TOKEN reaches every `hfbt pull` it runs.
    """
    marker = request.node.get_closest_marker("ref_ttl")
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(closed=True, ref_ttl=marker.args[0] if marker else 300)
        cluster.start_seed()
        for name, value in cluster.node_env("pytest").items():
            monkeypatch.setenv(name, value)
        yield Deployment(cluster, root)
    # Every process, whatever the test did to it, reports problems as one line, never a traceback.
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "run" / "logs").glob("*.log")}
    assert not [name for name, text in logs.items() if "Traceback" in text], logs


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` s: a test's server never outlives the test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_hfbt(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hfbt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def pull_cmd(tracker_url: str, cache: Path, *extra: str, repo: str = MODEL) -> list[str]:
    """`hfbt pull` arguments for an embedded (agent-less), quiet pull into `cache`."""
    return [
        "pull",
        repo,
        "--tracker",
        tracker_url,
        "--cache-dir",
        str(cache),
        "--agent",
        "none",
        "-q",
        *extra,
    ]


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- one tracker process, driven over HTTP (tests/test_tracker_http.py, test_roles.py) ------------

OPERATOR_TOKEN = "operator-" + "o" * 24
SEED_TOKEN = "seed-" + "s" * 24
# The role credentials travel by environment, as in production: never in argv.
_SERVE = (
    "import json, sys; from tracker.server import serve; from hfbt import config as C;"
    "serve(C.TrackerConfig(**json.loads(sys.argv[1]), operator_token=C.read_secret(C.SECRET_OPERATOR_TOKEN),"
    " seed_token=C.read_secret(C.SECRET_SEED_TOKEN)))"
)


@dataclass
class Tracker:
    url: str
    proc: subprocess.Popen
    log: Path
    closed: bool

    def headers(self, who: str | None) -> dict[str, str]:
        """who: "seed", "operator", a node token, or None (no credential)."""
        token = {"seed": SEED_TOKEN, "operator": OPERATOR_TOKEN}.get(who or "", who)
        return {"Authorization": f"Bearer {token}"} if token and self.closed else {}

    def client(self, who: str | None = "seed", **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(who), timeout=30, **kw)

    def add_node(self, name: str) -> str:
        with self.client("operator") as c:
            r = c.post("/api/v1/nodes", json={"name": name})
            assert r.status_code == 201, r.text
            return r.json()["token"]

    def aclient(self) -> httpx.AsyncClient:
        headers = self.headers("seed")
        limits = httpx.Limits(max_connections=100)
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, limits=limits)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def start_tracker(tmp_path: Path) -> Iterator[Callable[..., Tracker]]:
    started: list[Tracker] = []
    tokens = {"HFBT_OPERATOR_TOKEN": OPERATOR_TOKEN, "HFBT_SEED_TOKEN": SEED_TOKEN}

    def start(db: Path | None = None, closed: bool = False, **cfg: object) -> Tracker:
        port = free_port()
        db = db or tmp_path / "tracker.db"
        conf = {"db": str(db), "host": "127.0.0.1", "port": port, **cfg}
        log = tmp_path / f"tracker-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _SERVE, json.dumps(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(tokens if closed else {})},
            )
        t = Tracker(f"http://127.0.0.1:{port}", proc, log, closed)
        started.append(t)
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tracker exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{t.url}/healthz", timeout=1).json() == {"ok": True}:
                    return t
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tracker did not come up:\n{log.read_text()}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for t in started:
            t.stop()
        for t in started:
            text = t.log.read_text(errors="replace")
            assert "Traceback" not in text, text
            assert OPERATOR_TOKEN not in text and SEED_TOKEN not in text and "hfbtn_" not in text


class Clock:
    """A clock the test moves by hand (`clock.now += 60`), starting now unless told."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> TicketSigner:
    """The tracker's side: the key that mints every ticket a test shows."""
    return TicketSigner(Ed25519PrivateKey.generate(), clock)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry's --db: a SQLite file (one tracker) or a fresh PostgreSQL database (replicas)."""
    if request.param == "sqlite":
        return str(tmp_path / "r.db")
    return request.getfixturevalue("pg_url")
