"""A client of the origin, through huggingface_hub only: resolve a revision, list its files, fetch one.

The origin is huggingface.co or any HF-compatible endpoint (hfbt serve-dir). Errors come back as
HfbtError with the Hub's own codes so the tracker can hand them to every waiting node.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from hfbt.errors import HfbtError
from hfbt.manifest import FileEntry

T = TypeVar("T")


class HubClient:
    def __init__(self, endpoint: str, token: str | None, cache_dir: Path) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.cache_dir = cache_dir
        self._api = HfApi(endpoint=self.endpoint, token=token)

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, bool]:
        """(commit, access-controlled): private and gated repos are both kept from nodes without access."""
        info = _origin_call(
            lambda: self._api.repo_info(repo_id, revision=revision, repo_type=repo_type), repo_id
        )
        if not info.sha:
            raise HfbtError("OriginError", f"the origin gave no commit for {repo_id}@{revision}")
        return info.sha, bool(info.private or getattr(info, "gated", False))

    def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[FileEntry]:
        def call() -> list[FileEntry]:
            out = []
            for item in self._api.list_repo_tree(
                repo_id, recursive=True, revision=commit, repo_type=repo_type
            ):
                if not isinstance(item, RepoFile):
                    continue
                sha = item.lfs.sha256 if item.lfs else None
                out.append(FileEntry(path=item.path, size=item.size, etag=sha or item.blob_id, sha256=sha))
            return out

        return _origin_call(call, repo_id)

    def download(self, repo_type: str, repo_id: str, commit: str, path: str) -> Path:
        """Fetch one file into the seed's own HF cache; returns the blob's real path."""

        def call() -> Path:
            snap = hf_hub_download(
                repo_id,
                path,
                repo_type=repo_type,
                revision=commit,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self._token,
            )
            return Path(os.path.realpath(snap))

        return _origin_call(call, repo_id)


def _origin_call(fn: Callable[[], T], repo_id: str) -> T:
    try:
        return fn()
    except GatedRepoError:
        raise HfbtError("GatedRepo", f"{repo_id} is gated: the seed's token has no access") from None
    except RepositoryNotFoundError:
        raise HfbtError(
            "RepoNotFound", f"repository {repo_id} not found on the origin (or no access)"
        ) from None
    except RevisionNotFoundError:
        raise HfbtError("RevisionNotFound", f"revision not found in {repo_id}") from None
    except EntryNotFoundError as e:
        raise HfbtError("EntryNotFound", f"file missing on the origin: {e}") from None
    except (HfHubHTTPError, httpx.HTTPError, OSError) as e:
        raise HfbtError(
            "OriginError", f"origin request failed for {repo_id}: {type(e).__name__}: {e}"
        ) from None
