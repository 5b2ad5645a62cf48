"""The revision manifest: what a revision contains and the rules every part checks (pure, no I/O).

A manifest is the contract between seed, tracker and nodes: one entry per file with its size, its
Hub etag (sha256 for LFS files, git blob sha1 otherwise) and the info-hash of the blob's torrent
once the seed has published it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import PurePosixPath
from typing import Any

PIECE_LENGTH = 4 * 1024 * 1024
REPO_TYPES = ("model", "dataset")
# Far above any file the Hub stores, far below what SQLite's 64-bit INTEGER and the piece math can hold.
MAX_FILE_SIZE = 2**48
MAX_REVISION_CHARS = 255
MAX_PATH_CHARS = 4096
MAX_SEGMENT_BYTES = 255  # NAME_MAX: a longer file name cannot be written to a node's disk

# fullmatch everywhere: "$" would also match before a trailing newline.
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The Hub's rule (huggingface_hub validate_repo_id): "name" or "namespace/name", each part 1-96 ASCII
# letters, digits, "-", "_", ".", starting and ending with a letter, digit or "_"; no "--" or "..".
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
# git check-ref-format: characters no ref may contain (control characters are checked separately).
_REF_FORBIDDEN = frozenset(" ~^:?*[\\")
# Extensions the Hub's default .gitattributes stores through LFS; anything >= 10 MiB must be LFS too.
LFS_SUFFIXES = frozenset(
    ".7z .arrow .bin .bz2 .ckpt .ftz .gguf .gz .h5 .joblib .mlmodel .model .msgpack .npy .npz .onnx .ot"
    " .parquet .pb .pickle .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst".split()
)
LFS_MIN_SIZE = 10 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest, path, repo id or revision that must be refused; the message says why."""


def is_commit(revision: str) -> bool:
    return isinstance(revision, str) and _HEX40.fullmatch(revision) is not None


def is_sha256(value: str) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or PurePosixPath(path).suffix.lower() in LFS_SUFFIXES


def _shown(value: object, limit: int = 80) -> str:
    """A value for an error message: repr'd (control characters visible) and cut to a readable length."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def check_repo_type(repo_type: str) -> str:
    if not isinstance(repo_type, str) or repo_type not in REPO_TYPES:
        raise ManifestError(f"repo type must be one of {', '.join(REPO_TYPES)}, not {_shown(repo_type)}")
    return repo_type


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or _REPO_ID.fullmatch(repo_id) is None:
        raise ManifestError(
            f"invalid repo id {_shown(repo_id)}: expected 'name' or 'namespace/name', each part 1-96 of"
            " A-Z a-z 0-9 - _ . and not starting or ending with '-' or '.'"
        )
    if "--" in repo_id or ".." in repo_id:
        raise ManifestError(f"invalid repo id {_shown(repo_id)}: '--' and '..' are not allowed")
    if repo_id.endswith(".git"):
        raise ManifestError(f"invalid repo id {_shown(repo_id)}: it cannot end with '.git'")
    return repo_id


def check_revision(revision: str) -> str:
    """A 40-hex commit, or a branch/tag name as git allows it (check-ref-format; refs/pr/N is one)."""
    if not isinstance(revision, str):
        raise ManifestError(f"invalid revision {_shown(revision)}: expected a string")
    if is_commit(revision):
        return revision
    reason = _ref_problem(revision)
    if reason:
        raise ManifestError(f"invalid revision {_shown(revision)}: {reason}")
    return revision


def _ref_problem(ref: str) -> str | None:
    if not ref:
        return "empty"
    if len(ref) > MAX_REVISION_CHARS:
        return f"longer than {MAX_REVISION_CHARS} characters"
    if any(not c.isprintable() for c in ref):
        return "control, whitespace or unencodable character"
    bad = sorted({c for c in ref if c in _REF_FORBIDDEN})
    if bad:
        return f"character {bad[0]!r} is not allowed in a branch or tag name"
    if ref == "@" or "@{" in ref:
        return "'@' alone and '@{' are not allowed"
    if ".." in ref:
        return "'..' is not allowed"
    if ref.startswith("/") or ref.endswith("/") or "//" in ref:
        return "empty path component"
    if ref.endswith("."):
        return "it cannot end with '.'"
    for part in ref.split("/"):
        if part.startswith("."):
            return "a component cannot start with '.'"
        if part.endswith(".lock"):
            return "a component cannot end with '.lock'"
    return None


def check_path(path: str) -> str:
    """A repo-relative file path that stays inside the snapshot folder once written to disk."""
    if not isinstance(path, str):
        raise ManifestError(f"invalid file path {_shown(path)}: expected a string")
    if not path or len(path) > MAX_PATH_CHARS:
        raise ManifestError(f"invalid file path {_shown(path)}: empty or too long")
    if "\0" in path or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ManifestError(f"invalid file path {_shown(path)}: control character or backslash")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"invalid file path {_shown(path)}: not valid Unicode (lone surrogate)") from None
    if path.startswith("/"):
        raise ManifestError(f"invalid file path {_shown(path)}: absolute paths are not allowed")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"invalid file path {_shown(path)}: empty, '.' or '..' component")
    if any(len(p.encode("utf-8")) > MAX_SEGMENT_BYTES for p in parts):
        raise ManifestError(f"invalid file path {_shown(path)}: a name longer than {MAX_SEGMENT_BYTES} bytes")
    return path


def check_etag(etag: str, sha256: str | None) -> str:
    if sha256 is not None:
        if not is_sha256(sha256):
            raise ManifestError(f"invalid sha256 {_shown(sha256)}")
        if etag != sha256:
            raise ManifestError(f"etag {_shown(etag)} of an LFS file must be its sha256 {sha256!r}")
    elif not is_commit(etag):  # same shape: a 40-hex git blob sha1
        raise ManifestError(f"invalid etag {_shown(etag)}: expected a 40-hex git blob sha1")
    return etag


def check_size(size: int) -> int:
    # bool is an int in Python and a float is not a size: both would slip through int() and SQLite.
    if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
        raise ManifestError(f"invalid size {_shown(size)}: expected an integer from 0 to {MAX_FILE_SIZE}")
    return size


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    etag: str
    sha256: str | None = None
    info_hash: str | None = None  # set once the seed has published the blob's torrent

    def validate(self) -> FileEntry:
        check_path(self.path)
        try:
            check_size(self.size)
            check_etag(self.etag, self.sha256)
        except ManifestError as e:
            raise ManifestError(f"{self.path}: {e}") from None
        if self.info_hash is not None and not is_commit(self.info_hash):
            raise ManifestError(f"{self.path}: invalid info_hash {_shown(self.info_hash)}")
        return self

    @property
    def needs_torrent(self) -> bool:
        # An empty file has no pieces: a torrent for it is invalid, the node writes it directly.
        return self.size > 0


@dataclass(frozen=True)
class Manifest:
    repo_type: str
    repo_id: str
    commit: str
    files: tuple[FileEntry, ...]
    refs: tuple[str, ...] = ()
    complete: bool = False
    # Private or gated on the origin: the tracker hands it only to nodes whose Hub token the origin accepts.
    private: bool = False

    def validate(self) -> Manifest:
        check_repo_type(self.repo_type)
        check_repo_id(self.repo_id)
        if not is_commit(self.commit):
            raise ManifestError(f"invalid commit {_shown(self.commit)}: expected 40 lowercase hex characters")
        for ref in self.refs:
            check_revision(ref)
        if not isinstance(self.complete, bool) or not isinstance(self.private, bool):
            raise ManifestError("complete and private must be true or false")
        seen: set[str] = set()
        folders: set[str] = set()
        for f in self.files:
            f.validate()
            if f.path in seen:
                raise ManifestError(f"duplicate path {_shown(f.path)}")
            seen.add(f.path)
            parts = f.path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = seen & folders
        if clash:
            raise ManifestError(f"path used both as file and folder: {_shown(sorted(clash)[0])}")
        return self

    def to_dict(self) -> dict:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "refs": list(self.refs),
            "complete": self.complete,
            "private": self.private,
            "files": [asdict(f) for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """A manifest from decoded JSON, strictly typed (no coercion: "1" is not a size, 1 not a bool)."""
        d = _obj(data, "manifest")
        files = _field(d, "files", list, "manifest")
        refs = d.get("refs")
        if refs is None:
            refs = []
        if not isinstance(refs, list | tuple) or not all(isinstance(r, str) for r in refs):
            raise ManifestError("malformed manifest: refs must be a list of strings")
        return cls(
            repo_type=_field(d, "repo_type", str, "manifest"),
            repo_id=_field(d, "repo_id", str, "manifest"),
            commit=_field(d, "commit", str, "manifest"),
            files=tuple(_file_entry(f, i) for i, f in enumerate(files)),
            refs=tuple(refs),
            complete=_field(d, "complete", bool, "manifest", False),
            private=_field(d, "private", bool, "manifest", False),
        ).validate()


_MISSING = object()


def _obj(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(f"malformed {where}: expected an object, got {type(value).__name__}")
    return value


def _field(d: dict, name: str, kind: type, where: str, default: object = _MISSING) -> Any:
    value = d.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise ManifestError(f"malformed {where}: missing {name!r}")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"malformed {where}: {name!r} must be a {kind.__name__}, got {_shown(value, 40)}")
    return value


def _file_entry(raw: object, index: int) -> FileEntry:
    where = f"file #{index}"
    f = _obj(raw, where)
    sha256 = _field(f, "sha256", str, where, None)
    info_hash = _field(f, "info_hash", str, where, None)
    # check_size gives the precise reason for floats, bools and out-of-range ints.
    size = f.get("size", _MISSING)
    if size is _MISSING:
        raise ManifestError(f"malformed {where}: missing 'size'")
    return FileEntry(
        path=_field(f, "path", str, where),
        size=size,  # type: ignore[arg-type]
        etag=_field(f, "etag", str, where),
        sha256=sha256,
        info_hash=info_hash,
    )


def select_files(
    files: Iterable[FileEntry], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[FileEntry]:
    """--include/--exclude with huggingface_hub's allow/ignore_patterns semantics ('dir/' means 'dir/*')."""
    inc = [_pattern(p) for p in include]
    exc = [_pattern(p) for p in exclude]
    out = []
    for f in files:
        if inc and not any(fnmatch(f.path, p) for p in inc):
            continue
        if exc and any(fnmatch(f.path, p) for p in exc):
            continue
        out.append(f)
    return out


def _pattern(p: str) -> str:
    return p + "*" if p.endswith("/") else p
