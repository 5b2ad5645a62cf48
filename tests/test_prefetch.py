"""`hfbt prefetch`: real processes (tests/conftest.py `deployment`), real `hfbt prefetch` subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from hfbt import pins
from hfbt.cluster import LocalCluster
from hfbt.config import MAINTENANCE_LOCK
from hfbt.errors import HfbtError
from hfbt.prefetch import cron_argv, cron_line, hfbt_argv, parse
from tests.conftest import DATASET, MODEL, Deployment, files_of, make_origin, run_hfbt


def write_config(path: Path, *entries: str, tracker: str | None = None) -> Path:
    head = f'tracker = "{tracker}"\n' if tracker else ""
    path.write_text(head + "".join(f"\n[[repo]]\n{e.strip()}\n" for e in entries))
    return path


def prefetch_args(config: Path, agent, *extra: str) -> list[str]:
    return [
        "prefetch",
        "--config",
        str(config),
        "--cache-dir",
        str(agent.cache_dir),
        "--state-dir",
        str(agent.state_dir),
        "--agent",
        agent.url,
        *extra,
    ]


def prefetch_lines(stderr: str) -> dict[str, dict[str, str]]:
    """event=prefetch log lines by repo label → their key=value fields."""
    out = {}
    for line in stderr.splitlines():
        if "event=prefetch " in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            out[fields["repo"]] = fields
    return out


def test_one_complete_one_missing_pulls_only_the_missing_one_and_records_pins(
    deployment: Deployment, tmp_path: Path
) -> None:
    node = deployment.cluster.start_agent("node1")
    first = run_hfbt(
        "pull", MODEL, "--tracker", deployment.cluster.tracker_url, "--cache-dir", str(node.cache_dir),
        "--agent", node.url, "-q",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    model_blobs = {
        p.name: p.stat().st_mtime_ns for p in (node.cache_dir / "models--acme--tiny/blobs").iterdir()
    }
    config = write_config(
        tmp_path / "prefetch.toml",
        f'id = "{MODEL}"\npin = true',
        f'id = "{DATASET}"\ntype = "dataset"\ninclude = ["data/*"]',
        tracker=deployment.cluster.tracker_url,
    )
    r = run_hfbt(*prefetch_args(config, node))
    assert r.returncode == 0, r.stderr
    lines = prefetch_lines(r.stderr)
    model, dataset = lines[f"model/{MODEL}@main"], lines[f"dataset/{DATASET}@main"]
    # The complete one moved nothing; the missing one was pulled, and both say how long they took.
    assert model["result"] == "complete" and model["bytes"] == "0"
    assert dataset["result"] == "pulled" and int(dataset["bytes"]) > 0
    assert float(model["seconds"]) >= 0 and float(dataset["seconds"]) > 0
    after = {p.name: p.stat().st_mtime_ns for p in (node.cache_dir / "models--acme--tiny/blobs").iterdir()}
    assert after == model_blobs
    want = {p: b for p, b in files_of(deployment.dataset_dir).items() if p.startswith("data/")}
    offline = snapshot_download(
        DATASET,
        repo_type="dataset",
        cache_dir=node.cache_dir,
        local_files_only=True,
        allow_patterns=["data/*"],
    )
    assert files_of(Path(offline)) == want
    assert scan_cache_dir(node.cache_dir).warnings == []
    # The pin is on the node, in the state dir (never inside the HF cache), with the commit pulled.
    recorded = pins.load_all(node.state_dir)
    commit = (node.cache_dir / "models--acme--tiny" / "refs" / "main").read_text()
    assert recorded == [pins.Pin("model", MODEL, "main", commit)]
    assert not any("pins" in p.name for p in node.cache_dir.iterdir())


def test_a_failing_entry_does_not_stop_the_others_and_sets_the_exit_code(
    deployment: Deployment, tmp_path: Path
) -> None:
    node = deployment.cluster.start_agent("node1")
    config = write_config(
        tmp_path / "prefetch.toml",
        'id = "acme/does-not-exist"',
        f'id = "{MODEL}"\nrevision = "no-such-branch"',
        f'id = "{MODEL}"\ninclude = ["*.json"]',
    )
    r = run_hfbt(*prefetch_args(config, node, "--tracker", deployment.cluster.tracker_url))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    failed = [line for line in r.stderr.splitlines() if line.startswith("hfbt: prefetch failed:")]
    assert len(failed) == 2, r.stderr
    assert "model/acme/does-not-exist@main" in failed[0] and "RepoNotFound" in failed[0]
    assert f"model/{MODEL}@no-such-branch" in failed[1] and "RevisionNotFound" in failed[1]
    # The entry after the failures was pulled anyway.
    snap = next((node.cache_dir / "models--acme--tiny" / "snapshots").iterdir())
    assert sorted(files_of(snap)) == sorted(p for p in files_of(deployment.model_dir) if p.endswith(".json"))


def test_a_second_prefetch_exits_at_once_with_a_clear_message(tmp_path: Path) -> None:
    # No seed: the first prefetch waits for a mirror job that nobody runs, holding the node's lock.
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(make_origin(tmp_path / "origin"))
        cluster.start_tracker()
        cache, state = tmp_path / "node" / "hub", tmp_path / "node" / "state"
        config = write_config(tmp_path / "prefetch.toml", f'id = "{MODEL}"', tracker=cluster.tracker_url)
        args = [
            "prefetch", "--config", str(config), "--cache-dir", str(cache), "--state-dir", str(state),
            "--agent", "none", "--stall-timeout", "60",
        ]  # fmt: skip
        first = subprocess.Popen(
            [sys.executable, "-m", "hfbt", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            lock = state / MAINTENANCE_LOCK
            deadline = time.monotonic() + 30
            while not (lock.exists() and "prefetch (pid" in lock.read_text()):
                assert first.poll() is None and time.monotonic() < deadline, (
                    "the first prefetch never started"
                )
                time.sleep(0.05)
            t0 = time.monotonic()
            second = run_hfbt(*args, timeout=30)
            elapsed = time.monotonic() - t0
            assert first.poll() is None  # still running: the second one did not wait for it
        finally:
            first.kill()
            first.wait()
    assert second.returncode == 75
    assert elapsed < 10
    assert f"hfbt prefetch (pid {first.pid}" in second.stderr and "maintenance lock" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1


def test_cron_prints_the_crontab_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p.toml", f'id = "{MODEL}"')
    r = run_hfbt("prefetch", "--config", str(config), "--cron", "*/15 * * * *", "--cache-dir", "/data/hub")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("*/15 * * * * ")
    assert f"prefetch --config {config.resolve()} --cache-dir /data/hub" in line
    assert line.endswith("2>&1 | logger -t hfbt-prefetch")
    bad = run_hfbt("prefetch", "--config", str(config), "--cron", "every 15 minutes")
    assert bad.returncode == 1 and "not a cron schedule" in bad.stderr


def test_cron_line_and_config_rules() -> None:
    assert cron_line("@daily", ["hfbt", "prefetch"]).startswith("@daily hfbt prefetch ")
    with pytest.raises(HfbtError, match="cron schedule"):
        cron_line("* * * *", ["hfbt"])
    ok = parse(
        {"tracker": "http://t:1", "repo": [{"id": "a/b", "pin": True, "include": ["*.json"]}]}, Path("x")
    )
    assert ok.tracker == "http://t:1" and ok.repos[0].pin and ok.repos[0].include == ("*.json",)
    for raw, message in [
        ({"repo": [{"id": "a/b", "revison": "v1"}]}, "unknown key"),
        ({"repo": []}, "no \\[\\[repo\\]\\]"),
        ({"repo": [{"id": "a/b", "type": "space"}]}, "repo type"),
        ({"repo": [{"id": "a/b", "include": "*.json"}]}, "list of glob"),
        ({"repo": [{"id": "a/b", "pin": "yes"}]}, "pin must be"),
        ({"repos": [{"id": "a/b"}]}, "unknown key"),
    ]:
        with pytest.raises(HfbtError, match=message):
            parse(raw, Path("x.toml"))


def test_bad_config_file_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text("[[repo]\nid = 1")
    r = run_hfbt("prefetch", "--config", str(config), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 1 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_cron_argv_keeps_only_what_differs_from_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse({"repo": [{"id": MODEL}]}, Path("p.toml"))
    base = [*hfbt_argv(), "prefetch", "--config", str(tmp_path / "p.toml")]
    assert cron_argv(Path("p.toml"), spec) == base
    argv = cron_argv(Path("p.toml"), spec, "http://t:1", Path("c"), Path("s"), "none", "n1")
    assert argv == [
        *base,
        *("--tracker", "http://t:1", "--cache-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s")),
        *("--agent", "none", "--node-name", "n1"),
    ]
    # The file names its own tracker, which wins over --tracker anyway: cron needs no flag for it.
    own = parse({"tracker": "http://ctl:6969", "repo": [{"id": MODEL}]}, Path("p.toml"))
    assert cron_argv(Path("p.toml"), own, "http://t:1") == base
