"""Smoke test of bench/tracker.py: both trackers under a tiny announce load (K=20, M=10, 2 s runs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("opentracker")), reason="needs wrk and opentracker"
)


def test_quick_run_measures_both_trackers(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tracker", "--quick", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {(r["tracker"], r["mode"]): r for r in record["points"]}
    assert {"opentracker", "hfbt"} == {t for t, _ in rows}
    for (tracker, mode), r in rows.items():
        assert r["announces_per_s"] > 0, (tracker, mode, r)
        if tracker == "hfbt":
            assert r["errors"] == 0, (mode, r)
            assert r["swarms"]["total"] > 0, (mode, r)
    assert {m for t, m in rows if t == "hfbt"} == {"open", "closed"}
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").exists()
