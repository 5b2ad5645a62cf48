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

PIECE_LENGTH = 4 * 1024 * 1024
REPO_TYPES = ("model", "dataset")

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Hub repo ids: "name" or "namespace/name", letters, digits, "-", "_", "."; no "--" or ".." anywhere.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Extensions the Hub's default .gitattributes stores through LFS; anything >= 10 MiB must be LFS too.
LFS_SUFFIXES = frozenset(
    ".7z .arrow .bin .bz2 .ckpt .ftz .gguf .gz .h5 .joblib .mlmodel .model .msgpack .npy .npz .onnx .ot"
    " .parquet .pb .pickle .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst".split()
)
LFS_MIN_SIZE = 10 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest, path, repo id or revision that must be refused; the message says why."""


def is_commit(revision: str) -> bool:
    return bool(_HEX40.match(revision))


def is_sha256(value: str) -> bool:
    return bool(_HEX64.match(value))


def is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or PurePosixPath(path).suffix.lower() in LFS_SUFFIXES


def check_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise ManifestError(f"repo type must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}")
    return repo_type


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ManifestError(f"invalid repo id {repo_id!r}: expected 'name' or 'namespace/name'")
    return repo_id


def check_revision(revision: str) -> str:
    # Branch and tag names as git allows them; refs/pr/N included. No "..", no leading "/", no control chars.
    if (
        not revision
        or len(revision) > 256
        or ".." in revision
        or revision.startswith("/")
        or revision.endswith("/")
        or any(c in revision for c in "\\ ~^:?*[\0")
        or any(ord(c) < 32 for c in revision)
    ):
        raise ManifestError(f"invalid revision {revision!r}")
    return revision


def check_path(path: str) -> str:
    """A repo-relative file path that stays inside the snapshot folder once written to disk."""
    if not path or len(path) > 4096:
        raise ManifestError(f"invalid file path {path!r}: empty or too long")
    if "\0" in path or "\\" in path or any(ord(c) < 32 for c in path):
        raise ManifestError(f"invalid file path {path!r}: control character or backslash")
    if path.startswith("/"):
        raise ManifestError(f"invalid file path {path!r}: absolute paths are not allowed")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"invalid file path {path!r}: empty, '.' or '..' component")
    return path


def check_etag(etag: str, sha256: str | None) -> str:
    if sha256 is not None:
        if not is_sha256(sha256):
            raise ManifestError(f"invalid sha256 {sha256!r}")
        if etag != sha256:
            raise ManifestError(f"etag {etag!r} of an LFS file must be its sha256 {sha256!r}")
    elif not _HEX40.match(etag):
        raise ManifestError(f"invalid etag {etag!r}: expected a 40-hex git blob sha1")
    return etag


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    etag: str
    sha256: str | None = None
    info_hash: str | None = None  # set once the seed has published the blob's torrent

    def validate(self) -> FileEntry:
        check_path(self.path)
        if self.size < 0:
            raise ManifestError(f"{self.path}: negative size")
        check_etag(self.etag, self.sha256)
        if self.info_hash is not None and not _HEX40.match(self.info_hash):
            raise ManifestError(f"{self.path}: invalid info_hash {self.info_hash!r}")
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
            raise ManifestError(f"invalid commit {self.commit!r}: expected 40 hex characters")
        for ref in self.refs:
            check_revision(ref)
        seen: set[str] = set()
        folders: set[str] = set()
        for f in self.files:
            f.validate()
            if f.path in seen:
                raise ManifestError(f"duplicate path {f.path!r}")
            seen.add(f.path)
            parts = f.path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = seen & folders
        if clash:
            raise ManifestError(f"path used both as file and folder: {sorted(clash)[0]!r}")
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
    def from_dict(cls, data: dict) -> Manifest:
        try:
            files = tuple(
                FileEntry(
                    path=str(f["path"]),
                    size=int(f["size"]),
                    etag=str(f["etag"]),
                    sha256=f.get("sha256"),
                    info_hash=f.get("info_hash"),
                )
                for f in data["files"]
            )
            return cls(
                repo_type=str(data["repo_type"]),
                repo_id=str(data["repo_id"]),
                commit=str(data["commit"]),
                files=files,
                refs=tuple(data.get("refs") or ()),
                complete=bool(data.get("complete", False)),
                private=bool(data.get("private", False)),
            ).validate()
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {e!r}") from e


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
