"""The Hugging Face cache layout: where blobs, snapshots and refs live, and publishing them safely.

Layout (the one huggingface_hub writes): <cache>/models--org--name/{blobs/<etag>, snapshots/<commit>/<path> ->
relative symlink, refs/<revision> = commit with no newline}. Invariant: a file under a final name is
complete and verified. Partial data lives under `<etag>.hfbt-partial` (the Hub client's own partials are
`<etag>.<8hex>.incomplete`, so the names never collide); symlinks and refs are created atomically
(temporary name, then rename), and refs are written last because scan_cache_dir() rejects a ref that
names a missing snapshot.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from pathlib import Path

from hfbt.hashing import git_blob_sha1, sha256_file
from hfbt.manifest import FileEntry, check_path, check_revision

PARTIAL_SUFFIX = ".hfbt-partial"
_TYPE_PREFIX = {"model": "models", "dataset": "datasets"}


def repo_folder_name(repo_type: str, repo_id: str) -> str:
    return f"{_TYPE_PREFIX[repo_type]}--{repo_id.replace('/', '--')}"


def repo_dir(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    return cache_dir / repo_folder_name(repo_type, repo_id)


def blobs_dir(repo: Path) -> Path:
    return repo / "blobs"


def blob_path(repo: Path, etag: str) -> Path:
    return repo / "blobs" / etag


def partial_name(etag: str) -> str:
    return etag + PARTIAL_SUFFIX


def snapshot_dir(repo: Path, commit: str) -> Path:
    return repo / "snapshots" / commit


def snapshot_path(repo: Path, commit: str, path: str) -> Path:
    return snapshot_dir(repo, commit) / check_path(path)


def blob_link_target(path: str, etag: str) -> str:
    """Relative target from snapshots/<commit>/<path> to blobs/<etag>: one more '../' per subfolder."""
    depth = len(check_path(path).split("/")) - 1
    return posixpath.join(*([".."] * (2 + depth)), "blobs", etag)


def has_blob(repo: Path, entry: FileEntry) -> bool:
    p = blob_path(repo, entry.etag)
    try:
        return p.is_file() and p.stat().st_size == entry.size
    except OSError:
        return False


def is_linked(repo: Path, commit: str, entry: FileEntry) -> bool:
    link = snapshot_path(repo, commit, entry.path)
    return (
        link.is_symlink()
        and os.readlink(link) == blob_link_target(entry.path, entry.etag)
        and has_blob(repo, entry)
    )


def verify_blob(path: Path, entry: FileEntry) -> bool:
    """End-to-end check against the Hub's own hash: the Hub client only checks sizes."""
    if path.stat().st_size != entry.size:
        return False
    if entry.sha256:
        return sha256_file(path) == entry.sha256
    return git_blob_sha1(path) == entry.etag


def write_empty_blob(repo: Path, entry: FileEntry) -> None:
    final = blob_path(repo, entry.etag)
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{entry.etag}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    tmp.touch()
    if not verify_blob(tmp, entry):
        tmp.unlink()
        raise ValueError(f"{entry.path}: etag {entry.etag} is not the hash of an empty file")
    os.replace(tmp, final)


def import_blob(repo: Path, entry: FileEntry, source: Path) -> None:
    """Publish a verified blob that already sits elsewhere on this machine: hard link, else copy."""
    final = blob_path(repo, entry.etag)
    if final.is_file() and final.stat().st_size == entry.size:
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{entry.etag}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, final)


def link_snapshot(repo: Path, commit: str, entry: FileEntry) -> Path:
    link = snapshot_path(repo, commit, entry.path)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = blob_link_target(entry.path, entry.etag)
    if link.is_symlink() and os.readlink(link) == target:
        return link
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def write_ref(repo: Path, ref: str, commit: str) -> None:
    check_revision(ref)
    path = repo / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == commit:
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(commit)  # no trailing newline: the Hub client compares the raw content
    os.replace(tmp, path)


def read_ref(repo: Path, ref: str) -> str | None:
    try:
        return (repo / "refs" / check_revision(ref)).read_text().strip() or None
    except OSError:
        return None
