"""Private repos stay private: a node gets a private revision only if the origin accepts its Hub token.

The tracker never stores Hub tokens: it asks the origin (its own --origin, never one a seed names) whether the
token can read that repo, and remembers the yes/no in memory for a few minutes under a hash of the
token, so a busy cluster does not hit the origin once per request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from tracker.errors import ApiError

ALLOW_TTL_S = 300.0
DENY_TTL_S = 30.0


class AccessUnverifiable(Exception):
    """The origin could not be asked (unknown or unreachable): neither yes nor no."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    until: float


class AccessChecker:
    def __init__(self, origin_url: str, clock: Callable[[], float] = time.monotonic) -> None:
        # The tracker's configuration, never a seed's word: whoever names the origin decides who may
        # read private repos, and receives every user's Hub token.
        self._origin_url = origin_url
        self._clock = clock
        self._decisions: dict[tuple[str, str, str], Decision] = {}

    async def allowed(self, repo_type: str, repo_id: str, hf_token: str | None) -> bool:
        if not hf_token:
            return False
        key = (hashlib.sha256(hf_token.encode()).hexdigest(), repo_type, repo_id)
        now = self._clock()
        cached = self._decisions.get(key)
        if cached and cached.until > now:
            return cached.allowed
        ok = await self._ask_origin(repo_type, repo_id, hf_token)
        self._decisions[key] = Decision(ok, now + (ALLOW_TTL_S if ok else DENY_TTL_S))
        return ok

    async def _ask_origin(self, repo_type: str, repo_id: str, hf_token: str) -> bool:
        origin = self._origin_url
        if not origin:
            raise AccessUnverifiable("the tracker has no --origin to check Hub tokens against")
        url = f"{origin.rstrip('/')}/api/{repo_type}s/{repo_id}"
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                r = await client.get(url, headers={"Authorization": f"Bearer {hf_token}"})
        except httpx.HTTPError as e:
            raise AccessUnverifiable(
                f"the origin could not be reached to check the token: {type(e).__name__}"
            ) from None
        if r.status_code == 200:
            return True
        if r.status_code in (401, 403, 404):
            return False
        raise AccessUnverifiable(f"the origin answered HTTP {r.status_code} when checking the token")


async def require_hub_access(
    access: AccessChecker, repo_type: str, repo_id: str, hf_token: str | None
) -> None:
    """Raise the API's answer unless the origin lets `hf_token` read this private repo."""
    if not hf_token:
        raise ApiError(
            403,
            "GatedRepo",
            f"{repo_id} is private on the origin: pass a Hub token that can read it (HF_TOKEN)",
        )
    try:
        ok = await access.allowed(repo_type, repo_id, hf_token)
    except AccessUnverifiable as e:
        raise ApiError(503, "OriginError", f"cannot check access to private {repo_id}: {e}") from None
    if not ok:
        raise ApiError(403, "GatedRepo", f"the origin does not let this Hub token read {repo_id}")


async def require_any_hub_access(
    access: AccessChecker, repos: Sequence[tuple[str, str]], hf_token: str | None
) -> None:
    """Pass if the token can read any one of `repos` (asked in order); else raise the last refusal."""
    denied: ApiError | None = None
    for repo_type, repo_id in repos:
        try:
            await require_hub_access(access, repo_type, repo_id, hf_token)
            return
        except ApiError as e:
            denied = e
    assert denied is not None
    raise denied
