"""Pins: revisions that `hfbt gc` must never evict, recorded on the node by `hfbt prefetch`.

They live in hfbt's state dir (beside the HF cache, never inside it: scan_cache_dir() reports unknown
folders in the cache as corrupt), one JSON file per prefetch config. A prefetch run replaces its own
file only, so two configs on one node do not unpin each other's repos, and removing an entry from a
config unpins it at the next run. A plain `hfbt gc` reads every file: it needs no config.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hfbt.config import PINS_DIR


@dataclass(frozen=True)
class Pin:
    repo_type: str
    repo_id: str
    revision: str  # as written in the config: a branch, tag or commit
    commit: str | None  # what it resolved to at the last successful prefetch (None: never pulled yet)


def pins_dir(state_dir: Path) -> Path:
    return state_dir / PINS_DIR


def pin_file(state_dir: Path, source: Path) -> Path:
    # Named after the config's absolute path: stable across runs, distinct per config.
    src = str(source.expanduser().resolve())
    digest = hashlib.sha1(src.encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.stem)[:40]
    return pins_dir(state_dir) / f"{stem}-{digest}.json"


def read_file(path: Path) -> list[Pin]:
    try:
        raw = json.loads(path.read_text())
        return [Pin(**p) for p in raw.get("pins", [])]
    except (OSError, ValueError, TypeError):
        return []


def write_file(path: Path, source: Path, pins: list[Pin]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"source": str(source.expanduser().resolve()), "pins": [asdict(p) for p in pins]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)


def load_all(state_dir: Path) -> list[Pin]:
    """Every pin recorded on this node, from every prefetch config."""
    folder = pins_dir(state_dir)
    if not folder.is_dir():
        return []
    return [p for f in sorted(folder.glob("*.json")) for p in read_file(f)]
