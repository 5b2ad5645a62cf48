"""Blobs a process has verified and seeds, with their torrents: what a restart re-seeds unchecked.

Kept in hfbt's state dir (never inside the HF cache), one record per etag: `<etag>.json` and
`<etag>.torrent`, each written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class PublishedBlob:
    etag: str
    info_hash: str
    size: int
    path: str  # the blob file libtorrent seeds from


class PublishedStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, rec: PublishedBlob, torrent: bytes) -> None:
        # Torrent first: a record without its torrent would be unusable after a crash.
        _atomic_write(self.folder / f"{rec.etag}.torrent", torrent)
        _atomic_write(self.folder / f"{rec.etag}.json", json.dumps(asdict(rec)).encode())

    def get(self, etag: str) -> tuple[PublishedBlob, bytes] | None:
        """The record and torrent, if the blob is still on disk with its size (else None)."""
        try:
            rec = PublishedBlob(**json.loads((self.folder / f"{etag}.json").read_text()))
            torrent = (self.folder / f"{etag}.torrent").read_bytes()
            if Path(rec.path).stat().st_size != rec.size:
                return None
        except (OSError, ValueError, TypeError):
            return None
        return rec, torrent

    def remove(self, etag: str) -> None:
        for suffix in (".json", ".torrent"):
            (self.folder / f"{etag}{suffix}").unlink(missing_ok=True)

    def all(self) -> list[tuple[PublishedBlob, bytes]]:
        return [found for p in sorted(self.folder.glob("*.json")) if (found := self.get(p.stem))]


@dataclass(frozen=True)
class Repointed:
    old: PublishedBlob
    torrent: bytes
    new: PublishedBlob | None  # None: no other copy in the cache, stop seeding it


def forget_published(store: PublishedStore, removed: Iterable[str], cache_dir: Path) -> list[Repointed]:
    """Update the records of blob files about to be removed (call before deleting them).

    A blob can sit in two repos of the cache (shared files are hard links or copies): if the record
    points at the removed one, it moves to a surviving copy and seeding goes on from there.
    """
    gone = {os.path.realpath(p) for p in removed}
    out: list[Repointed] = []
    for path in sorted(gone):
        etag = Path(path).name
        found = store.get(etag)
        if found is None:
            continue
        rec, torrent = found
        if os.path.realpath(rec.path) != path:
            continue  # the record already names a copy that stays
        alt = next(
            (
                p
                for p in sorted(cache_dir.glob(f"*/blobs/{etag}"))
                if os.path.realpath(p) not in gone and p.stat().st_size == rec.size
            ),
            None,
        )
        new = replace(rec, path=str(alt)) if alt else None
        if new:
            store.put(new, torrent)
        else:
            store.remove(etag)
        out.append(Repointed(rec, torrent, new))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
