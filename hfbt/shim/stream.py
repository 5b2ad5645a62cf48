"""File bytes for the shim: from the cache when the blob is complete, else from the swarm as its
pieces arrive, in reading order (a GET does not wait for the whole file).

Bytes from the swarm passed BitTorrent's piece check, which binds them to the torrent, not to the
Hub's hash. So the last chunk of such a response is held back until the bytes are known to be the
Hub's: a response covering the whole file is hashed here as it streams (sha256 for LFS files, git
blob sha1 otherwise); a part of a file waits for the node's own check of the whole blob (its pull
finishing). If the check fails the generator raises HfbtError("Integrity") before that last chunk,
and the app cuts the connection: the client sees a short body and retries, it never stores the file.
"""

from __future__ import annotations

import glob
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
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
VERIFY_TIMEOUT_S = 600.0  # a part of a file: how long its last chunk may wait for the node's hash check


def file_bytes(
    node: Node, manifest: Manifest, f: FileEntry, start: int, end: int, token: str | None
) -> Iterator[bytes]:
    repo = cache.repo_dir(node.cfg.cache_dir, manifest.repo_type, manifest.repo_id)
    if start >= end:
        return
    if cache.has_blob(repo, f):
        # Only hfbt (after its hash check) and the Hub client (after a complete download) write it.
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
        if fetch.done() and (e := fetch.exception()) is not None:
            raise e if isinstance(e, HfbtError) else HfbtError("Stalled", f"{f.path}: {e}")
        if time.monotonic() > deadline:
            raise HfbtError("Stalled", f"{f.path}: no torrent for it after {JOIN_TIMEOUT_S:.0f}s")
        time.sleep(0.05)
    swarm = _from_swarm(node, ih, start, end)
    yield from held_until_verified(swarm, f, start, end, lambda: _pulled(node, f, fetch))


def held_until_verified(
    chunks: Iterator[bytes], f: FileEntry, start: int, end: int, node_check: Callable[[], None]
) -> Iterator[bytes]:
    """`chunks`, the last one given only once the bytes are the Hub's (module docstring); raises
    HfbtError otherwise, so the response never ends as if complete."""
    whole = (start, end) == (0, f.size)
    hasher = (hashlib.sha256() if f.sha256 else hashlib.sha1(b"blob %d\0" % f.size)) if whole else None
    held: bytes | None = None
    sent = 0
    for chunk in chunks:
        if held is not None:
            yield held
        if hasher is not None:
            hasher.update(chunk)
        held, sent = chunk, sent + len(chunk)
    if held is None:
        return
    if sent != end - start:
        raise HfbtError("Integrity", f"{f.path}: {sent} bytes read for a range of {end - start}")
    if hasher is None:
        node_check()
    elif hasher.hexdigest() != (f.sha256 or f.etag):
        raise HfbtError("Integrity", f"{f.path}: the swarm's bytes do not match the Hub's hash {f.etag}")
    yield held


def _pulled(node: Node, f: FileEntry, fetch: Future) -> None:
    """Returns once the node has checked the whole blob against the Hub's hash; raises otherwise.

    Asks Node.blob_verified where the node has it (the verdict of the blob's latest download), and
    in any case the node's background pull of the file: it finishes only once the blob is verified
    and under its final name, and fails with "Integrity" when the hash did not match."""
    verdict = getattr(node, "blob_verified", None)
    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    while time.monotonic() < deadline:
        decided = verdict(f.etag, timeout=0.2) if verdict is not None else None
        if decided is False:
            why = getattr(node, "blob_failure", lambda _etag: None)(f.etag) or "hash mismatch"
            raise HfbtError("Integrity", f"{f.path}: the node did not verify the blob: {why}")
        if decided is True:
            return
        try:
            fetch.result(timeout=0 if verdict is not None else 0.2)
            return
        except FutureTimeout:
            continue
        except Exception as e:  # HfbtError("Integrity") on a hash mismatch; any failure means "not checked"
            raise HfbtError("Integrity", f"{f.path}: the node did not verify the blob: {e}") from None
    raise HfbtError("Stalled", f"{f.path}: not checked against the Hub's hash after {VERIFY_TIMEOUT_S:.0f}s")


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
    try:
        fh = open(path, "rb")
    except OSError as e:  # removed by `hfbt gc` since the cache said it was there
        raise HfbtError("Stalled", f"{path.name}: {e.strerror}") from None
    with fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(FILE_CHUNK, left))
            if not chunk:
                # Ending quietly would look like a complete response of fewer bytes than announced.
                raise HfbtError("Stalled", f"{path.name} shrank while being read")
            yield chunk
            left -= len(chunk)
