"""serve-dir against the real huggingface_hub client, over real HTTP (uvicorn in a subprocess)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Before huggingface_hub is imported: some of its constants are read at import time.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")

from fastapi.testclient import TestClient  # noqa: E402
from huggingface_hub import (  # noqa: E402
    HfApi,
    RepoFile,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import paginate  # noqa: E402

from hfbt.config import ServeDirConfig  # noqa: E402
from hfbt.hashing import git_blob_sha1_bytes  # noqa: E402
from hfbt.hub.servedir import create_app, lfs_pointer  # noqa: E402
from hfbt.manifest import is_lfs  # noqa: E402
from hfbt.synth import make_dataset_repo, make_model_repo  # noqa: E402

MODEL = "acme/tiny"
DATASET = "acme/corpus"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    url: str
    root: Path
    model_files: dict[str, int]
    dataset_files: dict[str, int]

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / MODEL

    @property
    def dataset_dir(self) -> Path:
        return self.root / "datasets" / DATASET

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_hfbt/stats").json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_origin(root: Path, port: int) -> subprocess.Popen:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hfbt.config import ServeDirConfig\n"
        "from hfbt.hub.servedir import serve\n"
        "serve(ServeDirConfig(directory=Path(sys.argv[1]), port=int(sys.argv[2])))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"origin exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"{url}/_hfbt/stats", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("origin did not become ready")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("origin")
    model_files = make_model_repo(root / "models" / MODEL, shard_mb=5, seed=0)
    dataset_files = make_dataset_repo(root / "datasets" / DATASET, seed=1)
    # A git folder inside a repo must stay invisible.
    (root / "models" / MODEL / ".git").mkdir()
    (root / "models" / MODEL / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    port = _free_port()
    proc = _start_origin(root, port)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, url)
        yield Served(url, root, model_files, dataset_files)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_same_tree(snapshot: Path, original: Path, files: dict[str, int]) -> None:
    got = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert got == set(files)
    for rel, size in files.items():
        data = (snapshot / rel).read_bytes()
        assert len(data) == size, rel
        assert data == (original / rel).read_bytes(), rel


def test_snapshot_download_model_is_byte_identical(served: Served, tmp_path: Path) -> None:
    folder = Path(snapshot_download(MODEL, endpoint=served.url, cache_dir=tmp_path))
    _assert_same_tree(folder, served.model_dir, served.model_files)
    commit = HfApi(endpoint=served.url).model_info(MODEL).sha
    assert folder.name == commit
    assert (tmp_path / "models--acme--tiny" / "refs" / "main").read_text() == commit


def test_snapshot_download_dataset_is_byte_identical(served: Served, tmp_path: Path) -> None:
    folder = Path(snapshot_download(DATASET, repo_type="dataset", endpoint=served.url, cache_dir=tmp_path))
    _assert_same_tree(folder, served.dataset_dir, served.dataset_files)


def test_hf_hub_download_nested_and_empty_files(served: Served, tmp_path: Path) -> None:
    nested = hf_hub_download(MODEL, "nested/deeper/notes.md", endpoint=served.url, cache_dir=tmp_path)
    assert Path(nested).read_bytes() == (served.model_dir / "nested/deeper/notes.md").read_bytes()
    empty = hf_hub_download(MODEL, "empty.txt", endpoint=served.url, cache_dir=tmp_path)
    assert Path(empty).read_bytes() == b""


def test_model_info_files_metadata(served: Served) -> None:
    info = HfApi(endpoint=served.url).model_info(MODEL, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(served.model_files)  # .git/ is not part of the repo
    for rel, size in served.model_files.items():
        data = (served.model_dir / rel).read_bytes()
        s = siblings[rel]
        assert s.size == size
        if is_lfs(rel, size):
            sha = hashlib.sha256(data).hexdigest()
            assert s.lfs is not None and s.lfs.sha256 == sha and s.lfs.size == size
            # As on the Hub: an LFS file's blob id is the git sha1 of its pointer, not of its content.
            assert s.blob_id == git_blob_sha1_bytes(lfs_pointer(sha, size))
            assert s.lfs.pointer_size == len(lfs_pointer(sha, size))
        else:
            assert s.lfs is None
            assert s.blob_id == git_blob_sha1_bytes(data)
    assert any(s.lfs for s in info.siblings)


def test_dataset_info(served: Served) -> None:
    info = HfApi(endpoint=served.url).dataset_info(DATASET, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == served.dataset_files


def test_list_repo_tree_recursive_and_paginated(served: Served) -> None:
    api = HfApi(endpoint=served.url)
    files = {e.path: e.size for e in api.list_repo_tree(MODEL, recursive=True) if isinstance(e, RepoFile)}
    assert files == served.model_files
    # The client's own pagination code, with a page size small enough to need several pages.
    url = f"{served.url}/api/models/{MODEL}/tree/main"
    paged = list(paginate(url, params={"recursive": True, "limit": 2}, headers={}))
    assert {e["path"] for e in paged if e["type"] == "file"} == set(served.model_files)
    assert {e["path"] for e in paged if e["type"] == "directory"} == {"nested", "nested/deeper"}
    assert len(paged) == len({e["path"] for e in paged})  # no entry twice across pages
    first = httpx.get(url, params={"recursive": "true", "limit": 2})
    assert 'rel="next"' in first.headers["link"]
    top = [e.path for e in api.list_repo_tree(MODEL, path_in_repo="nested")]
    assert top == ["nested/deeper"]


def test_head_sends_real_content_length(served: Served) -> None:
    for rel, size in served.model_files.items():
        r = httpx.head(f"{served.url}/{MODEL}/resolve/main/{rel}")
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == size, rel
        assert r.headers["x-repo-commit"]
        assert r.headers["accept-ranges"] == "bytes"
        assert not any(h.lower().startswith("x-xet") for h in r.headers)
    meta = get_hf_file_metadata(hf_hub_url(MODEL, "model-00001-of-00002.safetensors", endpoint=served.url))
    data = (served.model_dir / "model-00001-of-00002.safetensors").read_bytes()
    assert meta.size == len(data)
    assert meta.etag == hashlib.sha256(data).hexdigest()


def test_range_requests(served: Served) -> None:
    rel = "model-00002-of-00002.safetensors"
    data = (served.model_dir / rel).read_bytes()
    url = f"{served.url}/{MODEL}/resolve/main/{rel}"
    r = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    r = httpx.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"


def test_errors_map_to_client_exceptions(served: Served, tmp_path: Path) -> None:
    api = HfApi(endpoint=served.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/missing", "config.json", endpoint=served.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(MODEL, revision="refs/pr/1")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(MODEL, revision="v1.0", endpoint=served.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(MODEL, "missing.bin", endpoint=served.url, cache_dir=tmp_path)
    # The miss is cached the Hub way, which needs X-Repo-Commit on the 404.
    assert list((tmp_path / "models--acme--tiny" / ".no_exist").glob("*/missing.bin"))


@pytest.mark.parametrize(
    "path",
    [
        f"/{MODEL}/resolve/main/..%2F..%2Fetc%2Fpasswd",
        f"/{MODEL}/resolve/main/nested/%2E%2E/config.json",
        f"/{MODEL}/resolve/a..b/config.json",
        f"/{MODEL}/resolve/main/%FF",
        f"/{MODEL}/resolve/main/a%0Ab",
        "/acme/..%2F..%2Fx/resolve/main/config.json",
        f"/api/models/{MODEL}/tree/main?cursor=%%%",
        f"/api/models/{MODEL}/tree/main?limit=0",
        f"/api/models/{MODEL}/tree/main/..",
        "/api/models/acme/.git/revision/main",
    ],
)
def test_bad_input_is_a_4xx_with_a_reason(served: Served, path: str) -> None:
    r = httpx.get(served.url + path)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_stats_count_each_file_once(served: Served, tmp_path: Path) -> None:
    assert httpx.post(f"{served.url}/_hfbt/stats/reset").status_code == 200
    assert served.stats()["total_bytes"] == 0
    snapshot_download(MODEL, endpoint=served.url, cache_dir=tmp_path)
    stats = served.stats()
    served_bytes = stats["bytes_served"]
    for rel, size in served.model_files.items():
        assert served_bytes.get(f"model/{MODEL}/{rel}", 0) == size, rel
    assert stats["total_bytes"] == sum(served.model_files.values())
    # The client skips the GET of an empty file (its HEAD said 0 bytes).
    assert stats["requests"] == sum(1 for size in served.model_files.values() if size)


def test_changing_a_file_changes_the_commit(served: Served, tmp_path: Path) -> None:
    repo = served.root / "models" / "acme" / "mutable"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "a.txt").write_text("one\n")
    api = HfApi(endpoint=served.url)
    before = api.model_info("acme/mutable").sha
    assert api.model_info("acme/mutable").sha == before  # stable while unchanged
    assert api.model_info("acme/mutable", revision=before).sha == before
    (repo / "sub" / "a.txt").write_text("two, longer\n")
    after = api.model_info("acme/mutable").sha
    assert after != before
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/mutable", revision=before)
    path = hf_hub_download(
        "acme/mutable", "sub/a.txt", revision=after, endpoint=served.url, cache_dir=tmp_path
    )
    assert Path(path).read_text() == "two, longer\n"


def test_single_repo_mode(tmp_path: Path) -> None:
    make_dataset_repo(tmp_path / "repo", seed=3)
    app = create_app(ServeDirConfig(directory=tmp_path / "repo", repo="solo/data", repo_type="dataset"))
    with TestClient(app) as client:
        info = client.get("/api/datasets/solo/data")
        assert info.status_code == 200
        assert {s["rfilename"] for s in info.json()["siblings"]} == {
            "README.md",
            "data/test.csv",
            "data/train-00000-of-00001.parquet",
        }
        r = client.head("/datasets/solo/data/resolve/main/data/test.csv")
        assert int(r.headers["content-length"]) == (tmp_path / "repo" / "data/test.csv").stat().st_size
        assert client.get("/api/models/solo/data").headers["x-error-code"] == "RepoNotFound"
        assert client.get("/api/datasets/other/data").headers["x-error-code"] == "RepoNotFound"
