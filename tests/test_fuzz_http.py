"""Fuzz suite: schemathesis-generated requests against the real servers, started as subprocesses on
127.0.0.1: `hfbt serve-dir` and the HF_ENDPOINT shim inside `hfbt agent` (with a tracker, a seed and
serve-dir as its origin, as in production). The surfaces are described in tests/fuzz/servedir.yaml
and tests/fuzz/shim.yaml.

What every response must satisfy, whatever the input:
- never a 5xx (the shim's 503 "busy" and 502/504 from an unreachable peer would be flagged too: none
  is expected from a healthy local deployment);
- a 4xx carries a Hub-style reason: {"error": ...} in the body, X-Error-Message on a HEAD;
- a 200/206 of a known file is byte-identical to the file (or the range of it Content-Range names);
- the connection is never cut, and no process logs a traceback.

Each surface gets HFBT_FUZZ_CASES cases (default 10,000); the test counts the cases it really sent
and fails below that, so a fuzz run that generates nothing cannot pass. Generation is Hypothesis'
(derandomized: the same cases every run); requests are pipelined on a few threads so that the
generator, the client and the server keep both cores busy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests  # schemathesis' own transport, used here to serialize its cases
import schemathesis  # not skipped when missing: a fuzz suite that quietly runs nothing is a defect
import yaml

from hfbt.cluster import LocalCluster, free_port
from hfbt.synth import make_model_repo, write_random_file
from tests.fuzz.runner import Check, Reply, Sent, assert_clean, fuzz

CASES = int(os.environ.get("HFBT_FUZZ_CASES", "10000"))  # per surface
FUZZ_DIR = Path(__file__).parent / "fuzz"
MODEL, DATASET = "acme/tiny", "acme/corpus"
REFS = ("refs/pr/1", "v1.0")
# An unparsable request stops at uvicorn's h11 parser, before any hfbt code: its plain-text 400.
_H11_REJECT = b"Invalid HTTP request received."


def make_fuzz_origin(root: Path) -> dict[str, dict[str, bytes]]:
    """Small repos (every GET stays cheap) with the shapes that matter: LFS and plain files, nested
    folders, an empty file. Returns {repo_type: {path: bytes}}."""
    tiny = root / "models" / MODEL
    make_model_repo(tiny, shard_mb=0.1, seed=0)
    corpus = root / "datasets" / DATASET
    (corpus / "data").mkdir(parents=True)
    (corpus / "README.md").write_text("---\nlicense: mit\n---\n# corpus\n")
    (corpus / "data" / "test.csv").write_text("a,b\n1,2\n3,4\n")
    write_random_file(corpus / "data" / "train.parquet", 50_000, seed=2)
    return {
        kind: {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}
        for kind, d in (("model", tiny), ("dataset", corpus))
    }


def load_schema(name: str, commit: str):  # noqa: ANN201 - schemathesis' OpenApiSchema
    """tests/fuzz/<name>.yaml, with the served commit among the good revisions."""
    doc = yaml.safe_load((FUZZ_DIR / f"{name}.yaml").read_text())
    params = doc["components"]["parameters"]
    params["good_revision"]["schema"]["enum"].append(commit)
    huge = "9" * 4400  # past int()'s 4300-digit limit: too long to write into the YAML
    params["known_limit"]["schema"]["enum"].append(huge)
    params["known_range"]["schema"]["enum"] += [f"bytes=0-{huge}", f"bytes={huge}-", f"bytes=-{huge}"]
    return schemathesis.openapi.from_dict(doc)


def _weight(op: object) -> int:
    # The served repo by name gets twice the cases of a templated route: those reach the real code.
    return 1 if "{" in op.path.split("/resolve/")[0].split("/revision/")[0].split("/tree/")[0] else 2  # type: ignore[attr-defined]


def hub_checks(originals: dict[str, dict[str, bytes]]) -> Check:
    """The rules every response of the Hub read API must follow (module docstring)."""

    def check(sent: Sent, r: Reply) -> str | None:
        if r.status >= 500:
            return f"HTTP {r.status} {r.body[:300]!r}"
        if 400 <= r.status < 500:
            return _reason_problem(sent, r)
        if r.status in (200, 206) and "/resolve/" in sent.template and sent.method == "GET":
            return _bytes_problem(sent, r, originals)
        return None

    return check


def _reason_problem(sent: Sent, r: Reply) -> str | None:
    if r.body == _H11_REJECT:
        return None
    if sent.method == "HEAD":
        return None if r.headers.get("x-error-message") else "a HEAD error without X-Error-Message"
    try:
        body = json.loads(r.body)
    except ValueError:
        return f"HTTP {r.status} without a JSON reason: {r.body[:200]!r}"
    if not (isinstance(body, dict) and isinstance(body.get("error") or body.get("detail"), str)):
        return f"HTTP {r.status} without an error reason: {r.body[:200]!r}"
    return None


def _bytes_problem(sent: Sent, r: Reply, originals: dict[str, dict[str, bytes]]) -> str | None:
    params = sent.params
    kind = "dataset" if sent.template.startswith("/datasets/") else "model"
    repo = MODEL if kind == "model" else DATASET
    named = f"{params['namespace']}/{params['name']}" if "namespace" in params else repo
    # "/acme/tiny/resolve/{revision}/config.json" names its file in the path itself.
    file = params["file"] if "file" in params else sent.template.split("/resolve/", 1)[1].split("/", 1)[1]
    data = originals.get(kind, {}).get(file)
    if data is None or named != repo:
        return f"HTTP {r.status} for a file that does not exist"
    expected = data
    if r.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers.get("content-range", ""))
        if m is None or int(m[3]) != len(data):
            return f"206 with Content-Range {r.headers.get('content-range')!r}"
        expected = data[int(m[1]) : int(m[2]) + 1]
    if r.body != expected:
        return f"HTTP {r.status}: {len(r.body)} bytes that are not the file's ({len(expected)})"
    return None


# --- serve-dir --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("fuzz-origin")
    return root, make_fuzz_origin(root)


@dataclass
class Process:
    url: str
    log: Path


@pytest.fixture
def serve_dir(origin_tree: tuple[Path, dict], tmp_path: Path) -> Iterator[Process]:
    root, _ = origin_tree
    port = free_port()
    log = tmp_path / "serve-dir.log"
    # One repo, as `hfbt serve-dir DIR --repo org/name` serves a checkpoint (the shim's test below
    # fuzzes the multi-repo layout through the origin it forwards to).
    refs = [a for ref in REFS for a in ("--ref", ref)]
    args = ["serve-dir", str(root / "models" / MODEL), "--repo", MODEL, "--port", str(port), *refs]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hfbt", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, f"{url}/_hfbt/health", log)
        yield Process(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer; log: {log.read_text(errors='replace')[-2000:]}")


def _commit(url: str) -> str:
    return requests.get(f"{url}/api/models/{MODEL}", timeout=30).json()["sha"]


def test_fuzz_serve_dir(serve_dir: Process, origin_tree: tuple[Path, dict]) -> None:
    _, originals = origin_tree
    schema = load_schema("servedir", _commit(serve_dir.url))
    outcome = fuzz(schema, serve_dir.url, CASES, hub_checks({"model": originals["model"]}), _weight)
    assert_clean(outcome, {"serve-dir": serve_dir.log.read_text(errors="replace")}, CASES)


# --- the shim ---------------------------------------------------------------------------------------


@pytest.fixture
def shim(origin_tree: tuple[Path, dict], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root, _ = origin_tree
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root, extra=tuple(a for ref in REFS for a in ("--ref", ref)))
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        agent = cluster.start_agent("node1")
        yield agent.shim_url, tmp_path / "run" / "logs"


def test_fuzz_shim(shim: tuple[str, Path], origin_tree: tuple[Path, dict]) -> None:
    url, logs = shim
    _, originals = origin_tree
    # Mirrored before the run, as a node would find a revision it serves: the cases then exercise
    # the shim, not the seed's first download.
    for repo_type, repo in (("model", MODEL), ("dataset", DATASET)):
        prefix = "" if repo_type == "model" else "datasets/"
        for path in originals[repo_type]:
            r = requests.get(f"{url}/{prefix}{repo}/resolve/main/{path}", timeout=120)
            assert r.status_code == 200 and r.content == originals[repo_type][path], path
    schema = load_schema("shim", _commit(url))
    outcome = fuzz(schema, url, CASES, hub_checks(originals), _weight)
    assert_clean(outcome, {p.name: p.read_text(errors="replace") for p in logs.glob("*.log")}, CASES)
