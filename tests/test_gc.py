"""`hfbt gc`: the pure plan on made-up inventories, then real agents, pulls and `hfbt gc` subprocesses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from hfbt import pins
from hfbt.errors import HfbtError
from hfbt.gc import CachedBlob, CachedRevision, Inventory, inventory, pinned_commits, plan
from hfbt.sizes import parse_size
from tests.conftest import DATASET, MODEL, Deployment, files_of, run_hfbt

# --- the plan (pure) ----------------------------------------------------------------------------


def rev(repo: str, commit: str, blobs: set[str], last: float, refs: tuple[str, ...] = ()) -> CachedRevision:
    return CachedRevision("model", repo, commit * 40, frozenset(refs), frozenset(blobs), last)


def blob(path: str, size: int, inode: int | None = None) -> CachedBlob:
    return CachedBlob(path, size, (1, inode if inode is not None else hash(path)))


def test_plan_evicts_least_recently_used_first_until_it_fits() -> None:
    inv = Inventory(
        (rev("a/x", "1", {"x1"}, 100), rev("a/y", "2", {"y1"}, 300), rev("a/z", "3", {"z1"}, 200)),
        (blob("x1", 10), blob("y1", 10), blob("z1", 10)),
    )
    p = plan(inv, max_size=15)
    assert [e.revision.repo_id for e in p.evictions] == ["a/x", "a/z"]
    assert {b.path for b in p.remove_blobs} == {"x1", "z1"}
    assert (p.size_before, p.size_after, p.over_budget) == (30, 10, False)
    assert plan(inv, max_size=30).evictions == ()


def test_plan_keeps_blobs_a_kept_revision_uses_and_counts_hard_links_once() -> None:
    old = rev("a/m", "1", {"shard", "cfg-old"}, 100, ("v1",))
    new = rev("a/m", "2", {"shard", "cfg-new"}, 200, ("main",))
    # a/twin holds the same shard as a hard link (same inode): removing one link frees nothing.
    twin = rev("a/twin", "3", {"twin-shard"}, 50)
    inv = Inventory(
        (old, new, twin),
        (blob("shard", 1000, 7), blob("cfg-old", 5), blob("cfg-new", 6), blob("twin-shard", 1000, 7)),
    )
    assert inv.size() == 1011
    p = plan(inv, max_size=1006)
    # twin goes first (LRU) but frees nothing (its blob is a link to a kept inode); then old frees cfg-old.
    assert [e.revision.commit[0] for e in p.evictions] == ["3", "1"]
    assert {b.path for b in p.remove_blobs} == {"twin-shard", "cfg-old"}
    assert p.size_after == 1006


def test_plan_never_evicts_pins_and_says_when_it_cannot_fit() -> None:
    a, b = rev("a/x", "1", {"x"}, 100, ("main",)), rev("a/y", "2", {"y"}, 200)
    inv = Inventory((a, b), (blob("x", 10), blob("y", 10)), other_bytes=3)
    pinned = pinned_commits([pins.Pin("model", "a/x", "main", None)], inv.revisions)
    p = plan(inv, max_size=0, pinned=pinned)
    assert [e.revision for e in p.evictions] == [b]
    assert p.pinned == (a,) and p.over_budget and p.size_after == 13


def test_plan_keep_revisions_per_repo() -> None:
    revs = tuple(rev("a/m", str(i), {f"b{i}"}, 100 + i) for i in range(4)) + (rev("a/n", "9", {"n"}, 1),)
    inv = Inventory(revs, tuple(blob(p, 1) for r in revs for p in r.blobs))
    p = plan(inv, max_size=None, keep_revisions=2)
    assert sorted(e.revision.commit[0] for e in p.evictions) == ["0", "1"]
    assert {e.reason for e in p.evictions} == {"keep-revisions"}
    # A pinned old revision stays on top of the two most recent ones.
    pinned = {("model", "a/m", "0" * 40)}
    p = plan(inv, max_size=None, keep_revisions=2, pinned=pinned)
    assert [e.revision.commit[0] for e in p.evictions] == ["1"]


def test_parse_size() -> None:
    assert parse_size("500G") == 500 * 1024**3
    assert parse_size("1.5T") == int(1.5 * 1024**4)
    assert parse_size("800GB") == 800 * 10**9
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("12345") == 12345
    with pytest.raises(HfbtError):
        parse_size("lots")


# --- end to end ---------------------------------------------------------------------------------


def age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t), follow_symlinks=False)


def status_hashes(url: str) -> set[str]:
    return {t["info_hash"] for t in httpx.get(f"{url}/v1/status").json()["torrents"]}


def published(state: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (state / "published").glob("*.json")}


@pytest.mark.ref_ttl(0)
def test_gc_evicts_lru_keeps_shared_and_pinned_and_the_agent_stops_seeding(
    deployment: Deployment, tmp_path: Path
) -> None:
    node = deployment.cluster.start_agent("node1")
    cache, state = node.cache_dir, node.state_dir
    pull = lambda *a: run_hfbt(  # noqa: E731
        "pull",
        *a,
        "--tracker",
        deployment.cluster.tracker_url,
        "--cache-dir",
        str(cache),
        "--agent",
        node.url,
        "-q",
    )
    r = pull(MODEL)
    assert r.returncode == 0, r.stderr
    old = Path(r.stdout.strip().splitlines()[-1])
    (deployment.model_dir / "config.json").write_text('{"model_type": "synth", "v": 2}\n')
    r = pull(MODEL)
    assert r.returncode == 0, r.stderr
    new = Path(r.stdout.strip().splitlines()[-1])
    assert new != old
    # The dataset is pinned the way an operator pins: through a prefetch config with pin = true.
    config = tmp_path / "prefetch.toml"
    config.write_text(f'[[repo]]\nid = "{DATASET}"\ntype = "dataset"\npin = true\n')
    r = run_hfbt(
        "prefetch", "--config", str(config), "--tracker", deployment.cluster.tracker_url,
        "--cache-dir", str(cache), "--state-dir", str(state), "--agent", node.url,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = next((cache / "datasets--acme--corpus" / "snapshots").iterdir())

    repo = cache / "models--acme--tiny"
    old_cfg = (old / "config.json").resolve()
    shard = (new / "model-00001-of-00002.safetensors").resolve()
    assert (old / "model-00001-of-00002.safetensors").resolve() == shard  # shared by both revisions
    # Last use: the pinned dataset oldest, then the old model revision, then the new one.
    for p in [*data.rglob("*"), data]:
        age(p.resolve(), 3000)
    for p in (old_cfg, old):
        age(p, 2000)
    for p in [*(repo / "blobs").iterdir(), new]:
        if p != old_cfg:
            age(p, 1000)
    seeded = published(state)
    assert old_cfg.name in seeded and shard.name in seeded
    before = status_hashes(node.url)
    assert seeded[old_cfg.name]["info_hash"] in before

    # A budget one byte under the cache's size: evicting the old revision (its config.json) is enough.
    size = inventory(cache).size()
    dry = run_hfbt(
        "gc", "--max-size", str(size - 1), "--dry-run", "--cache-dir", str(cache), "--state-dir", str(state)
    )
    assert dry.returncode == 0, dry.stderr
    assert "would evict" in dry.stdout and old.name[:12] in dry.stdout and old.exists()
    r = run_hfbt(
        "gc",
        "--max-size",
        str(size - 1),
        "--cache-dir",
        str(cache),
        "--state-dir",
        str(state),
        "--agent",
        node.url,
    )
    assert r.returncode == 0, r.stderr
    assert not old.exists() and not old_cfg.exists()
    assert shard.exists() and new.exists() and data.exists()
    assert (repo / "refs" / "main").read_text() == new.name
    assert scan_cache_dir(cache).warnings == []
    offline = snapshot_download(MODEL, cache_dir=cache, local_files_only=True)
    assert files_of(Path(offline)) == files_of(deployment.model_dir)
    # The agent stopped seeding the evicted blob and forgot it (a restart will not re-seed it).
    assert seeded[old_cfg.name]["info_hash"] not in status_hashes(node.url)
    assert old_cfg.name not in published(state) and shard.name in published(state)
    assert seeded[shard.name]["info_hash"] in status_hashes(node.url)

    # A budget nothing fits: everything unpinned goes, the pinned dataset stays, and gc says so.
    r = run_hfbt(
        "gc", "--max-size", "1", "--cache-dir", str(cache), "--state-dir", str(state), "--agent", node.url
    )
    assert r.returncode == 0, r.stderr
    assert "still over budget" in r.stderr
    assert not repo.exists()  # no revision and no blob left: the repo folder goes too
    assert data.exists()
    report = scan_cache_dir(cache)
    assert report.warnings == [] and {r.repo_id for r in report.repos} == {DATASET}
    hashes = status_hashes(node.url)
    assert seeded[shard.name]["info_hash"] not in hashes and shard.name not in published(state)
    assert any(rec["info_hash"] in hashes for rec in published(state).values())  # the dataset still seeds


def test_gc_needs_a_limit(tmp_path: Path) -> None:
    r = run_hfbt("gc", "--cache-dir", str(tmp_path))
    assert r.returncode == 1 and "--max-size" in r.stderr and "Traceback" not in r.stderr


def test_forget_published_moves_to_a_surviving_copy_or_drops_the_record(tmp_path: Path) -> None:
    from hfbt.published import PublishedBlob, PublishedStore, forget_published

    cache = tmp_path / "hub"
    a, b = cache / "models--o--a" / "blobs" / "e1", cache / "models--o--b" / "blobs" / "e1"
    only = cache / "models--o--a" / "blobs" / "e2"
    for p in (a, b, only):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"xyz")
    store = PublishedStore(tmp_path / "published")
    store.put(PublishedBlob("e1", "1" * 40, 3, str(a)), b"t1")
    store.put(PublishedBlob("e2", "2" * 40, 3, str(only)), b"t2")
    changes = {c.old.etag: c for c in forget_published(store, [str(a), str(only)], cache)}
    assert changes["e1"].new is not None and changes["e1"].new.path == str(b)
    assert store.get("e1")[0].path == str(b) and store.get("e1")[1] == b"t1"
    assert changes["e2"].new is None and store.get("e2") is None
    # A record that already names a copy that stays is left alone.
    assert forget_published(store, [str(a)], cache) == []
