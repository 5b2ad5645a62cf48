"""The HF_ENDPOINT shim, judged by the real huggingface_hub client (library and `hf` CLI) against a
real agent, tracker, seed and origin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, scan_cache_dir, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from hfbt.cluster import Agent, LocalCluster
from tests.conftest import DATASET, MODEL, files_of, make_origin

SHARD = "model-00001-of-00002.safetensors"


class Env:
    def __init__(self, cluster: LocalCluster, root: Path, agent: Agent) -> None:
        self.cluster, self.root, self.agent = cluster, root, agent
        self.url = agent.shim_url

    def originals(self, repo_type: str) -> dict[str, bytes]:
        return files_of(self.root / f"{repo_type}s" / (MODEL if repo_type == "model" else DATASET))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("shim")
    root = make_origin(base / "origin")
    with LocalCluster(base / "run") as cluster:
        cluster.start_origin(root, extra=("--ref", "refs/pr/1", "--ref", "v1.0"))
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        yield Env(cluster, root, cluster.start_agent("node1"))


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_hub_client_reads_a_repo_through_the_shim(env: Env, tmp_path: Path, repo_type: str) -> None:
    repo = MODEL if repo_type == "model" else DATASET
    originals = env.originals(repo_type)
    kw = {"repo_type": repo_type, "endpoint": env.url}
    top, nested = (
        ("config.json", "nested/deeper/notes.md") if repo_type == "model" else ("README.md", "data/test.csv")
    )

    for name in (top, nested):
        got = hf_hub_download(repo, name, cache_dir=tmp_path / "single", **kw)
        assert Path(got).read_bytes() == originals[name]
    snap = snapshot_download(repo, cache_dir=tmp_path / "all", **kw)
    assert files_of(Path(snap)) == originals
    part = snapshot_download(repo, cache_dir=tmp_path / "part", allow_patterns=["*.json", "*.csv"], **kw)
    assert files_of(Path(part)) == {p: b for p, b in originals.items() if p.endswith((".json", ".csv"))}
    assert scan_cache_dir(tmp_path / "all").warnings == []

    api = HfApi(endpoint=env.url)
    info = api.repo_info(repo, repo_type=repo_type, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {p: len(b) for p, b in originals.items()}
    lfs = [s for s in info.siblings if s.lfs]
    assert lfs and all(s.lfs.sha256 == hf_etag(env, repo_type, repo, s.rfilename) for s in lfs)
    assert sorted(api.list_repo_files(repo, repo_type=repo_type)) == sorted(originals)
    tree = {e.path for e in api.list_repo_tree(repo, repo_type=repo_type, recursive=True)}
    assert set(originals) <= tree
    infos = api.get_paths_info(repo, [nested, nested.rsplit("/", 1)[0]], repo_type=repo_type)
    assert {i.path for i in infos} == {nested, nested.rsplit("/", 1)[0]}


def hf_etag(env: Env, repo_type: str, repo: str, path: str) -> str:
    prefix = "" if repo_type == "model" else "datasets/"
    r = httpx.head(f"{env.url}/{prefix}{repo}/resolve/main/{path}")
    return r.headers["x-linked-etag"].strip('"')


def test_hf_cli_download(env: Env, tmp_path: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    out = tmp_path / "out"
    r = subprocess.run(
        [str(hf), "download", MODEL, "--local-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_ENDPOINT": env.url, "HF_HOME": str(tmp_path / "hf-home")},
    )
    assert r.returncode == 0, r.stderr
    got = {p: b for p, b in files_of(out).items() if not p.startswith(".cache/")}
    assert got == env.originals("model")


@pytest.mark.parametrize("revision", ["main", "refs/pr/1", "v1.0", "commit"])
def test_revision_forms(env: Env, tmp_path: Path, revision: str) -> None:
    commit = HfApi(endpoint=env.url).model_info(MODEL).sha
    rev = commit if revision == "commit" else revision
    got = hf_hub_download(MODEL, SHARD, revision=rev, cache_dir=tmp_path, endpoint=env.url)
    assert Path(got).read_bytes() == env.originals("model")[SHARD]
    assert Path(got).parent.name == commit


def test_missing_repo_revision_and_file_raise_the_clients_errors(env: Env, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "config.json", cache_dir=tmp_path, endpoint=env.url)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(MODEL, "config.json", revision="nope", cache_dir=tmp_path, endpoint=env.url)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(MODEL, "nope.bin", cache_dir=tmp_path, endpoint=env.url)


def test_range_in_the_middle_of_a_file(env: Env) -> None:
    data = env.originals("model")[SHARD]
    start, end = 5_000_000, 9_000_000  # crosses the boundary of pieces 1 and 2
    r = httpx.get(f"{env.url}/{MODEL}/resolve/main/{SHARD}", headers={"Range": f"bytes={start}-{end}"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert r.content == data[start : end + 1]
    head = httpx.head(f"{env.url}/{MODEL}/resolve/main/{SHARD}")
    assert int(head.headers["content-length"]) == len(data)
    assert not any(k.lower().startswith("x-xet") for k in head.headers)


def test_four_clients_download_the_same_file_at_once(env: Env, tmp_path: Path) -> None:
    shard2 = "model-00002-of-00002.safetensors"

    def one(i: int) -> bytes:
        return Path(
            hf_hub_download(MODEL, shard2, cache_dir=tmp_path / str(i), endpoint=env.url)
        ).read_bytes()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert all(r == env.originals("model")[shard2] for r in results)


def test_routes_the_shim_does_not_serve_go_to_the_origin(env: Env) -> None:
    # serve-dir has no whoami: its own Hub-shaped 404 comes back through the shim.
    r = httpx.get(f"{env.url}/api/whoami-v2", headers={"Authorization": "Bearer hf_x"})
    direct = httpx.get(f"{env.cluster.origin_url}/api/whoami-v2")
    assert (r.status_code, r.json()) == (direct.status_code, direct.json())


def test_client_cache_is_the_agents_cache(tmp_path: Path) -> None:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed()
        agent = cluster.start_agent("node1")
        snap = snapshot_download(MODEL, cache_dir=agent.cache_dir, endpoint=agent.shim_url)
        originals = files_of(root / "models" / MODEL)
        assert files_of(Path(snap)) == originals
        # The agent finishes its own copy of each blob in the background, into the same names.
        blobs = agent.cache_dir / "models--acme--tiny" / "blobs"
        deadline = time.monotonic() + 60
        while any(p.name.endswith(".hfbt-partial") for p in blobs.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert scan_cache_dir(agent.cache_dir).warnings == []
        assert not [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
        assert (
            files_of(Path(snapshot_download(MODEL, cache_dir=agent.cache_dir, local_files_only=True)))
            == originals
        )
        # Each blob crossed the swarm once, though both the client and the agent wrote it.
        down = httpx.get(f"{agent.url}/v1/status").json()["totals"]["downloaded"]
        assert down <= 1.05 * sum(len(b) for b in originals.values())
        # A second read finds everything in the shared cache.
        before = httpx.get(f"{agent.url}/v1/status").json()["totals"]["downloaded"]
        snapshot_download(MODEL, cache_dir=agent.cache_dir, endpoint=agent.shim_url)
        assert httpx.get(f"{agent.url}/v1/status").json()["totals"]["downloaded"] == before


def test_a_cold_read_streams_before_the_file_is_complete(tmp_path: Path) -> None:
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root)
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed(extra=("--upload-mbit", "24"))  # ~3 MB/s: the shard takes ~3 s to cross
        agent = cluster.start_agent("node1")
        data = files_of(root / "models" / MODEL)[SHARD]
        etag = hf_etag_from(agent.shim_url, SHARD)
        final = agent.cache_dir / "models--acme--tiny" / "blobs" / etag
        got = bytearray()
        with httpx.stream("GET", f"{agent.shim_url}/{MODEL}/resolve/main/{SHARD}", timeout=120) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()
            got += next(chunks)
            complete_at_first_byte = final.exists()
            for chunk in chunks:
                got += chunk
        assert not complete_at_first_byte
        assert bytes(got) == data


def hf_etag_from(url: str, path: str) -> str:
    return httpx.head(f"{url}/{MODEL}/resolve/main/{path}", timeout=60).headers["x-linked-etag"].strip('"')


def test_private_repo_through_the_shim_uses_the_callers_token(tmp_path: Path) -> None:
    token = "hf_ShimCallerToken0123456789"
    root = make_origin(tmp_path / "origin")
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_origin(root, env={"HFBT_ORIGIN_TOKEN": token})
        cluster.start_tracker(ref_ttl=300)
        cluster.start_seed(env={"HF_TOKEN": token})
        agent = cluster.start_agent("node1")
        with pytest.raises(RepositoryNotFoundError):  # GatedRepoError is one
            hf_hub_download(
                MODEL, "config.json", cache_dir=tmp_path / "a", endpoint=agent.shim_url, token=False
            )
        got = hf_hub_download(MODEL, SHARD, cache_dir=tmp_path / "b", endpoint=agent.shim_url, token=token)
        assert Path(got).read_bytes() == files_of(root / "models" / MODEL)[SHARD]
        assert not [p.name for p in cluster.procs if token in p.log_text()]


def test_origin_unreachable_gives_a_hub_shaped_error(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "run") as cluster:
        cluster.start_tracker()
        agent = cluster.start_agent("node1")  # no origin started: the agent forwards to a dead port
        r = httpx.get(f"{agent.shim_url}/api/whoami-v2")
        assert r.status_code == 502 and "could not be reached" in r.json()["error"]
        assert r.headers.get("x-error-message")


def test_transformers_downloads_through_the_shim_with_only_hf_endpoint_set(env: Env, tmp_path: Path) -> None:
    script = (
        "from transformers import PretrainedConfig\n"
        "from transformers.utils import cached_file\n"
        f"cfg = PretrainedConfig.from_pretrained({MODEL!r})\n"
        f"print(cfg.hidden_size)\n"
        f"print(cached_file({MODEL!r}, {SHARD!r}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_ENDPOINT": env.url, "HF_HOME": str(tmp_path / "hf-home")},
    )
    assert r.returncode == 0, r.stderr
    hidden, shard = r.stdout.strip().splitlines()[-2:]
    assert hidden == "64"
    assert Path(shard).read_bytes() == env.originals("model")[SHARD]
