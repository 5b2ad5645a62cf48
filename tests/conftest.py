"""Shared fixtures: a whole hfbt deployment as real processes on 127.0.0.1 (hfbt.cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hfbt.cluster import LocalCluster
from hfbt.synth import make_dataset_repo, make_model_repo

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

MODEL = "acme/tiny"
DATASET = "acme/corpus"


@dataclass
class Deployment:
    cluster: LocalCluster
    origin_root: Path

    @property
    def model_dir(self) -> Path:
        return self.origin_root / "models" / MODEL

    @property
    def dataset_dir(self) -> Path:
        return self.origin_root / "datasets" / DATASET


def make_origin(root: Path) -> Path:
    # 9 MiB + a few bytes per shard: three 4 MiB pieces, the last one partial.
    make_model_repo(root / "models" / MODEL, shard_mb=9, seed=0)
    make_dataset_repo(root / "datasets" / DATASET, seed=1)
    return root


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """origin + tracker + seed; `@pytest.mark.ref_ttl(0)` makes every branch pull re-resolve."""
    marker = request.node.get_closest_marker("ref_ttl")
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(ref_ttl=marker.args[0] if marker else 300)
        cluster.start_seed()
        yield Deployment(cluster, root)
    # Every process, whatever the test did to it, reports problems as one line, never a traceback.
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "run" / "logs").glob("*.log")}
    assert not [name for name, text in logs.items() if "Traceback" in text], logs


def run_hfbt(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hfbt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def pull_cmd(tracker_url: str, cache: Path, *extra: str, repo: str = MODEL) -> list[str]:
    """`hfbt pull` arguments for an embedded (agent-less), quiet pull into `cache`."""
    return [
        "pull",
        repo,
        "--tracker",
        tracker_url,
        "--cache-dir",
        str(cache),
        "--agent",
        "none",
        "-q",
        *extra,
    ]


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
