"""The HF_ENDPOINT shim against hostile or unlucky input, over real HTTP (uvicorn in a thread, raw
requests), with a scripted node in place of the real one so that every case is exact and quick:
bad input is a 4xx with a reason, forwarded requests cannot leave the origin's host, slow mirrors
do not starve quick requests, and bytes that fail the Hub's hash never make a complete response."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest

from hfbt import cache
from hfbt.agent.protocol import PullRequest
from hfbt.errors import HfbtError
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import PIECE_LENGTH, FileEntry, Manifest
from hfbt.shim import app as shim_app
from hfbt.shim.app import create_app
from hfbt.trackerclient import ManifestReply
from tests.fuzz.harness import RawResponse, raw_request, serve_in_thread

REPO = "acme/tiny"
COMMIT = "c0" * 20
CONFIG = b'{"hidden_size": 64}\n'
BIG = bytes(range(256)) * (2 * PIECE_LENGTH // 256) + b"tail" * 25  # three pieces, the last one short
BAD = BIG[:-1] + b"X"  # what a torrent of wrong content delivers: every piece passes BitTorrent's check
BIG_SHA = hashlib.sha256(BIG).hexdigest()
INFO_HASH = "1f" * 20
NON_ASCII_DIGITS = ["²", "٣", "١٢", "𝟙", "⁵"]


def _manifest() -> Manifest:
    files = (
        FileEntry("config.json", len(CONFIG), git_blob_sha1_bytes(CONFIG)),
        FileEntry("big.safetensors", len(BIG), BIG_SHA, sha256=BIG_SHA, info_hash=INFO_HASH),
        FileEntry("nested/notes.md", 3, git_blob_sha1_bytes(b"abc")),
    )
    return Manifest("model", REPO, COMMIT, files, complete=True)


class FakeNode:
    """What the shim uses of hfbt.agent.node.Node, scripted.

    Manifests: REPO is known; "pending/*" are being mirrored (the call holds until `release` is set,
    as the tracker holds it while it mirrors); anything else is not found. Blobs: config.json is in
    the cache; big.safetensors is in the swarm with `swarm_bytes` as the torrent's content, and
    `pull_outcome` decides how the node's background pull (which checks the sha256) ends."""

    def __init__(self, cache_dir: Path) -> None:
        self.cfg = SimpleNamespace(cache_dir=cache_dir)
        self.asked: list[tuple[str, str, str]] = []
        self.release = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()
        self.swarm_bytes = BIG
        self.pull_outcome: Callable[[Future], None] = lambda f: f.set_result(Path("/snapshot"))
        repo = cache.repo_dir(cache_dir, "model", REPO)
        entry = _manifest().files[0]
        cache.blobs_dir(repo).mkdir(parents=True, exist_ok=True)
        cache.blob_path(repo, entry.etag).write_bytes(CONFIG)

    def manifest(
        self, repo_type: str, repo_id: str, revision: str, wait: float = 20.0, token: str | None = None
    ) -> ManifestReply:
        with self._lock:
            self.asked.append((repo_type, repo_id, revision))
        if repo_id == REPO:
            return ManifestReply("complete", _manifest(), None)
        if repo_id.startswith("pending/"):
            with self._lock:
                self.waiting += 1
            try:
                released = self.release.wait(wait)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not released:
                return ManifestReply("pending", None, {"id": 1, "state": "running", "seeds": 1})
        raise HfbtError("RepoNotFound", f"{repo_id} is not on the origin")

    def fetch(self, req: PullRequest) -> Future:
        fut: Future = Future()
        self.pull_outcome(fut)
        return fut

    def joined(self, etag: str) -> str | None:
        return INFO_HASH if etag == BIG_SHA else None

    def read_piece(self, info_hash: str, piece: int) -> bytes:
        return self.swarm_bytes[piece * PIECE_LENGTH : (piece + 1) * PIECE_LENGTH]

    def read_ahead(self, info_hash: str, pieces: range) -> None:
        pass


class Recorder(http.server.ThreadingHTTPServer):
    """A local HTTP server that answers 200 to anything and records the request targets it got."""

    def __init__(self, name: str) -> None:
        self.targets: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.targets.append(self.requestline.split()[1])  # .path folds a leading //
                body = b'{"%s": true}' % name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture(scope="module")
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    """(the shim's origin, another server on this host that nothing may reach through the shim)"""
    servers = (Recorder("origin"), Recorder("other"))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


@dataclass
class Shim:
    port: int
    node: FakeNode
    origin: Recorder
    other: Recorder

    def get(self, target: bytes | str, **kw: object) -> RawResponse:
        return raw_request(self.port, target, **kw)  # type: ignore[arg-type]


@pytest.fixture
def shim(tmp_path: Path, recorders: tuple[Recorder, Recorder]) -> Iterator[Shim]:
    node = FakeNode(tmp_path / "hub")
    origin, other = recorders
    origin.targets.clear()
    other.targets.clear()
    with serve_in_thread(create_app(node, f"http://127.0.0.1:{origin.port}")) as server:  # type: ignore[arg-type]
        yield Shim(server.port, node, origin, other)
        node.release.set()  # whatever still waits for a mirror ends now


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing the shim answers may log a traceback (uvicorn's "Exception in ASGI application")."""
    caplog.set_level(logging.WARNING)
    yield
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


# --- 1. integers are ASCII digits -----------------------------------------------------------------


@pytest.mark.parametrize("value", [*NON_ASCII_DIGITS, "+3", " 3", "3_0", "-1", "0", "9" * 5000])
def test_a_limit_that_is_not_ascii_digits_is_a_400(shim: Shim, value: str) -> None:
    r = shim.get(f"/api/models/{REPO}/tree/main?limit={quote(value)}")
    assert r.status == 400 and "limit" in r.error(), r.body


@pytest.mark.parametrize("path, data", [("config.json", CONFIG), ("big.safetensors", BIG)])
@pytest.mark.parametrize(
    "value",
    [
        *[f"bytes={d}-" for d in NON_ASCII_DIGITS],
        *[f"bytes=0-{d}" for d in NON_ASCII_DIGITS],
        *[f"bytes=-{d}" for d in NON_ASCII_DIGITS],
        "bytes=+1-2",
        "bytes=0-" + "9" * 5000,
        "bytes=0-1,4-5",
    ],
)
def test_a_malformed_range_is_ignored(shim: Shim, path: str, data: bytes, value: str) -> None:
    # From the cache (config.json) and from the swarm (big.safetensors): the same rules.
    r = shim.get(f"/{REPO}/resolve/main/{path}", headers={"Range": value.encode("utf-8")})
    assert (r.status, r.complete) == (200, True), r.body[:200]
    assert r.body == data


@pytest.mark.parametrize("path, size", [("config.json", len(CONFIG)), ("big.safetensors", len(BIG))])
@pytest.mark.parametrize("value", ["bytes=" + "9" * 5000 + "-", "bytes=5-2", "bytes=-0"])
def test_an_unsatisfiable_range_is_a_416(shim: Shim, path: str, size: int, value: str) -> None:
    r = shim.get(f"/{REPO}/resolve/main/{path}", headers={"Range": value})
    assert r.status == 416 and r.error()
    assert r.headers["content-range"] == f"bytes */{size}"


def test_a_range_of_a_cached_file_is_a_206(shim: Shim) -> None:
    r = shim.get(f"/{REPO}/resolve/main/config.json", headers={"Range": "bytes=2-4"})
    assert (r.status, r.body, r.headers["content-range"]) == (206, CONFIG[2:5], f"bytes 2-4/{len(CONFIG)}")


# --- 2. repo ids and revisions ---------------------------------------------------------------------

BAD_TARGETS = [
    "/api/models/a/..",
    "/api/models/../x",
    "/api/models/a/%2E%2E",
    "/api/models/%2E%2E/x",
    "/api/models/a//b",
    "/api/models/acme/tiny%0A",
    "/api/models/acme/tiny%00",
    "/api/models/" + "a" * 97 + "/b",
    "/api/models/acme/tiny/revision/.",
    "/api/models/acme/tiny/revision/..",
    "/api/models/acme/tiny/revision/%2E",
    "/api/models/acme/tiny/revision/a..b",
    "/api/models/acme/tiny/revision/a%2F%2Fb",
    "/api/models/acme/tiny/revision/a%2F.%2Fb",
    "/api/models/acme/tiny/revision/%00",
    "/api/models/acme/tiny/revision/%7F",
    "/api/models/acme/tiny/revision/x%0Ay",
    "/api/models/acme/tiny/revision/" + "r" * 300,
    "/api/models/acme/tiny/tree/%2E%2E",
    "/api/models/acme/tiny/tree/main/..",
    "/api/datasets/acme/%2E%2E/refs",
    "/acme/tiny/resolve/%2E/config.json",
    "/acme/tiny/resolve/%2E%2E/config.json",
    "/acme/tiny/resolve/a%2F%2Fb/config.json",
    "/acme/tiny/resolve/.hidden/config.json",
    "/acme/tiny/resolve/main/../../etc/passwd",
    "/acme/tiny/resolve/main/..%2F..%2Fetc%2Fpasswd",
    "/acme/..%2F..%2Fx/resolve/main/config.json",
    "/a/%2E%2E/resolve/main/config.json",
    "/acme/tiny%0A/resolve/main/config.json",
    "/datasets/acme/%2E%2E/resolve/main/x.csv",
    "/" + "n" * 200 + "/x/resolve/main/config.json",
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_repo_ids_revisions_and_paths_are_a_4xx_with_a_reason(shim: Shim, target: str) -> None:
    r = shim.get(target)
    assert 400 <= r.status < 500, (target, r.status, r.body)
    assert r.error(), r.body
    # Checked before anything is asked: a bad id or revision never reaches the tracker (nor the origin).
    assert shim.node.asked == [], shim.node.asked
    assert shim.origin.targets == []


# --- 3. forwarding keeps to the origin ------------------------------------------------------------


def test_a_forwarded_request_cannot_reach_another_host(shim: Shim) -> None:
    other = shim.other.port
    to_origin = {
        f"/@127.0.0.1:{other}/x": f"/@127.0.0.1:{other}/x",
        f"//127.0.0.1:{other}/x": f"//127.0.0.1:{other}/x",
        f"/%40127.0.0.1:{other}/x?a=1": f"/%40127.0.0.1:{other}/x?a=1",
        "/api/whoami-v2": "/api/whoami-v2",
    }
    for target, forwarded in to_origin.items():
        for method in ("GET", "PUT"):
            r = shim.get(target, method=method)
            assert (r.status, r.json()) == (200, {"origin": True}), (target, method, r.body)
            assert shim.origin.targets[-1] == forwarded
    # Targets that are not a path (absolute form, or "@host:port/..." that a naive origin + target
    # would turn into http://origin@host:port/...) are refused, whatever the method.
    for target in (f"@127.0.0.1:{other}/x", f"http://127.0.0.1:{other}/x", f"127.0.0.1:{other}/x"):
        for method in ("GET", "PUT", "DELETE"):
            r = shim.get(target, method=method)
            assert shim.other.targets == [], f"{method} {target} reached the other server"
            assert r.status == 400 and r.error(), (target, method, r.status, r.body)


# --- 4. slow mirrors do not starve quick requests --------------------------------------------------


def _quick_requests_answer(shim: Shim, by_branch: bool = True) -> None:
    """/_hfbt/health, a cached revision and a cached file, each within a second. `by_branch`: also by
    "main", whose cache entry lasts only seconds (refreshing it asks the tracker again)."""
    revs = [COMMIT, "main"] if by_branch else [COMMIT]
    checks: list[tuple[str, Callable[[httpx.Response], bool]]] = [
        ("/_hfbt/health", lambda r: r.json() == {"ok": True})
    ]
    for rev in revs:
        checks.append((f"/api/models/{REPO}/revision/{rev}", lambda r: r.json()["sha"] == COMMIT))
        checks.append((f"/{REPO}/resolve/{rev}/config.json", lambda r: r.content == CONFIG))
    with httpx.Client(base_url=_url(shim), timeout=5) as c:
        for path, check in checks:
            t = time.monotonic()
            r = c.get(path)
            assert r.status_code == 200 and check(r), (path, r.status_code, r.text[:200])
            assert time.monotonic() - t < 1.0, path


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _slow(shim: Shim, pool: ThreadPoolExecutor, name: str) -> Future:
    return pool.submit(httpx.get, f"{_url(shim)}/api/models/pending/{name}", timeout=30)


def test_quick_requests_answer_while_many_wait_for_a_mirror(shim: Shim) -> None:
    _quick_requests_answer(shim)  # warm: the revision is cached
    slow = 45  # more than Starlette's 40 threadpool threads
    with ThreadPoolExecutor(slow + 5) as pool:
        futures = [_slow(shim, pool, f"r{i}") for i in range(slow)]
        try:
            _wait_until(lambda: shim.node.waiting >= min(slow, 40))
            time.sleep(0.2)
            _quick_requests_answer(shim)
            assert shim.node.waiting == slow  # all of them wait at once, none was turned away
            # More callers of a revision already waited for share its one tracker call.
            futures += [_slow(shim, pool, "r0") for _ in range(5)]
            time.sleep(0.3)
            assert shim.node.asked.count(("model", "pending/r0", "main")) == 1
            assert not any(f.done() for f in futures)
        finally:
            shim.node.release.set()
        results = [f.result(timeout=20) for f in futures]
    assert all(r.status_code == 404 and r.json()["error"] for r in results)


def test_over_the_bound_a_slow_request_gets_a_503_with_retry_after(shim: Shim) -> None:
    _quick_requests_answer(shim)
    bound, over = shim_app.SLOW_PENDING, 10
    with ThreadPoolExecutor(bound + over) as pool:
        futures = [_slow(shim, pool, f"r{i}") for i in range(bound + over)]
        try:
            _wait_until(lambda: shim.node.waiting == bound and sum(f.done() for f in futures) == over)
            _quick_requests_answer(shim, by_branch=False)
        finally:
            shim.node.release.set()
        results = [f.result(timeout=20) for f in futures]
    busy = [r for r in results if r.status_code == 503]
    assert len(busy) == over
    assert all(r.headers["retry-after"].isdigit() and "busy" in r.json()["error"] for r in busy)


def _url(shim: Shim) -> str:
    return f"http://127.0.0.1:{shim.port}"


# --- 6. bytes are bound to the Hub's hash ---------------------------------------------------------


def test_swarm_bytes_that_fail_the_hub_hash_never_make_a_complete_response(shim: Shim) -> None:
    shim.node.swarm_bytes = BAD
    # The node's own check fails too (its pull raises), but the whole-file stream does not need it.
    shim.node.pull_outcome = lambda f: None
    r = shim.get(f"/{REPO}/resolve/main/big.safetensors", timeout=30)
    assert r.status == 200 and int(r.headers["content-length"]) == len(BIG)
    assert not r.complete
    assert len(r.body) < len(BIG)  # cut before the last bytes: the client cannot store it as whole
    assert r.body == BAD[: len(r.body)]


def test_a_range_is_complete_only_once_the_node_verified_the_blob(shim: Shim) -> None:
    def integrity_error(f: Future) -> None:
        f.set_exception(HfbtError("Integrity", "big.safetensors: downloaded bytes do not match"))

    shim.node.swarm_bytes = BAD
    shim.node.pull_outcome = integrity_error
    for value in ("bytes=10-99", f"bytes={PIECE_LENGTH - 5}-{PIECE_LENGTH + 5}", "bytes=-10"):
        r = shim.get(f"/{REPO}/resolve/main/big.safetensors", headers={"Range": value}, timeout=30)
        assert r.status == 206 and not r.complete, value
    shim.node.swarm_bytes = BIG
    shim.node.pull_outcome = lambda f: f.set_result(Path("/snapshot"))
    r = shim.get(f"/{REPO}/resolve/main/big.safetensors", headers={"Range": "bytes=10-99"})
    assert (r.status, r.complete, r.body) == (206, True, BIG[10:100])


def test_a_range_is_cut_on_the_nodes_own_verdict(shim: Shim) -> None:
    # A node that tells a blob's verdict (Node.blob_verified) is believed at once, its pull still running.
    shim.node.swarm_bytes = BAD
    shim.node.pull_outcome = lambda f: None
    shim.node.blob_verified = lambda etag, timeout=0.0: False  # type: ignore[attr-defined]
    shim.node.blob_failure = lambda etag: "sha256 mismatch"  # type: ignore[attr-defined]
    r = shim.get(f"/{REPO}/resolve/main/big.safetensors", headers={"Range": "bytes=10-99"}, timeout=30)
    assert r.status == 206 and not r.complete
    shim.node.swarm_bytes = BIG
    shim.node.blob_verified = lambda etag, timeout=0.0: True  # type: ignore[attr-defined]
    r = shim.get(f"/{REPO}/resolve/main/big.safetensors", headers={"Range": "bytes=10-99"}, timeout=30)
    assert (r.status, r.complete, r.body) == (206, True, BIG[10:100])


def test_good_swarm_bytes_make_a_complete_response(shim: Shim) -> None:
    shim.node.pull_outcome = lambda f: None  # the whole file is checked by the stream itself
    r = shim.get(f"/{REPO}/resolve/main/big.safetensors", timeout=30)
    assert (r.status, r.complete) == (200, True)
    assert r.body == BIG
