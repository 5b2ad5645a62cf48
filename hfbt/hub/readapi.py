"""The Hugging Face Hub's read API as hfbt serves it: shared by serve-dir (hfbt/hub/servedir.py) and the
HF_ENDPOINT shim (hfbt/shim/), so both answer the stock `huggingface_hub` client identically.

A `Backend` supplies repo snapshots; this module turns requests into the Hub's JSON, headers and
errors: `/api/{models|datasets}/{repo}[/revision/{rev}]`, `/tree/{rev}[/{path}]` (paginated with
`Link`), `/paths-info/{rev}`, `/refs`, and the metadata and Range rules of `/resolve/`. Revisions
arrive percent-encoded including "/" (refs%2Fpr%2F1), and Starlette decodes %2F before routing, so
requests are parsed from the raw path by one catch-all route.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, QueryParams
from starlette.routing import Match, Route
from starlette.types import Scope

from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import Manifest, ManifestError, check_path, check_repo_id, check_revision


class Backend(Protocol):
    def exists(self, repo_type: str, repo_id: str) -> bool: ...

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> Snapshot: ...


PAGE_SIZE = 1000  # the Hub's tree page size; 50 with expand=true

EXPAND_PAGE_SIZE = 50

MAX_PAGE_SIZE = 10_000

MAX_FORM_BYTES = 1024 * 1024

DEFAULT_BRANCH = "main"

BAD_REQUEST = "BadRequest"  # X-Error-Code of a malformed request (serve-dir has always sent it)

_API_WORDS = frozenset({"revision", "tree", "paths-info", "refs"})

# Integers from the wire are ASCII digits only: str.isdigit() accepts "²" (int() then fails) and int()
# accepts "٣", " 3", "+3" and "3_0". Bounded in length so int() never meets its 4300-digit limit.
_ASCII_INT = re.compile(r"[0-9]{1,20}")
_HUGE = 10**20  # stands for any longer digit string: past every file size and page offset
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", re.IGNORECASE | re.ASCII)
MAX_REPO_ID_CHARS = 96 * 2 + 1


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


def not_found() -> HubError:
    return HubError(404, "Not found")


def bad_request(e: ManifestError) -> HubError:
    return HubError(400, str(e), BAD_REQUEST)


def valid_repo_id(repo_id: str) -> str:
    """hfbt.manifest.check_repo_id, plus what it lets through (a trailing newline matches its "$")."""
    try:
        check_repo_id(repo_id)
    except ManifestError as e:
        raise bad_request(e) from None
    if len(repo_id) > MAX_REPO_ID_CHARS or not repo_id.isascii() or not repo_id.isprintable():
        raise HubError(400, f"invalid repo id {repo_id[:100]!r}: control or non-ASCII character", BAD_REQUEST)
    return repo_id


def valid_revision(revision: str) -> str:
    """hfbt.manifest.check_revision, plus git's check-ref-format rules it may let through ("." or
    "a//b" would name no ref, and a ref file named "." cannot be written to a cache's refs/)."""
    try:
        check_revision(revision)
    except ManifestError as e:
        raise bad_request(e) from None
    problem = _ref_problem(revision)
    if problem:
        raise HubError(400, f"invalid revision {revision[:100]!r}: {problem}", BAD_REQUEST)
    return revision


def _ref_problem(ref: str) -> str | None:
    if not ref.isprintable():
        return "control or unprintable character"
    if ref == "@" or "@{" in ref:
        return "'@' alone and '@{' are not allowed"
    parts = ref.split("/")
    if any(not p for p in parts):
        return "empty path component"
    if ref.endswith(".") or any(p.startswith(".") or p.endswith(".lock") for p in parts):
        return "it cannot end with '.', nor a component start with '.' or end with '.lock'"
    return None


def valid_path(path: str) -> str:
    try:
        return check_path(path)
    except ManifestError as e:
        raise bad_request(e) from None


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    abs_path: Path | None  # where serve-dir reads it; None when the bytes come from the swarm
    etag: str  # what the Hub sends as ETag: sha256 for LFS files, git blob sha1 otherwise
    blob_id: str  # git blob sha1 of what git stores: the file itself, or its LFS pointer for LFS files
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None  # LFS files only
    mtime_ns: int | None = None  # serve-dir: the file as hashed; one that changed since is not served


@dataclass(frozen=True)
class Snapshot:
    repo_type: str
    repo_id: str
    commit: str
    files: dict[str, RepoFile]  # sorted by path
    folders: dict[str, str]  # folder path ("" = root) → git tree sha1
    last_modified: str
    private: bool = False


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer git stores for an LFS file; the Hub's blob id of an LFS file is its git sha1."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


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


@dataclass(frozen=True)
class HubRequest:
    method: str
    segs: list[str]  # percent-decoded path segments, split on the raw "/"
    raw_path: str
    base_url: str
    query: QueryParams
    headers: Headers
    body: bytes


class AnyPath(Route):
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


async def read_request(request: Request) -> HubRequest:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    raw_path = raw.decode("latin-1")
    if not raw_path.startswith("/"):
        # An absolute-form or "@host/..." target: splitting it on "/" would drop its first part unseen.
        raise HubError(400, "the request target must be a path starting with '/'", BAD_REQUEST)
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
    return HubRequest(
        method=request.method,
        segs=segs,
        raw_path=raw_path,
        base_url=str(request.base_url).rstrip("/"),
        query=request.query_params,
        headers=request.headers,
        body=body,
    )


def split_repo(
    backend: Backend, repo_type: str, rest: list[str], words: frozenset[str]
) -> tuple[str, list[str]]:
    """Split "org/name/<word>/..." or legacy "name/<word>/..." into (repo_id, rest after the id)."""
    if not rest or not rest[0]:
        raise not_found()
    if len(rest) >= 2 and (rest[1] not in words or backend.exists(repo_type, f"{rest[0]}/{rest[1]}")):
        return f"{rest[0]}/{rest[1]}", rest[2:]
    return rest[0], rest[1:]


def api(backend: Backend, req: HubRequest, repo_type: str, rest: list[str]) -> Response:
    repo_id, tail = split_repo(backend, repo_type, rest, _API_WORDS)
    # Checked before anything reads a folder or asks the tracker: a bad id is a 400 whatever exists.
    valid_repo_id(repo_id)
    reading = req.method in ("GET", "HEAD")
    if not tail and reading:
        return _info(backend, req, repo_type, repo_id, DEFAULT_BRANCH)
    word, args = (tail[0], tail[1:]) if tail else ("", [])
    if word == "revision" and len(args) == 1 and reading:
        return _info(backend, req, repo_type, repo_id, valid_revision(args[0]))
    if word == "tree" and args and reading:
        return _tree(backend, req, repo_type, repo_id, valid_revision(args[0]), _subpath(args[1:]))
    if word == "paths-info" and len(args) == 1 and req.method == "POST":
        return _paths_info(backend, req, repo_type, repo_id, valid_revision(args[0]))
    if word == "refs" and not args and reading:
        return _refs(backend, req, repo_type, repo_id)
    raise not_found()


def _subpath(parts: list[str]) -> str:
    path = "/".join(parts).rstrip("/")
    return valid_path(path) if path else ""


def _info(backend: Backend, req: HubRequest, repo_type: str, repo_id: str, revision: str) -> Response:
    snap = backend.resolve(repo_type, repo_id, revision)
    blobs = _flag(req.query.get("blobs"))
    body = {
        "_id": snap.commit[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": snap.commit,
        "lastModified": snap.last_modified,
        "createdAt": snap.last_modified,
        "private": snap.private,
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


def _tree(
    backend: Backend, req: HubRequest, repo_type: str, repo_id: str, revision: str, path: str
) -> Response:
    snap = backend.resolve(repo_type, repo_id, revision)
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


def _paths_info(backend: Backend, req: HubRequest, repo_type: str, repo_id: str, revision: str) -> Response:
    snap = backend.resolve(repo_type, repo_id, revision)
    form = parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    expand = any(k == "expand" and _flag(v) for k, v in form)
    out = []
    for key, value in form:
        path = value.rstrip("/")
        if key != "paths" or not path:
            continue
        valid_path(path)
        if path in snap.files:
            out.append(_entry(snap, "file", path, expand))
        elif path in snap.folders:
            out.append(_entry(snap, "directory", path, expand))
    return JSONResponse(out)


def _refs(backend: Backend, req: HubRequest, repo_type: str, repo_id: str) -> Response:
    snap = backend.resolve(repo_type, repo_id, DEFAULT_BRANCH)
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
    number = ascii_int(value)
    if number is None or not 1 <= number <= MAX_PAGE_SIZE:
        raise HubError(400, f"{name} must be an integer between 1 and {MAX_PAGE_SIZE}", BAD_REQUEST)
    return number


def ascii_int(value: str) -> int | None:
    """The value of a string of ASCII digits, _HUGE for a longer one than _ASCII_INT takes; else None."""
    digits = value.lstrip("0") or ("0" if value else "")
    if len(digits) > 20 and digits.isascii() and digits.isdigit():
        return _HUGE
    return int(digits) if _ASCII_INT.fullmatch(digits) else None


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _decode_cursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        offset = ascii_int(base64.urlsafe_b64decode(value.encode()).decode("ascii"))
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        offset = None
    if offset is None:
        raise HubError(400, "invalid cursor: use the one from the previous page's Link header", BAD_REQUEST)
    return offset


def file_headers(snap: Snapshot, f: RepoFile) -> dict[str, str]:
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


def parse_range(value: str | None, size: int, commit: str) -> tuple[int, int]:
    """The [start, end) to send. A missing, multi-range or malformed header means the whole file
    (RFC 9110 lets a server ignore a Range it cannot parse); a well-formed one past the end is a 416."""
    if not value:
        return 0, size
    m = _RANGE.fullmatch(value)
    if m is None or not (m[1] or m[2]):
        return 0, size
    first, last = ascii_int(m[1]), ascii_int(m[2])
    if first is None:  # suffix range "bytes=-N": the last N bytes
        assert last is not None
        if last == 0 or size == 0:
            raise _unsatisfiable(value, size, commit)
        return max(0, size - last), size
    if first >= size or (last is not None and last < first):
        raise _unsatisfiable(value, size, commit)
    return first, size if last is None else min(last + 1, size)


def _unsatisfiable(value: str, size: int, commit: str) -> HubError:
    headers = {"Content-Range": f"bytes */{size}", "X-Repo-Commit": commit}
    return HubError(416, f"range {value!r} not satisfiable for a file of {size} bytes", headers=headers)


def _ascii(name: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name)


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:500]


def snapshot_from_manifest(manifest: Manifest, last_modified: str = "1970-01-01T00:00:00.000Z") -> Snapshot:
    """The Hub's view of a revision from hfbt's manifest (no local paths: bytes come from the swarm)."""
    files: dict[str, RepoFile] = {}
    for f in sorted(manifest.files, key=lambda f: f.path):
        if f.sha256 is None:
            files[f.path] = RepoFile(f.path, f.size, None, etag=f.etag, blob_id=f.etag)
        else:
            pointer = lfs_pointer(f.sha256, f.size)
            files[f.path] = RepoFile(
                f.path,
                f.size,
                None,
                etag=f.etag,
                blob_id=git_blob_sha1_bytes(pointer),
                sha256=f.sha256,
                pointer_size=len(pointer),
            )
    return Snapshot(
        repo_type=manifest.repo_type,
        repo_id=manifest.repo_id,
        commit=manifest.commit,
        files=files,
        folders=tree_oids(files.values()),
        last_modified=last_modified,
        private=manifest.private,
    )


def resolve_target(
    backend: Backend, req: HubRequest, repo_type: str, rest: list[str]
) -> tuple[str, str, str]:
    """(repo_id, revision, path) of a /resolve/ request, every part checked, or a Hub error."""
    repo_id, tail = split_repo(backend, repo_type, rest, frozenset({"resolve"}))
    if len(tail) < 3 or tail[0] != "resolve" or req.method == "POST":
        raise not_found()
    revision, path = tail[1], "/".join(tail[2:])
    # Check the syntax of everything first, so bad input gets a 400 whatever exists.
    return valid_repo_id(repo_id), valid_revision(revision), valid_path(path)


def head_response(snap: Snapshot, f: RepoFile) -> Response:
    # Explicit Content-Length: a bare HEAD Response would say 0 and the client would store an empty file.
    return Response(status_code=200, headers={**file_headers(snap, f), "Content-Length": str(f.size)})


def range_headers(req: HubRequest, snap: Snapshot, f: RepoFile) -> tuple[int, int, int, dict[str, str]]:
    """(status, start, end, headers) for a GET of `f`, honouring Range (206 + Content-Range)."""
    headers = file_headers(snap, f)
    start, end = parse_range(req.headers.get("range"), f.size, snap.commit)
    status = 200
    if (start, end) != (0, f.size):
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    headers["Content-Length"] = str(end - start)
    return status, start, end, headers


def route(backend: Backend, req: HubRequest, on_resolve: Callable[[str, list[str]], Response]) -> Response:
    """/api/... is answered here; /{repo}/resolve/... and /datasets/{repo}/resolve/... go to on_resolve."""
    segs = req.segs
    if len(segs) >= 3 and segs[0] == "api" and segs[1] in ("models", "datasets"):
        return api(backend, req, segs[1][:-1], segs[2:])
    if segs and segs[0] == "datasets":
        return on_resolve("dataset", segs[1:])
    return on_resolve("model", segs)
