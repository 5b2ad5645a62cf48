"""What a seed has mirrored: etag → (blob path, info-hash), so a restart re-seeds without re-hashing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeededBlob:
    etag: str
    info_hash: str
    blob: str
    size: int


class SeedStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, etag: str) -> SeededBlob | None:
        try:
            rec = SeededBlob(**json.loads((self.folder / f"{etag}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        blob = Path(rec.blob)
        return rec if blob.is_file() and blob.stat().st_size == rec.size else None

    def put(self, rec: SeededBlob) -> None:
        tmp = self.folder / f".{rec.etag}.json.tmp"
        tmp.write_text(json.dumps(asdict(rec)))
        os.replace(tmp, self.folder / f"{rec.etag}.json")

    def all(self) -> list[SeededBlob]:
        out = []
        for p in sorted(self.folder.glob("*.json")):
            if rec := self.get(p.stem):
                out.append(rec)
        return out
