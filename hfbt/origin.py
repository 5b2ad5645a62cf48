"""serve-dir: a folder served as a Hugging Face Hub-compatible origin.

It answers the subset of the Hub protocol the stock `huggingface_hub` client uses to read a repo
(`/api/{models|datasets}/...` info, tree, paths-info, refs, and `/resolve/` HEAD/GET with ranges), so
tests, benches and air-gapped clusters can use a local folder in place of huggingface.co. It also counts
the body bytes it serves (`/_hfbt/stats`): that is how tests and benches measure origin traffic.

Layout: with `cfg.repo` set, `cfg.directory` is that one repo; otherwise it holds
`models/<org>/<name>/` and `datasets/<org>/<name>/`, each a repo. The folder is rescanned on every
request (so edits show up at once as a new commit); file hashes are cached by (path, size, mtime_ns).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.routing import Match, Route
from starlette.types import Scope

from hfbt.config import OriginConfig
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import ManifestError, check_path, check_repo_id, check_repo_type, check_revision, is_lfs

MiB = 1024 * 1024
PAGE_SIZE = 1000  # the Hub's tree page size; 50 with expand=true
EXPAND_PAGE_SIZE = 50
MAX_PAGE_SIZE = 10_000
STREAM_CHUNK = 1 * MiB
HASH_CHUNK = 8 * MiB
MAX_FORM_BYTES = 1 * MiB
DEFAULT_BRANCH = "main"
_API_WORDS = frozenset({"revision", "tree", "paths-info", "refs"})
_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))


class HubError(Exception):
    """A client-visible error, rendered the way the Hub does: status, X-Error-Code and {"error": ...}."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        headers = {"X-Error-Message": _header_safe(self.message), **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def _not_found() -> HubError:
    return HubError(404, "Not found")


# ---------------------------------------------------------------------------------------------------------
# The repo model: a snapshot of a folder at one moment, with Hub hashes.


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    abs_path: Path
    etag: str  # what the Hub sends as ETag: sha256 for LFS files, git blob sha1 otherwise
    blob_id: str  # git blob sha1 of what git stores: the file itself, or its LFS pointer for LFS files
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None  # LFS files only


@dataclass(frozen=True)
class Snapshot:
    repo_type: str
    repo_id: str
    commit: str
    files: dict[str, RepoFile]  # sorted by path
    folders: dict[str, str]  # folder path ("" = root) → git tree sha1
    last_modified: str


@dataclass(frozen=True)
class _Stat:
    rel: str
    abs_path: Path
    size: int
    mtime_ns: int


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer git stores for an LFS file; the Hub's blob id of an LFS file is its git sha1."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def scan_folder(root: Path) -> list[_Stat]:
    """Regular files under `root`, hidden names (.git, .cache, ...) skipped, sorted by repo path."""
    out: list[_Stat] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            abs_path = Path(dirpath, name)
            try:
                st = abs_path.stat()  # follows symlinks: an HF cache snapshot folder can be served as is
            except OSError:
                continue  # a dangling symlink or a file deleted while we walk
            rel = abs_path.relative_to(root).as_posix()
            if not stat.S_ISREG(st.st_mode) or not _valid_path(rel):
                continue
            out.append(_Stat(rel, abs_path, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda s: s.rel)
    return out


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
        return RepoFile(s.rel, s.size, s.abs_path, etag=digest, blob_id=digest)
    pointer = lfs_pointer(digest, s.size)
    return RepoFile(
        s.rel,
        s.size,
        s.abs_path,
        etag=digest,
        blob_id=git_blob_sha1_bytes(pointer),
        sha256=digest,
        pointer_size=len(pointer),
    )


def commit_of(files: Iterable[RepoFile]) -> str:
    """A stable pseudo-commit: sha1 over sorted "path\\0etag\\n" lines; changes whenever any content does."""
    h = hashlib.sha1()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.etag}\n".encode())
    return h.hexdigest()


def tree_oids(files: Iterable[RepoFile]) -> dict[str, str]:
    """Git tree sha1 of every folder ("" = root), as git would compute it with LFS pointers as blobs."""
    children: dict[str, dict[str, tuple[bool, str]]] = {"": {}}  # folder → name → (is_folder, oid or path)
    for f in files:
        parts = f.path.split("/")
        for depth in range(len(parts) - 1):
            parent, folder = "/".join(parts[:depth]), "/".join(parts[: depth + 1])
            children.setdefault(folder, {})
            children[parent][parts[depth]] = (True, folder)
        children["/".join(parts[:-1])][parts[-1]] = (False, f.blob_id)
    oids: dict[str, str] = {}
    for folder in sorted(children, key=_depth, reverse=True):  # children before their parent
        entries = []
        for name, (is_folder, ref) in children[folder].items():
            oid = oids[ref] if is_folder else ref
            # git orders tree entries by name, with folder names compared as if they ended with "/"
            sort_key = (name + "/" if is_folder else name).encode()
            mode = b"40000" if is_folder else b"100644"
            entries.append((sort_key, mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)))
        body = b"".join(e for _, e in sorted(entries))
        oids[folder] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return oids


def _depth(folder: str) -> int:
    return folder.count("/") + 1 if folder else 0


def _iso(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Origin:
    """Finds repos in the served folder and keeps their latest snapshot while the folder is unchanged."""

    def __init__(self, cfg: OriginConfig) -> None:
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
        return d if d.is_dir() else None

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
        listing = scan_folder(root)
        signature = tuple((s.rel, s.size, s.mtime_ns) for s in listing)
        # One lock: concurrent first requests for a big repo wait for one hashing pass, not one each.
        with self._lock:
            memo = self._memo.get(root)
            if memo is not None and memo[0] == signature:
                return memo[1]
            snap = build_snapshot(repo_type, repo_id, listing, self.hashes)
            self._memo[root] = (signature, snap)
            return snap

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> Snapshot:
        check_revision(revision)
        snap = self.snapshot(repo_type, repo_id)
        if revision in (DEFAULT_BRANCH, snap.commit):
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


@dataclass(frozen=True)
class _Req:
    method: str
    segs: list[str]  # percent-decoded path segments, split on the raw "/"
    raw_path: str
    base_url: str
    query: QueryParams
    headers: Headers
    body: bytes


def create_app(cfg: OriginConfig) -> FastAPI:
    origin = Origin(cfg)
    stats = Stats()
    limit = RateLimit(cfg.max_mbit)
    app = FastAPI(title="hfbt origin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.origin = origin
    app.state.stats = stats

    @app.get("/_hfbt/stats")
    def get_stats() -> dict:
        return stats.to_dict()

    @app.post("/_hfbt/stats/reset")
    def reset_stats() -> dict:
        stats.reset()
        return {"ok": True}

    async def hub(request: Request) -> Response:
        try:
            req = await _read_request(request)
            if cfg.token is not None and not hmac.compare_digest(
                req.headers.get("authorization", ""), f"Bearer {cfg.token}"
            ):
                # What the Hub answers for a private repo without access: it does not confirm it exists.
                raise HubError(401, "Repository not found", "RepoNotFound")
            return await run_in_threadpool(_route, origin, stats, limit, req)
        except HubError as e:
            return e.response()
        except ManifestError as e:
            return HubError(400, str(e), "BadRequest").response()

    app.router.routes.append(_AnyPath(hub, methods=["GET", "HEAD", "POST"]))
    return app


def serve(cfg: OriginConfig) -> None:
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)


class _AnyPath(Route):
    """A route matching every path, so every request gets a Hub-style answer.

    Starlette's `{x:path}` convertor does not match a path holding a newline (its regex has no DOTALL),
    which would leave such requests to FastAPI's own {"detail": ...} 404.
    """

    def __init__(self, endpoint: Callable, methods: list[str]) -> None:
        super().__init__("/", endpoint, methods=methods, include_in_schema=False)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        child = {"endpoint": self.endpoint, "path_params": {}}
        return (Match.FULL if scope["method"] in self.methods else Match.PARTIAL), child


async def _read_request(request: Request) -> _Req:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    raw_path = raw.decode("latin-1")
    try:
        segs = [unquote_to_bytes(p).decode("utf-8") for p in raw_path.split("/")[1:]]
    except UnicodeDecodeError as e:
        raise HubError(400, "path is not valid UTF-8 once percent-decoded") from e
    body = b""
    if request.method == "POST":
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise HubError(413, f"request body over {MAX_FORM_BYTES} bytes")
    return _Req(
        method=request.method,
        segs=segs,
        raw_path=raw_path,
        base_url=str(request.base_url).rstrip("/"),
        query=request.query_params,
        headers=request.headers,
        body=body,
    )


def _route(origin: Origin, stats: Stats, limit: RateLimit, req: _Req) -> Response:
    segs = req.segs
    if len(segs) >= 3 and segs[0] == "api" and segs[1] in ("models", "datasets"):
        return _api(origin, req, segs[1][:-1], segs[2:])
    if segs and segs[0] == "datasets":
        return _resolve(origin, stats, limit, req, "dataset", segs[1:])
    return _resolve(origin, stats, limit, req, "model", segs)


def _split_repo(
    origin: Origin, repo_type: str, rest: list[str], words: frozenset[str]
) -> tuple[str, list[str]]:
    """Split "org/name/<word>/..." or legacy "name/<word>/..." into (repo_id, rest after the id)."""
    if not rest or not rest[0]:
        raise _not_found()
    if len(rest) >= 2 and (rest[1] not in words or origin.exists(repo_type, f"{rest[0]}/{rest[1]}")):
        return f"{rest[0]}/{rest[1]}", rest[2:]
    return rest[0], rest[1:]


def _api(origin: Origin, req: _Req, repo_type: str, rest: list[str]) -> Response:
    repo_id, tail = _split_repo(origin, repo_type, rest, _API_WORDS)
    reading = req.method in ("GET", "HEAD")
    if not tail and reading:
        return _info(origin, req, repo_type, repo_id, DEFAULT_BRANCH)
    word, args = (tail[0], tail[1:]) if tail else ("", [])
    if word == "revision" and len(args) == 1 and reading:
        return _info(origin, req, repo_type, repo_id, args[0])
    if word == "tree" and args and reading:
        return _tree(origin, req, repo_type, repo_id, args[0], _subpath(args[1:]))
    if word == "paths-info" and len(args) == 1 and req.method == "POST":
        return _paths_info(origin, req, repo_type, repo_id, args[0])
    if word == "refs" and not args and reading:
        return _refs(origin, req, repo_type, repo_id)
    raise _not_found()


def _subpath(parts: list[str]) -> str:
    path = "/".join(parts).rstrip("/")
    return check_path(path) if path else ""


# --- /api ------------------------------------------------------------------------------------------------


def _info(origin: Origin, req: _Req, repo_type: str, repo_id: str, revision: str) -> Response:
    snap = origin.resolve(repo_type, repo_id, revision)
    blobs = _flag(req.query.get("blobs"))
    body = {
        "_id": snap.commit[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": snap.commit,
        "lastModified": snap.last_modified,
        "createdAt": snap.last_modified,
        "private": origin.cfg.token is not None,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "usedStorage": sum(f.size for f in snap.files.values()),
        "siblings": [_sibling(f, blobs) for f in snap.files.values()],
    }
    if repo_type == "model":
        body["modelId"] = repo_id
    return JSONResponse(body)


def _sibling(f: RepoFile, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": f.path}
    out: dict = {"rfilename": f.path, "size": f.size, "blobId": f.blob_id}
    if f.sha256 is not None:
        # Note: "sha256" here, "oid" in the tree listing (the Hub's own inconsistency).
        out["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    return out


def _tree(origin: Origin, req: _Req, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
    snap = origin.resolve(repo_type, repo_id, revision)
    if path not in snap.folders:
        raise HubError(404, f"{path} is not a folder", "EntryNotFound", {"X-Repo-Commit": snap.commit})
    expand = _flag(req.query.get("expand"))
    entries = _tree_listing(snap, path, _flag(req.query.get("recursive")))
    limit = _int_param(req.query.get("limit"), EXPAND_PAGE_SIZE if expand else PAGE_SIZE, "limit")
    start = _decode_cursor(req.query.get("cursor"))
    page = entries[start : start + limit]
    headers = {}
    if start + limit < len(entries):
        query = [(k, v) for k, v in req.query.multi_items() if k != "cursor"] + [
            ("cursor", _cursor(start + limit))
        ]
        headers["Link"] = f'<{req.base_url}{req.raw_path}?{urlencode(query)}>; rel="next"'
    return JSONResponse([_entry(snap, kind, p, expand) for kind, p in page], headers=headers)


def _tree_listing(snap: Snapshot, path: str, recursive: bool) -> list[tuple[str, str]]:
    """(kind, path) under `path`: folders first, then files, like the Hub."""
    prefix = f"{path}/" if path else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and p != path and (recursive or "/" not in p[len(prefix) :])

    folders = [("directory", p) for p in sorted(snap.folders) if p and wanted(p)]
    return folders + [("file", p) for p in snap.files if wanted(p)]


def _entry(snap: Snapshot, kind: str, path: str, expand: bool) -> dict:
    if kind == "directory":
        out: dict = {"type": "directory", "oid": snap.folders[path], "size": 0, "path": path}
    else:
        f = snap.files[path]
        out = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.sha256 is not None:
            out["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    if expand:
        out["lastCommit"] = {
            "id": snap.commit,
            "title": "hfbt serve-dir snapshot",
            "date": snap.last_modified,
        }
    return out


def _paths_info(origin: Origin, req: _Req, repo_type: str, repo_id: str, revision: str) -> Response:
    snap = origin.resolve(repo_type, repo_id, revision)
    form = parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    expand = any(k == "expand" and _flag(v) for k, v in form)
    out = []
    for key, value in form:
        path = value.rstrip("/")
        if key != "paths" or not path:
            continue
        check_path(path)
        if path in snap.files:
            out.append(_entry(snap, "file", path, expand))
        elif path in snap.folders:
            out.append(_entry(snap, "directory", path, expand))
    return JSONResponse(out)


def _refs(origin: Origin, req: _Req, repo_type: str, repo_id: str) -> Response:
    snap = origin.snapshot(repo_type, repo_id)
    main = {"name": DEFAULT_BRANCH, "ref": f"refs/heads/{DEFAULT_BRANCH}", "targetCommit": snap.commit}
    body: dict = {"branches": [main], "converts": [], "tags": []}
    if _flag(req.query.get("include_prs")):
        body["pullRequests"] = []
    return JSONResponse(body)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _int_param(value: str | None, default: int, name: str) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise HubError(400, f"{name} must be an integer between 1 and {MAX_PAGE_SIZE}")
    return int(value)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _decode_cursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(value.encode()).decode())
    except ValueError as e:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise HubError(400, "invalid cursor") from e
    if offset < 0:
        raise HubError(400, "invalid cursor")
    return offset


# --- /resolve --------------------------------------------------------------------------------------------


def _resolve(
    origin: Origin, stats: Stats, limit: RateLimit, req: _Req, repo_type: str, rest: list[str]
) -> Response:
    repo_id, tail = _split_repo(origin, repo_type, rest, frozenset({"resolve"}))
    if len(tail) < 3 or tail[0] != "resolve" or req.method == "POST":
        raise _not_found()
    revision, path = tail[1], "/".join(tail[2:])
    # Check the syntax of everything first, so bad input gets a 400 whatever exists.
    check_repo_id(repo_id)
    check_revision(revision)
    check_path(path)
    snap = origin.resolve(repo_type, repo_id, revision)
    f = snap.files.get(path)
    if f is None:
        # With X-Repo-Commit the client records the miss in .no_exist/<commit>/ and stops asking.
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit})
    headers = _file_headers(snap, f)
    if req.method == "HEAD":
        # Explicit Content-Length: a bare HEAD Response would say 0 and the client would store an empty file.
        return Response(status_code=200, headers={**headers, "Content-Length": str(f.size)})
    start, end = _parse_range(req.headers.get("range"), f.size, snap.commit)
    status = 200
    if (start, end) != (0, f.size):
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    headers["Content-Length"] = str(end - start)
    try:
        # Opened here, not in the body generator: a file gone since the scan still gets a clean 404.
        fh = open(f.abs_path, "rb")  # closed by _stream, or by GC if the body is never sent
    except FileNotFoundError as e:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit}) from e
    key = f"{repo_type}/{repo_id}/{path}"
    stats.count_request()
    body = _stream(fh, start, end - start, lambda n: stats.add(key, n), limit)
    return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")


def _file_headers(snap: Snapshot, f: RepoFile) -> dict[str, str]:
    name = f.path.rsplit("/", 1)[-1]
    encoded = quote(name, safe="")
    headers = {
        "X-Repo-Commit": snap.commit,
        "ETag": f'"{f.etag}"',
        "Accept-Ranges": "bytes",
        # The client reads `filename="...";` (with the semicolon) for its progress bar.
        "Content-Disposition": f"inline; filename*=UTF-8''{encoded}; filename=\"{_ascii(name)}\";",
    }
    if f.sha256 is not None:
        # What the Hub sends for LFS files (there on its redirect to the CDN); the client prefers these.
        headers["X-Linked-Etag"] = f'"{f.sha256}"'
        headers["X-Linked-Size"] = str(f.size)
    return headers


def _parse_range(value: str | None, size: int, commit: str) -> tuple[int, int]:
    """The [start, end) to send. A missing, multi-range or malformed header means the whole file."""
    if not value:
        return 0, size
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return 0, size
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return 0, size
    if last and not last.isdigit():
        return 0, size
    if not first:  # suffix range "bytes=-N": the last N bytes
        start, end = max(0, size - int(last)), size
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(value, size, commit)
        return start, end
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(value, size, commit)
    return start, end


def _unsatisfiable(value: str, size: int, commit: str) -> HubError:
    headers = {"Content-Range": f"bytes */{size}", "X-Repo-Commit": commit}
    return HubError(416, f"range {value!r} not satisfiable for a file of {size} bytes", headers=headers)


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


def _ascii(name: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name)


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:500]
