"""Private and gated repos stay closed: a node gets one only if the origin lets its Hub token download it.

The tracker never stores Hub tokens: it asks the origin (its own --origin, never one a seed names) and
remembers the yes/no in memory for a few minutes under a hash of the token, so a busy cluster does not
hit the origin once per request. The question is a download, not the repo's info page: on a gated repo
every logged-in Hub user reads the info (`GET /api/models/<id>` answers 200), but only users who were
granted access may download, and the gate applies to `/resolve/`. So the tracker asks
`HEAD <origin>/<repo_id>/resolve/<commit>/<path>` for one real file of the revision, as the user, and
does not follow the redirect an LFS file answers with (the redirect is the yes).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from hfbt.manifest import FileEntry
from tracker.errors import ApiError

ALLOW_TTL_S = 300.0
DENY_TTL_S = 30.0
# One decision is ~200 bytes: the cache stays around 2 MB however many tokens and repos are seen.
MAX_DECISIONS = 10_000
ORIGIN_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A Hub token is printable ASCII without spaces (hf_...); anything else cannot be sent as a header
# (httpx refuses non-ASCII) and is no token of the origin's.
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")

# (repo_type, repo_id, commit, path) of one file of a revision: what the origin is asked about.
Holder = tuple[str, str, str, str]


class AccessUnverifiable(Exception):
    """The origin could not be asked (unknown or unreachable): neither yes nor no."""


class InvalidToken(ValueError):
    """A Hub token that cannot be one (not printable ASCII, or too long); the origin is not asked."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    until: float


def valid_token(hf_token: str) -> bool:
    return _TOKEN.fullmatch(hf_token) is not None


def probe_path(files: Iterable[FileEntry]) -> str:
    """The file of a revision to ask the origin about: the largest ("" if none).

    The largest is the weights or data, which a gated repo always gates; a small README might not be.
    """
    largest = max(files, key=lambda f: (f.size, f.path), default=None)
    return largest.path if largest is not None else ""


class AccessChecker:
    def __init__(
        self,
        origin_url: str,
        clock: Callable[[], float] = time.monotonic,
        max_decisions: int = MAX_DECISIONS,
        timeout: httpx.Timeout = ORIGIN_TIMEOUT,
    ) -> None:
        # The tracker's configuration, never a seed's word: whoever names the origin decides who may
        # read private repos, and receives every user's Hub token.
        self._origin_url = origin_url.rstrip("/")
        self._clock = clock
        self._max = max_decisions
        self._timeout = timeout
        # LRU: a hit moves to the end, an insert past `max_decisions` drops the oldest.
        self._decisions: OrderedDict[tuple[str, str, str], Decision] = OrderedDict()
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._decisions)

    async def allowed(
        self, repo_type: str, repo_id: str, commit: str, path: str, hf_token: str | None
    ) -> bool:
        """Whether the origin lets `hf_token` download `path` at `commit` (cached per token and repo).

        Raises InvalidToken for a token that cannot be one, AccessUnverifiable if the origin cannot answer.
        """
        if not hf_token:
            return False
        if not valid_token(hf_token):
            raise InvalidToken("X-HF-Token is not a Hub token: expected printable ASCII without spaces")
        # Access is granted per repo (private: membership, gated: the user's request), so one file's
        # answer stands for the whole repo.
        key = (hashlib.sha256(hf_token.encode()).hexdigest(), repo_type, repo_id)
        now = self._clock()
        cached = self._decisions.get(key)
        if cached is not None and cached.until > now:
            self._decisions.move_to_end(key)
            return cached.allowed
        ok = await self._ask_origin(repo_type, repo_id, commit, path, hf_token)
        self._decisions[key] = Decision(ok, now + (ALLOW_TTL_S if ok else DENY_TTL_S))
        self._decisions.move_to_end(key)
        while len(self._decisions) > self._max:
            self._decisions.popitem(last=False)
        return ok

    def _url(self, repo_type: str, repo_id: str, commit: str, path: str) -> str:
        prefix = "/datasets" if repo_type == "dataset" else ""
        where = f"{quote(commit, safe='')}/{quote(path, safe='/')}"
        return f"{self._origin_url}{prefix}/{quote(repo_id, safe='/')}/resolve/{where}"

    def _http(self) -> httpx.AsyncClient:
        # One pooled client for the process; a new event loop (tests run several) gets its own.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
        self._client_loop = None

    async def _ask_origin(self, repo_type: str, repo_id: str, commit: str, path: str, hf_token: str) -> bool:
        if not self._origin_url:
            raise AccessUnverifiable("the tracker has no --origin to check Hub tokens against")
        try:
            r = await self._http().head(
                self._url(repo_type, repo_id, commit, path), headers={"Authorization": f"Bearer {hf_token}"}
            )
        except httpx.HTTPError as e:
            raise AccessUnverifiable(
                f"the origin could not be reached to check the token: {type(e).__name__}"
            ) from None
        if r.status_code == 200 or 300 <= r.status_code < 400:
            return True
        if r.status_code in (401, 403, 404):
            return False
        raise AccessUnverifiable(f"the origin answered HTTP {r.status_code} when checking the token")


async def require_hub_access(
    access: AccessChecker, repo_type: str, repo_id: str, commit: str, path: str, hf_token: str | None
) -> None:
    """Raise the API's answer unless the origin lets `hf_token` download `path` of this private repo."""
    if not hf_token:
        raise ApiError(
            403,
            "GatedRepo",
            f"{repo_id} is private or gated on the origin: pass a Hub token that can read it (HF_TOKEN)",
        )
    try:
        ok = await access.allowed(repo_type, repo_id, commit, path, hf_token)
    except InvalidToken as e:
        raise ApiError(422, "BadRequest", str(e)) from None
    except AccessUnverifiable as e:
        raise ApiError(503, "OriginError", f"cannot check access to private {repo_id}: {e}") from None
    if not ok:
        raise ApiError(403, "GatedRepo", f"the origin does not let this Hub token download from {repo_id}")


async def require_any_hub_access(
    access: AccessChecker, holders: Sequence[Holder], hf_token: str | None
) -> None:
    """Pass if the token can read any one of `holders` (asked in order); else raise the last refusal.

    A malformed token is refused at once: asking about the other holders would not change the answer.
    """
    denied: ApiError | None = None
    for repo_type, repo_id, commit, path in holders:
        try:
            await require_hub_access(access, repo_type, repo_id, commit, path, hf_token)
            return
        except ApiError as e:
            if e.status == 422:
                raise
            denied = e
    if denied is None:
        raise ApiError(403, "GatedRepo", "no repo holding this blob can be checked for access")
    raise denied
