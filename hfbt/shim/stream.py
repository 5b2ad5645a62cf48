"""File bytes for the shim: from the cache when the blob is complete, else from the swarm as its
pieces arrive, in reading order (a GET does not wait for the whole file)."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from pathlib import Path

from hfbt import cache
from hfbt.agent.node import Node
from hfbt.agent.protocol import PullRequest
from hfbt.errors import HfbtError
from hfbt.manifest import PIECE_LENGTH, FileEntry, Manifest
from hfbt.swarm import SwarmError

READ_AHEAD_PIECES = 8  # 32 MiB asked for ahead of the reader
FILE_CHUNK = 1024 * 1024
JOIN_TIMEOUT_S = 300.0


def file_bytes(
    node: Node, manifest: Manifest, f: FileEntry, start: int, end: int, token: str | None
) -> Iterator[bytes]:
    repo = cache.repo_dir(node.cfg.cache_dir, manifest.repo_type, manifest.repo_id)
    if start >= end:
        return
    if cache.has_blob(repo, f):
        yield from _from_file(cache.blob_path(repo, f.etag), start, end)
        return
    # Fetch the whole blob into the cache in the background (the node keeps and seeds it), and read
    # the requested range from the swarm meanwhile.
    fetch = node.fetch(
        PullRequest(
            manifest.repo_id,
            manifest.repo_type,
            manifest.commit,
            include=(glob.escape(f.path),),
            token=token,
        )
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while (ih := node.joined(f.etag)) is None:
        if cache.has_blob(repo, f):
            yield from _from_file(cache.blob_path(repo, f.etag), start, end)
            return
        if fetch.done() and fetch.exception() is not None:
            raise fetch.exception()  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise HfbtError("Stalled", f"{f.path}: no torrent for it after {JOIN_TIMEOUT_S:.0f}s")
        time.sleep(0.05)
    yield from _from_swarm(node, ih, start, end)


def _from_swarm(node: Node, ih: str, start: int, end: int) -> Iterator[bytes]:
    first, last = start // PIECE_LENGTH, (end - 1) // PIECE_LENGTH
    for p in range(first, last + 1):
        try:
            # Both raise SwarmError once the torrent is gone (the blob failed its check, or the pull
            # fell back to the origin): the stream ends with a logged line, not a traceback.
            node.read_ahead(ih, range(p + 1, min(p + 1 + READ_AHEAD_PIECES, last + 1)))
            data = node.read_piece(ih, p)
        except SwarmError as e:
            raise HfbtError("Stalled", str(e)) from None
        base = p * PIECE_LENGTH
        yield data[max(start, base) - base : min(end, base + len(data)) - base]


def _from_file(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(FILE_CHUNK, left))
            if not chunk:
                return
            yield chunk
            left -= len(chunk)
