"""Blobs a process has verified and seeds, with their torrents: what a restart re-seeds unchecked.

Kept in hfbt's state dir (never inside the HF cache), one record per etag: `<etag>.json` and
`<etag>.torrent`, each written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
