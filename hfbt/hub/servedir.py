"""serve-dir: a folder served as a Hugging Face Hub-compatible origin.

It answers the subset of the Hub protocol the stock `huggingface_hub` client uses to read a repo
(`/api/{models|datasets}/...` info, tree, paths-info, refs, and `/resolve/` HEAD/GET with ranges), so
tests, benches and air-gapped clusters can use a local folder in place of huggingface.co. It also counts
the body bytes it serves (`/_hfbt/stats`): that is how tests and benches measure origin traffic.

Layout: with `cfg.repo` set, `cfg.directory` is that one repo; otherwise it holds
`models/<org>/<name>/` and `datasets/<org>/<name>/`, each a repo. The folder is rescanned on every
request (so edits show up at once as a new commit); file hashes are cached by (path, size, mtime_ns).

Only what lies inside the served folder is served: a symlink is followed only when its target
resolves inside it (or, for an HF cache snapshot folder, inside that repo's blobs/), so a link to
/etc/passwd or a sibling folder is neither listed nor read. With HFBT_ORIGIN_TOKEN every route but
`/_hfbt/health` requires it, the stats included.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import BinaryIO

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from hfbt.config import ServeDirConfig
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.hub.readapi import (
    DEFAULT_BRANCH,
    AnyPath,
    HubError,
    HubRequest,
    RepoFile,
    Snapshot,
    bad_request,
    commit_of,
    head_response,
    lfs_pointer,
    range_headers,
    read_request,
    resolve_target,
    route,
    tree_oids,
)
from hfbt.manifest import ManifestError, check_path, check_repo_id, check_repo_type, check_revision, is_lfs

MiB = 1024 * 1024
STREAM_CHUNK = 1 * MiB
HASH_CHUNK = 8 * MiB
_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------------------
# The repo model: a snapshot of a folder at one moment, with Hub hashes.


@dataclass(frozen=True)
class _Stat:
    rel: str
    abs_path: Path
    size: int
    mtime_ns: int


def scan_folder(root: Path, allowed: tuple[Path, ...] | None = None) -> list[_Stat]:
    """Regular files under `root`, hidden names (.git, .cache, ...) skipped, sorted by repo path.

    `allowed`: the resolved folders a file may really be in (default: `root` itself, and the blobs/
    of an HF cache snapshot folder); a symlink leading anywhere else is left out. Directory symlinks
    are not descended into (os.walk's default), so a linked folder cannot widen the tree either.
    """
    roots = allowed if allowed is not None else allowed_roots(root)
    out: list[_Stat] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            abs_path = Path(dirpath, name)
            real = inside(abs_path, roots)
            if real is None:
                continue  # a link out of the served folder, a dangling link or a file deleted meanwhile
            try:
                st = real.stat()
            except OSError:
                continue
            rel = abs_path.relative_to(root).as_posix()
            if not stat.S_ISREG(st.st_mode) or not _valid_path(rel):
                continue
            out.append(_Stat(rel, real, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda s: s.rel)
    return out


def allowed_roots(root: Path) -> tuple[Path, ...]:
    """Where the files of a folder served as `root` may really lie, resolved.

    An HF cache snapshot folder (`<repo>/snapshots/<commit>/`) holds symlinks to `<repo>/blobs/`: that
    one sibling is allowed too, so such a folder can be served as it is.
    """
    real = root.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append((real.parent.parent / "blobs").resolve())
    return tuple(roots)


def inside(path: Path, roots: tuple[Path, ...]) -> Path | None:
    """`path` with every symlink resolved, if that lies in one of `roots`; else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    return real if any(real == r or real.is_relative_to(r) for r in roots) else None


def _valid_path(rel: str) -> bool:
    try:
        check_path(rel)
    except ManifestError:
        return False  # a name we could not serve safely (control characters, backslash): leave it out
    return True


class HashCache:
    """Content hashes keyed by (path, size, mtime_ns): a large repo is hashed once, not per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[Path, tuple[int, int, bool, str]] = {}

    def get(self, s: _Stat, lfs: bool) -> str | None:
        with self._lock:
            hit = self._by_path.get(s.abs_path)
        if hit is not None and hit[:3] == (s.size, s.mtime_ns, lfs):
            return hit[3]
        return None

    def fill(self, stats: list[tuple[_Stat, bool]]) -> None:
        """Hash the missing entries, several files in parallel (hashlib releases the GIL)."""
        missing = [(s, lfs) for s, lfs in stats if self.get(s, lfs) is None]
        if not missing:
            return
        with ThreadPoolExecutor(max_workers=min(_HASH_WORKERS, len(missing))) as pool:
            for (s, lfs), digest in zip(missing, pool.map(_digest_stable, missing), strict=True):
                with self._lock:
                    # Replacing the path's entry drops the stale hash of an edited file.
                    self._by_path[s.abs_path] = (s.size, s.mtime_ns, lfs, digest)


def _digest_stable(item: tuple[_Stat, bool]) -> str:
    s, lfs = item
    digest = _digest(s.abs_path, s.size, lfs)
    try:
        after = s.abs_path.stat()
    except OSError as e:
        raise HubError(503, f"{s.rel} disappeared while being hashed, retry") from e
    if (after.st_size, after.st_mtime_ns) != (s.size, s.mtime_ns):
        # A hash of a file that changed under us matches no version of it: refuse rather than lie.
        raise HubError(503, f"{s.rel} changed while being hashed, retry")
    return digest


def _digest(path: Path, size: int, lfs: bool) -> str:
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def build_snapshot(repo_type: str, repo_id: str, listing: list[_Stat], hashes: HashCache) -> Snapshot:
    flagged = [(s, is_lfs(s.rel, s.size)) for s in listing]
    hashes.fill(flagged)
    files: dict[str, RepoFile] = {}
    for s, lfs in flagged:
        digest = hashes.get(s, lfs)
        if digest is None:  # the cache entry was replaced by a concurrent newer scan: rehash this one
            digest = _digest_stable((s, lfs))
        files[s.rel] = _repo_file(s, lfs, digest)
    newest = max((s.mtime_ns for s in listing), default=0)
    return Snapshot(
        repo_type=repo_type,
        repo_id=repo_id,
        commit=commit_of(files.values()),
        files=files,
        folders=tree_oids(files.values()),
        last_modified=_iso(newest),
    )


def _repo_file(s: _Stat, lfs: bool, digest: str) -> RepoFile:
    if not lfs:
        return RepoFile(s.rel, s.size, s.abs_path, etag=digest, blob_id=digest, mtime_ns=s.mtime_ns)
    pointer = lfs_pointer(digest, s.size)
    return RepoFile(
        s.rel,
        s.size,
        s.abs_path,
        etag=digest,
        blob_id=git_blob_sha1_bytes(pointer),
        sha256=digest,
        pointer_size=len(pointer),
        mtime_ns=s.mtime_ns,
    )


def _iso(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class FolderRepos:
    """Finds repos in the served folder and keeps their latest snapshot while the folder is unchanged."""

    def __init__(self, cfg: ServeDirConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.directory).expanduser().resolve()
        self.hashes = HashCache()
        self._lock = threading.Lock()
        self._memo: dict[Path, tuple[tuple, Snapshot]] = {}

    def repo_dir(self, repo_type: str, repo_id: str) -> Path | None:
        if self.cfg.repo is not None:
            if (repo_type, repo_id) == (self.cfg.repo_type, self.cfg.repo) and self.root.is_dir():
                return self.root
            return None
        # Multi-repo layout: only namespace/name ids, whose parts check_repo_id keeps free of "." and "..".
        if "/" not in repo_id:
            return None
        d = self.root / f"{repo_type}s" / repo_id
        # A repo folder (or its org folder) that is a symlink out of the served folder is not a repo here.
        real = inside(d, (self.root,))
        return real if real is not None and real.is_dir() else None

    def exists(self, repo_type: str, repo_id: str) -> bool:
        try:
            check_repo_id(repo_id)
        except ManifestError:
            return False
        return self.repo_dir(repo_type, repo_id) is not None

    def snapshot(self, repo_type: str, repo_id: str) -> Snapshot:
        check_repo_type(repo_type)
        check_repo_id(repo_id)
        root = self.repo_dir(repo_type, repo_id)
        if root is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        listing = scan_folder(root, self._allowed())
        signature = tuple((s.rel, s.size, s.mtime_ns) for s in listing)
        # One lock: concurrent first requests for a big repo wait for one hashing pass, not one each.
        with self._lock:
            memo = self._memo.get(root)
            if memo is not None and memo[0] == signature:
                return memo[1]
            snap = build_snapshot(repo_type, repo_id, listing, self.hashes)
            snap = replace(snap, private=self.cfg.token is not None)
            self._memo[root] = (signature, snap)
            return snap

    def _allowed(self) -> tuple[Path, ...]:
        # The served folder as a whole: a link between two repos of it stays in what is served.
        return allowed_roots(self.root) if self.cfg.repo is not None else (self.root,)

    def open_file(self, f: RepoFile) -> BinaryIO | None:
        """The file's bytes as scanned; None if it is gone or now leads out of the served folder (a
        symlink swapped in since the scan). A file changed since it was hashed is a 503: its bytes
        would not match the etag the client checks them against, and the next scan has its new hash."""
        if f.abs_path is None or inside(f.abs_path, self._allowed()) is None:
            return None
        try:
            fh = open(f.abs_path, "rb")  # closed by the caller's stream
        except OSError:
            return None
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            fh.close()
            return None
        if st.st_size != f.size or (f.mtime_ns is not None and st.st_mtime_ns != f.mtime_ns):
            fh.close()
            raise HubError(503, f"{f.path} changed since it was hashed, retry", headers={"Retry-After": "1"})
        return fh

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> Snapshot:
        check_revision(revision)
        snap = self.snapshot(repo_type, repo_id)
        if revision in (DEFAULT_BRANCH, snap.commit, *self.cfg.refs):
            return snap
        # An older commit of this folder is gone for good: the folder only has its current state.
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


@dataclass
class Stats:
    """Body bytes sent by GET resolve responses, per "<repo_type>/<repo_id>/<path>"."""

    total_bytes: int = 0
    requests: int = 0
    bytes_served: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def add(self, key: str, n: int) -> None:
        with self._lock:
            self.total_bytes += n
            self.bytes_served[key] = self.bytes_served.get(key, 0) + n

    def to_dict(self) -> dict:
        with self._lock:
            return {
                "total_bytes": self.total_bytes,
                "requests": self.requests,
                "bytes_served": dict(self.bytes_served),
            }

    def reset(self) -> None:
        with self._lock:
            self.total_bytes, self.requests, self.bytes_served = 0, 0, {}


# ---------------------------------------------------------------------------------------------------------
# HTTP: one catch-all route parsing the raw path, because revisions arrive with "/" encoded as %2F and
# Starlette decodes %2F before routing.


def create_app(cfg: ServeDirConfig) -> FastAPI:
    origin = FolderRepos(cfg)
    stats = Stats()
    limit = RateLimit(cfg.max_mbit)
    app = FastAPI(title="hfbt origin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.origin = origin
    app.state.stats = stats

    def authorized(request: Request) -> bool:
        if cfg.token is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, f"Bearer {cfg.token}".encode("latin-1", "replace"))

    @app.get("/_hfbt/health")
    def health() -> dict:
        # Says nothing about the repos: what a container healthcheck may ask without the token.
        return {"ok": True}

    @app.get("/_hfbt/stats")
    def get_stats(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized("the stats need the origin's token")
        return JSONResponse(stats.to_dict())

    @app.post("/_hfbt/stats/reset")
    def reset_stats(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized("resetting the stats needs the origin's token")
        stats.reset()
        return JSONResponse({"ok": True})

    async def hub(request: Request) -> Response:
        try:
            req = await read_request(request)
            if not authorized(request):
                # What the Hub answers for a private repo without access: it does not confirm it exists.
                raise HubError(401, "Repository not found", "RepoNotFound")
            resolve = partial(_resolve, origin, stats, limit, req)
            return await run_in_threadpool(route, origin, req, resolve)
        except HubError as e:
            return e.response()
        except ManifestError as e:
            return bad_request(e).response()

    app.router.routes.append(AnyPath(hub, methods=["GET", "HEAD", "POST"]))
    return app


def _unauthorized(why: str) -> Response:
    return HubError(401, why, headers={"WWW-Authenticate": "Bearer"}).response()


def serve(cfg: ServeDirConfig) -> None:
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)


def _resolve(
    origin: FolderRepos, stats: Stats, limit: RateLimit, req: HubRequest, repo_type: str, rest: list[str]
) -> Response:
    repo_id, revision, path = resolve_target(origin, req, repo_type, rest)
    snap = origin.resolve(repo_type, repo_id, revision)
    f = snap.files.get(path)
    if f is None or f.abs_path is None:
        # With X-Repo-Commit the client records the miss in .no_exist/<commit>/ and stops asking.
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit})
    if req.method == "HEAD":
        return head_response(snap, f)
    status, start, end, headers = range_headers(req, snap, f)
    # Opened here, not in the body generator: a file gone since the scan still gets a clean 404.
    fh = origin.open_file(f)  # closed by _stream, or by GC if the body is never sent
    if fh is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit})
    key = f"{repo_type}/{repo_id}/{path}"
    stats.count_request()
    body = _stream(fh, start, end - start, lambda n: stats.add(key, n), limit)
    return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")


def _stream(
    f: BinaryIO, start: int, length: int, sent: Callable[[int], None], limit: RateLimit
) -> Iterator[bytes]:
    with f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(limit.chunk, length))
            limit.take(len(chunk))
            if not chunk:
                return  # the file shrank under us: the short body makes the client resume with a Range
            yield chunk
            # Starlette asks for the next chunk only once this one is written, so this counts bytes
            # actually handed to the socket; a download cut off mid-way counts what went out.
            sent(len(chunk))
            length -= len(chunk)


class RateLimit:
    """One pace for all responses together, like a single slow uplink (--max-mbit; 0 = unlimited)."""

    def __init__(self, mbit: float) -> None:
        self.rate = mbit * 1_000_000 / 8
        # Small chunks under a cap keep concurrent responses interleaved instead of bursty.
        self.chunk = STREAM_CHUNK if not self.rate else max(16 * 1024, min(STREAM_CHUNK, int(self.rate / 20)))
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + n / self.rate
        if slot > now:
            time.sleep(slot - now)
