"""`hfbt demo` is the README's first command: it must run end to end and clean up after itself."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_hfbt


def test_demo_runs_end_to_end_and_origin_serves_one_copy(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = run_hfbt("demo", "--size-mb", "24", "--nodes", "3", "--workdir", str(work), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("verified") == 3
    served = re.search(r"served by the origin\s*│\s*([\d,]+)\s*│\s*([\d.]+)", r.stdout)
    assert served and served.group(2) == "1.00", r.stdout
    assert list((work / "logs").iterdir())  # kept because --workdir was given
