"""The node's record of published blobs, kept beside the cache so a restart re-seeds them unchecked."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PublishedBlob:
    info_hash: str
    etag: str
    size: int
    blobs_dir: str  # the torrent's save_path: <cache>/<repo folder>/blobs


class BlobStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, rec: PublishedBlob, torrent: bytes) -> None:
        for name, data in (
            (f"{rec.info_hash}.torrent", torrent),
            (f"{rec.info_hash}.json", json.dumps(asdict(rec)).encode()),
        ):
            tmp = self.folder / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / name)

    def remove(self, info_hash: str) -> None:
        for suffix in (".json", ".torrent"):
            (self.folder / f"{info_hash}{suffix}").unlink(missing_ok=True)

    def all(self) -> list[tuple[PublishedBlob, bytes]]:
        out = []
        for p in sorted(self.folder.glob("*.json")):
            try:
                rec = PublishedBlob(**json.loads(p.read_text()))
                out.append((rec, (self.folder / f"{rec.info_hash}.torrent").read_bytes()))
            except (OSError, ValueError, TypeError):
                continue
        return out
