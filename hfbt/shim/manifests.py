"""Revision metadata for the shim: the tracker's manifests, cached briefly, as Hub snapshots.

A client reading one repo sends a HEAD and a GET per file; without a cache each would cost a
tracker round trip. A commit's complete manifest never changes, so it is kept for long; a branch is
re-asked after a few seconds so a new commit shows up as fast as the tracker knows it. Entries are
keyed by a hash of the caller's Hub token, so a private revision is only ever served to callers the
tracker (through the origin) accepted.

A miss may wait long (up to PENDING_LIMIT_S while the tracker mirrors the revision): `get(wait=False)`
raises ManifestPending instead, so the app can do that wait off the threadpool every request shares.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from hfbt.agent.node import Node
from hfbt.errors import HfbtError
from hfbt.hub.readapi import HubError, Snapshot, snapshot_from_manifest
from hfbt.manifest import FileEntry, Manifest, is_commit

BRANCH_TTL_S = 2.0  # a branch or tag: re-asked this soon, so a new commit shows up fast
COMMIT_TTL_S = 600.0
PENDING_LIMIT_S = 120.0

# tracker / node error code -> (HTTP status, Hub X-Error-Code) the Hub client maps to its exceptions
_HUB_ERRORS: dict[str, tuple[int, str | None]] = {
    "RepoNotFound": (404, "RepoNotFound"),
    "RevisionNotFound": (404, "RevisionNotFound"),
    "EntryNotFound": (404, "EntryNotFound"),
    "GatedRepo": (403, "GatedRepo"),
    "BadRequest": (400, None),
    "TrackerUnreachable": (503, None),
    "Stalled": (504, None),
    "Timeout": (504, None),
}


class ManifestPending(Exception):
    """Not in the cache: getting it means asking the tracker, which may hold the call for seconds."""

    def __init__(self, repo_type: str, repo_id: str, revision: str, token: str | None) -> None:
        super().__init__(f"{repo_type}:{repo_id}@{revision} is not cached")
        self.key = (repo_type, repo_id, revision, token)


def hub_error(e: HfbtError) -> HubError:
    status, code = _HUB_ERRORS.get(e.code, (502, None))
    return HubError(status, e.message, code)


@dataclass(frozen=True)
class Revision:
    manifest: Manifest
    snapshot: Snapshot
    entries: dict[str, FileEntry]  # by path: a GET looks its file up here, not by scanning the manifest

    @classmethod
    def of(cls, manifest: Manifest) -> Revision:
        return cls(manifest, snapshot_from_manifest(manifest), {f.path: f for f in manifest.files})


class ManifestCache:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, Revision]] = {}

    def get(
        self, repo_type: str, repo_id: str, revision: str, token: str | None, wait: bool = True
    ) -> Revision:
        """The revision, from the cache or the tracker; with wait=False a miss raises ManifestPending."""
        key = (repo_type, repo_id, revision, hashlib.sha256(token.encode()).hexdigest() if token else None)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit and hit[0] > now:
            return hit[1]
        if not wait:
            raise ManifestPending(repo_type, repo_id, revision, token)
        rev = self._ask(repo_type, repo_id, revision, token)
        ttl = COMMIT_TTL_S if rev.manifest.complete and is_commit(revision) else BRANCH_TTL_S
        with self._lock:
            self._entries[key] = (now + ttl, rev)
            if len(self._entries) > 4096:  # bounded: drop the oldest half
                for k in sorted(self._entries, key=lambda k: self._entries[k][0])[:2048]:
                    del self._entries[k]
        return rev

    def _ask(self, repo_type: str, repo_id: str, revision: str, token: str | None) -> Revision:
        deadline = time.monotonic() + PENDING_LIMIT_S
        try:
            while True:
                reply = self._node.manifest(repo_type, repo_id, revision, wait=20, token=token)
                if reply.manifest is not None:
                    return Revision.of(reply.manifest)
                if time.monotonic() > deadline:
                    raise HubError(504, f"{repo_id}@{revision} is still being mirrored; retry shortly")
        except HfbtError as e:
            raise hub_error(e) from None
