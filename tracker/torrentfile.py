"""Blob torrents as the tracker sees them: checking what seeds publish, writing what nodes get (pure).

The stored form is the exact bencoded info dict, so every node gets the same info-hash whatever announce
URL (with its own passkey) surrounds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastbencode import Bencached, bdecode, bencode

from hfbt.manifest import PIECE_LENGTH, FileEntry
from hfbt.torrents import TorrentError
from hfbt.wire import PIECE_URLS_KEY


@dataclass(frozen=True)
class TorrentInfo:
    info_hash: str
    info: bytes  # the bencoded info dict, byte for byte what the info-hash was computed over


def check_blob_torrent(raw: bytes, entry: FileEntry) -> TorrentInfo:
    """Accept only a private v1 single-file torrent of this blob with 4 MiB pieces."""
    if not entry.needs_torrent:
        raise TorrentError(f"{entry.path}: empty files have no torrent")
    try:
        # fastbencode rejects unsorted/duplicate keys and non-canonical integers, so re-encoding the
        # decoded info dict yields exactly the bytes the seed hashed.
        meta = bdecode(raw)
    except ValueError as e:
        raise TorrentError(f"not a bencoded torrent: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(b"info"), dict):
        raise TorrentError("torrent has no info dictionary")
    info = meta[b"info"]
    if b"meta version" in info or b"file tree" in info or b"piece layers" in meta:
        raise TorrentError("v2/hybrid torrents are not accepted: blob torrents are v1 only")
    if b"files" in info:
        raise TorrentError("multi-file torrent: a blob torrent has exactly one file")
    if info.get(b"private") != 1:
        raise TorrentError("torrent must be private (private=1)")
    if info.get(b"piece length") != PIECE_LENGTH:
        raise TorrentError(f"piece length must be {PIECE_LENGTH}")
    if info.get(b"name") != entry.etag.encode("ascii"):
        raise TorrentError(f"torrent name must be the file's etag {entry.etag}")
    if info.get(b"length") != entry.size:
        raise TorrentError(f"torrent length {info.get(b'length')!r} differs from the file size {entry.size}")
    pieces = info.get(b"pieces")
    n_pieces = -(-entry.size // PIECE_LENGTH)
    if not isinstance(pieces, bytes) or len(pieces) != 20 * n_pieces:
        raise TorrentError(f"pieces must hold {n_pieces} SHA-1 hashes")
    encoded = bencode(info)
    return TorrentInfo(info_hash=hashlib.sha1(encoded).hexdigest(), info=encoded)


def torrent_file(announce_url: str, info: bytes, piece_urls: list[str] | None = None) -> bytes:
    """A .torrent around a stored info dict; the info bytes are embedded verbatim.

    piece_urls: the seeds' piece servers (hfbt/seed/pieces.py), outside the info dict so the info-hash
    stays the same for every node.
    """
    meta = {b"announce": announce_url.encode("utf-8"), b"info": Bencached(info)}
    if piece_urls:
        meta[PIECE_URLS_KEY] = [u.encode("utf-8") for u in piece_urls]
    return bencode(meta)
