"""`hfbt gc`: keep the HF cache under a budget by evicting least recently used revisions.

Three parts, so the policy can be tested without a disk:
- inventory(): reads the cache with huggingface_hub's own scan_cache_dir() (I/O);
- plan(): decides what goes (pure): revisions beyond --keep-revisions per repo, then the least recently
  used ones until the cache fits --max-size; pinned revisions never; a blob only when no kept snapshot
  of its repo uses it (and its bytes only count as freed when no kept blob is a hard link to it);
- apply(): removes refs first, then the snapshot, then the blobs, so scan_cache_dir() never sees a ref
  naming a missing snapshot or a dangling symlink, even if gc is killed half way.
run_gc() is the command (lock, agent, apply); render() prints what it did.

The agent must stop seeding a removed blob (or seed another copy of it, when another repo of the cache
holds the same etag), and its record in hfbt.published must go, or a restart would re-seed it:
hfbt.published.forget_published() does that for the store, Node.forget() for a running agent.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from huggingface_hub import scan_cache_dir
from rich.console import Console
from rich.table import Table

from hfbt import cache, pins
from hfbt.agent.client import local_agent
from hfbt.config import NodeConfig
from hfbt.errors import HfbtError
from hfbt.manifest import is_commit
from hfbt.nodelock import maintenance_lock
from hfbt.pins import Pin
from hfbt.published import PublishedStore, forget_published
from hfbt.sizes import human

log = logging.getLogger("hfbt.gc")

RepoKey = tuple[str, str]  # (repo_type, repo_id)

# --- what the cache holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class CachedRevision:
    repo_type: str
    repo_id: str
    commit: str
    refs: frozenset[str]
    blobs: frozenset[str]  # absolute paths of the blob files its snapshot links to
    last_access: float  # see inventory(): when the revision was last read or pulled
    files: int = 0

    @property
    def key(self) -> RepoKey:
        return (self.repo_type, self.repo_id)

    @property
    def label(self) -> str:
        refs = f" ({', '.join(sorted(self.refs))})" if self.refs else ""
        return f"{self.repo_type}/{self.repo_id}@{self.commit[:12]}{refs}"


@dataclass(frozen=True)
class CachedBlob:
    path: str
    size: int
    inode: tuple[int, int]  # (st_dev, st_ino): hard-linked copies in two repos are one disk allocation


@dataclass(frozen=True)
class Inventory:
    revisions: tuple[CachedRevision, ...]
    blobs: tuple[CachedBlob, ...]  # every blob some snapshot links to
    other_bytes: int = 0  # partial downloads, unlinked blobs, repos scan_cache_dir refused: never touched
    warnings: tuple[str, ...] = ()

    def size(self) -> int:
        return sum({b.inode: b.size for b in self.blobs}.values()) + self.other_bytes


def inventory(cache_dir: Path) -> Inventory:
    """Read the cache as the Hub client sees it.

    last_access of a revision: the newest atime among the blobs only it uses in its repo (reading the
    new revision of a model touches the shards it shares with the old one, which must not make the old
    one look recently used), else among all its blobs; never older than its snapshot folder's mtime
    (a pull that hard-linked an old blob in is a fresh use). atime is as good as the mount: with the
    usual relatime it moves at most once a day, which is the resolution a cache budget needs.
    """
    if not cache_dir.is_dir():
        return Inventory((), ())
    report = scan_cache_dir(cache_dir)
    revisions: list[CachedRevision] = []
    blobs: dict[str, CachedBlob] = {}
    linked: set[str] = set()
    for repo in report.repos:
        users: Counter[str] = Counter()
        for rev in repo.revisions:
            users.update({str(f.blob_path) for f in rev.files})
        for rev in repo.revisions:
            paths = {str(f.blob_path) for f in rev.files}
            atimes = {str(f.blob_path): f.blob_last_accessed for f in rev.files}
            own = [atimes[p] for p in paths if users[p] == 1] or list(atimes.values())
            try:
                floor = rev.snapshot_path.stat().st_mtime
            except OSError:
                floor = 0.0
            revisions.append(
                CachedRevision(
                    repo.repo_type,
                    repo.repo_id,
                    rev.commit_hash,
                    frozenset(rev.refs),
                    frozenset(paths),
                    max([floor, *own]),
                    len(rev.files),
                )
            )
            for p in paths:
                if p not in blobs:
                    st = os.stat(p)
                    blobs[p] = CachedBlob(p, st.st_size, (st.st_dev, st.st_ino))
        linked.update(users)
    other = 0
    for folder in cache_dir.iterdir():
        if folder.is_dir() and "--" in folder.name:
            for p in (folder / "blobs").glob("*"):
                if str(p) not in linked and p.is_file():
                    other += p.stat().st_size
    warnings = tuple(str(w) for w in report.warnings)
    return Inventory(tuple(revisions), tuple(blobs.values()), other, warnings)


# --- the plan (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Eviction:
    revision: CachedRevision
    reason: str  # "keep-revisions" | "budget"


@dataclass(frozen=True)
class Plan:
    evictions: tuple[Eviction, ...]
    remove_blobs: tuple[CachedBlob, ...]
    size_before: int
    size_after: int
    max_size: int | None
    pinned: tuple[CachedRevision, ...] = field(default=())

    @property
    def over_budget(self) -> bool:
        """Still too big after evicting everything allowed (pins and downloads in progress stay)."""
        return self.max_size is not None and self.size_after > self.max_size

    @property
    def freed(self) -> int:
        return self.size_before - self.size_after


def pinned_commits(pins: Iterable[Pin], revisions: Iterable[CachedRevision]) -> set[tuple[str, str, str]]:
    """(repo_type, repo_id, commit) of every pinned revision present in the cache.

    A pin names what prefetch pulled (its recorded commit) and also follows the ref it was given, so
    a branch that moved since the last prefetch keeps both the commit the node has and the new one.
    """
    out: set[tuple[str, str, str]] = set()
    by_ref = {(r.repo_type, r.repo_id, ref): r.commit for r in revisions for ref in r.refs}
    for p in pins:
        if p.commit:
            out.add((p.repo_type, p.repo_id, p.commit))
        if is_commit(p.revision):
            out.add((p.repo_type, p.repo_id, p.revision))
        elif (c := by_ref.get((p.repo_type, p.repo_id, p.revision))) is not None:
            out.add((p.repo_type, p.repo_id, c))
    return out


def plan(
    inv: Inventory,
    max_size: int | None,
    keep_revisions: int | None = None,
    pinned: set[tuple[str, str, str]] | frozenset = frozenset(),
) -> Plan:
    """Which revisions to evict, in order, and which blob files that frees."""
    blob_by_path = {b.path: b for b in inv.blobs}
    users: Counter[str] = Counter(p for r in inv.revisions for p in r.blobs)
    inode_links: Counter[tuple[int, int]] = Counter(b.inode for b in inv.blobs)
    size = inv.size()
    before = size
    evictions: list[Eviction] = []
    removed: list[CachedBlob] = []
    is_pinned = lambda r: (r.repo_type, r.repo_id, r.commit) in pinned  # noqa: E731
    lru = lambda r: (r.last_access, r.repo_type, r.repo_id, r.commit)  # noqa: E731

    def evict(rev: CachedRevision, reason: str) -> None:
        nonlocal size
        evictions.append(Eviction(rev, reason))
        for p in sorted(rev.blobs):
            users[p] -= 1
            if users[p] == 0 and p in blob_by_path:
                blob = blob_by_path[p]
                removed.append(blob)
                inode_links[blob.inode] -= 1
                if inode_links[blob.inode] == 0:
                    size -= blob.size

    # 1. At most `keep_revisions` revisions per repo, the most recently used ones; pinned ones stay on top.
    if keep_revisions is not None:
        by_repo: dict[RepoKey, list[CachedRevision]] = {}
        for r in inv.revisions:
            by_repo.setdefault(r.key, []).append(r)
        surplus = [
            r
            for revs in by_repo.values()
            for r in sorted(revs, key=lru, reverse=True)[keep_revisions:]
            if not is_pinned(r)
        ]
        for r in sorted(surplus, key=lru):
            evict(r, "keep-revisions")
    # 2. The budget: least recently used first, until the cache fits.
    if max_size is not None:
        gone = {e.revision for e in evictions}
        for r in sorted((r for r in inv.revisions if r not in gone and not is_pinned(r)), key=lru):
            if size <= max_size:
                break
            evict(r, "budget")
    return Plan(
        tuple(evictions),
        tuple(removed),
        before,
        size,
        max_size,
        tuple(r for r in inv.revisions if is_pinned(r)),
    )


# --- doing it (I/O) -----------------------------------------------------------------------------


def apply(plan: Plan, cache_dir: Path) -> None:
    """Remove what the plan says; every intermediate state is a valid cache for scan_cache_dir()."""
    touched: set[Path] = set()
    for ev in plan.evictions:
        rev = ev.revision
        repo = cache.repo_dir(cache_dir, rev.repo_type, rev.repo_id)
        touched.add(repo)
        for ref in rev.refs:
            path = repo / "refs" / ref
            # The Hub client may have moved the ref to a newer commit since the scan: then it stays.
            if cache.read_ref(repo, ref) == rev.commit:
                path.unlink(missing_ok=True)
                _prune_empty(path.parent, stop=repo / "refs")
        shutil.rmtree(cache.snapshot_dir(repo, rev.commit), ignore_errors=True)
        shutil.rmtree(repo / ".no_exist" / rev.commit, ignore_errors=True)
        (repo / "trees" / f"{rev.commit}.json").unlink(missing_ok=True)
    for blob in plan.remove_blobs:
        Path(blob.path).unlink(missing_ok=True)
    for repo in touched:
        _drop_if_empty(repo)


def _prune_empty(folder: Path, stop: Path) -> None:
    """refs/pr/1 leaves refs/pr behind; an empty folder there is harmless but untidy."""
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _drop_if_empty(repo: Path) -> None:
    """A repo with no snapshot and no blob left goes entirely (refs, .no_exist, trees included).

    Anything still in blobs/ (a download in progress, a blob not linked yet) keeps the folder, with its
    snapshots/ dir: scan_cache_dir() rejects a repo folder without one.
    """
    snaps = repo / "snapshots"
    if snaps.is_dir() and any(snaps.iterdir()):
        return
    if any(p.is_file() for p in (repo / "blobs").glob("*")):
        snaps.mkdir(parents=True, exist_ok=True)
        return
    shutil.rmtree(repo, ignore_errors=True)


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcResult:
    plan: Plan
    dry_run: bool
    agent: str | None  # the agent told to stop seeding, if one serves this cache
    stopped: int = 0  # blobs no longer seeded
    moved: int = 0  # blobs now seeded from another repo's copy


def run_gc(
    cfg: NodeConfig,
    max_size: int | None,
    keep_revisions: int | None,
    dry_run: bool,
    agent_url: str | None,
    agent_required: bool = False,
) -> GcResult:
    if max_size is None and keep_revisions is None:
        raise HfbtError("BadRequest", "nothing to do: give --max-size and/or --keep-revisions")
    if keep_revisions is not None and keep_revisions < 1:
        raise HfbtError("BadRequest", "--keep-revisions must be at least 1")

    def decide() -> Plan:
        inv = inventory(cfg.cache_dir)
        for w in inv.warnings:
            log.warning("event=gc_skips_corrupt_repo detail=%r", w)
        pinned = pinned_commits(pins.load_all(cfg.state_dir), inv.revisions)
        return plan(inv, max_size, keep_revisions, pinned)

    if dry_run:
        return GcResult(decide(), True, None)
    with maintenance_lock(cfg.state_dir, "gc"):
        p = decide()
        if not p.evictions:
            return GcResult(p, False, None)
        agent = local_agent(cfg.cache_dir, agent_url, agent_required)
        paths = [b.path for b in p.remove_blobs]
        # Before deleting: the agent stops seeding (or moves to a surviving copy) while the files exist.
        if agent:
            answer = _agent_forget(agent, paths)
            stopped, moved = answer["stopped"], answer["moved"]
        else:
            changed = forget_published(PublishedStore(cfg.state_dir / "published"), paths, cfg.cache_dir)
            stopped, moved = sum(1 for c in changed if not c.new), sum(1 for c in changed if c.new)
        apply(p, cfg.cache_dir)
        for ev in p.evictions:
            log.info("event=gc_evicted revision=%s reason=%s", ev.revision.label, ev.reason)
        return GcResult(p, False, agent, stopped, moved)


def _agent_forget(agent: str, paths: list[str]) -> dict:
    try:
        r = httpx.post(f"{agent}/v1/forget", json={"paths": paths}, timeout=120.0)
    except httpx.HTTPError as e:
        raise HfbtError("AgentUnreachable", f"lost the agent at {agent}: {e}") from None
    if r.status_code != 200:
        raise HfbtError("AgentError", f"the agent refused to stop seeding: {r.text[:200]}")
    return r.json()


# --- what it prints -----------------------------------------------------------------------------


def render(result: GcResult, console: Console) -> None:
    """The evicted revisions as a table, then one summary line (plain text: cron mail and scripts read it)."""
    p = result.plan
    if p.evictions:
        table = Table(title="would evict" if result.dry_run else "evicted", title_justify="left")
        for col in ("revision", "reason", "last used"):
            table.add_column(col)
        for ev in p.evictions:
            table.add_row(ev.revision.label, ev.reason, _when(ev.revision.last_access))
        console.print(table)
    verb = "would free" if result.dry_run else "freed"
    budget_note = f" (budget {human(p.max_size)})" if p.max_size is not None else ""
    console.out(
        f"cache {human(p.size_before)} → {human(p.size_after)}{budget_note}:"
        f" {len(p.evictions)} revision(s), {len(p.remove_blobs)} blob(s), {verb} {human(p.freed)}"
        + (f"; pinned {len(p.pinned)}" if p.pinned else "")
        + (f"; agent stopped seeding {result.stopped}, moved {result.moved}" if result.agent else ""),
        highlight=False,
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
