"""Content hashes the Hub uses as etags: git blob sha1 for regular files, sha256 for LFS files."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def git_blob_sha1_bytes(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    _feed(h, path)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _feed(h, path)
    return h.hexdigest()


def _feed(h: hashlib._Hash, path: Path) -> None:  # type: ignore[name-defined]
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
