"""Blob torrents: one private v1 torrent per file blob, 4 MiB pieces, named by the blob's etag.

The info dict is built here rather than with libtorrent's create_torrent so that it is byte-for-byte
deterministic (same content → same info-hash on every seed, across restarts) and so that piece
hashing can use every core (hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fastbencode

from hfbt.manifest import PIECE_LENGTH

_HASH_THREADS = max(2, os.cpu_count() or 2)


class TorrentError(ValueError):
    """A blob torrent that cannot be made, or that does not describe the blob it is registered for."""


@dataclass(frozen=True)
class BlobTorrent:
    info_hash: str
    name: str
    length: int
    data: bytes  # bencoded {"info": ...}; the tracker adds the announce URL when it serves it


def piece_hashes(path: Path, piece_length: int = PIECE_LENGTH) -> bytes:
    size = path.stat().st_size
    count = (size + piece_length - 1) // piece_length

    def one(i: int) -> bytes:
        with open(path, "rb", buffering=0) as f:
            f.seek(i * piece_length)
            return hashlib.sha1(f.read(piece_length)).digest()

    # Bounded in-flight pieces: map() over a range would queue every read at once and hold them in memory.
    out: list[bytes] = []
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        batch = _HASH_THREADS * 4
        for start in range(0, count, batch):
            out.extend(pool.map(one, range(start, min(start + batch, count))))
    return b"".join(out)


def make_blob_torrent(path: Path, name: str) -> BlobTorrent:
    size = path.stat().st_size
    if size == 0:
        raise TorrentError(f"{path}: an empty file has no pieces and gets no torrent")
    info = {
        b"length": size,
        b"name": name.encode(),
        b"piece length": PIECE_LENGTH,
        b"pieces": piece_hashes(path),
        b"private": 1,
    }
    info_hash = hashlib.sha1(fastbencode.bencode(info)).hexdigest()
    return BlobTorrent(info_hash, name, size, fastbencode.bencode({b"info": info}))
