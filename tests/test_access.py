"""Hub access checks (tracker/access.py) against real HTTP origins on 127.0.0.1.

Private repos: `hfbt serve-dir --token` (the Hub's answer for a private repo without access: 401).
Gated repos: serve-dir has no gated mode, so a tiny Starlette app plays the Hub's part: the repo's info
answers 200 to any logged-in user, a download (`/resolve/`) answers 403 GatedRepo unless the user was
granted access, and 302 to a CDN address when they were.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hfbt.cluster import LocalCluster, free_port
from hfbt.manifest import FileEntry
from tracker.access import (
    DENY_TTL_S,
    AccessChecker,
    AccessUnverifiable,
    InvalidToken,
    probe_path,
    require_any_hub_access,
    require_hub_access,
)
from tracker.errors import ApiError

TOKEN = "hf_private_reader"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GRANTED = "hf_granted"
NOT_GRANTED = "hf_logged_in_only"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# -- a private origin: hfbt serve-dir --token ------------------------------------------------------


@dataclass
class Private:
    url: str
    model_commit: str
    dataset_commit: str


@pytest.fixture(scope="module")
def private_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    root = tmp_path_factory.mktemp("origin")
    model = root / "models" / "acme" / "secret"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights" / "model.safetensors").write_bytes(b"\x01" * 4096)
    data = root / "datasets" / "acme" / "corpus"
    data.mkdir(parents=True)
    (data / "train.parquet").write_bytes(b"\x02" * 1024)
    with LocalCluster(tmp_path_factory.mktemp("run")) as cluster:
        url = cluster.start_origin(root, env={"HFBT_ORIGIN_TOKEN": TOKEN})
        auth = {"Authorization": f"Bearer {TOKEN}"}
        m = httpx.get(f"{url}/api/models/acme/secret", headers=auth).json()["sha"]
        d = httpx.get(f"{url}/api/datasets/acme/corpus", headers=auth).json()["sha"]
        yield Private(url, m, d)


def test_private_repo_needs_a_token_the_origin_accepts(private_origin: Private) -> None:
    o = private_origin
    access = AccessChecker(o.url)

    async def scenario() -> None:
        path = "weights/model.safetensors"
        assert await access.allowed("model", "acme/secret", o.model_commit, path, TOKEN)
        assert not await access.allowed("model", "acme/secret", o.model_commit, path, "hf_someone_else")
        assert not await access.allowed("model", "acme/secret", o.model_commit, path, None)
        # Datasets live under /datasets/ on the origin.
        assert await access.allowed("dataset", "acme/corpus", o.dataset_commit, "train.parquet", TOKEN)
        assert not await access.allowed("dataset", "acme/corpus", o.dataset_commit, "train.parquet", "hf_x")
        await require_hub_access(access, "model", "acme/secret", o.model_commit, path, TOKEN)
        with pytest.raises(ApiError) as e:
            await require_hub_access(access, "model", "acme/secret", o.model_commit, path, "hf_someone_else")
        assert (e.value.status, e.value.code) == (403, "GatedRepo")
        with pytest.raises(ApiError) as e:
            await require_hub_access(access, "model", "acme/secret", o.model_commit, path, None)
        assert e.value.status == 403 and "HF_TOKEN" in e.value.detail
        await access.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "token", ["hf_t\u00f6ken", "hf_tok en", "hf_tok\nen", "hf_\x00", "x" * 5000, "\u2603", "hf_\udcff"]
)
def test_a_token_that_cannot_be_one_is_refused_without_asking_the_origin(
    private_origin: Private, token: str
) -> None:
    # An unreachable origin: had the checker asked it, the answer would be 503, not 422.
    for origin in (private_origin.url, "http://127.0.0.1:9"):
        access = AccessChecker(origin)

        async def scenario(access: AccessChecker = access) -> None:
            with pytest.raises(InvalidToken):
                await access.allowed("model", "acme/secret", COMMIT, "config.json", token)
            with pytest.raises(ApiError) as e:
                await require_hub_access(access, "model", "acme/secret", COMMIT, "config.json", token)
            assert (e.value.status, e.value.code) == (422, "BadRequest") and "X-HF-Token" in e.value.detail
            holders = [("model", "acme/secret", COMMIT, "config.json")] * 3
            with pytest.raises(ApiError) as e:
                await require_any_hub_access(access, holders, token)
            assert e.value.status == 422
            assert len(access) == 0

        run(scenario())


# -- a gated origin: the Hub's answers, played by a tiny Starlette app ------------------------------


@dataclass
class Gated:
    url: str
    heads: list[tuple[str, str]] = field(default_factory=list)  # (URL path, token) of every resolve HEAD
    cdn_hits: int = 0
    status_override: int | None = None


def _gated_app(state: Gated) -> Starlette:
    def token_of(request: Request) -> str:
        return request.headers.get("authorization", "").removeprefix("Bearer ")

    async def info(request: Request) -> Response:
        # Any logged-in user reads a gated repo's info: this is why the info page proves nothing.
        if not token_of(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"id": request.path_params["repo"], "gated": "manual", "sha": COMMIT})

    async def resolve(request: Request) -> Response:
        token = token_of(request)
        state.heads.append((request.url.path, token))
        if state.status_override is not None:
            return Response(status_code=state.status_override)
        if not token:
            return Response(status_code=401, headers={"X-Error-Code": "GatedRepo"})
        if token != GRANTED:
            return Response(status_code=403, headers={"X-Error-Code": "GatedRepo"})
        # What the Hub answers for an LFS file: a redirect to the CDN, which the checker must not follow.
        return Response(status_code=302, headers={"Location": f"{state.url}/cdn/blob"})

    async def cdn(request: Request) -> Response:
        state.cdn_hits += 1
        return Response(b"weights")

    return Starlette(
        routes=[
            Route("/api/models/{repo:path}", info),
            Route("/cdn/blob", cdn, methods=["GET", "HEAD"]),
            Route("/{repo:path}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
        ]
    )


@pytest.fixture
def gated_origin() -> Iterator[Gated]:
    port = free_port()
    state = Gated(f"http://127.0.0.1:{port}")
    server = uvicorn.Server(
        uvicorn.Config(_gated_app(state), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the gated origin did not start"
        time.sleep(0.02)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)


def test_gated_repo_is_allowed_only_to_users_granted_access(gated_origin: Gated) -> None:
    g = gated_origin
    # The old check (the repo's info answers 200) would have let every logged-in user in.
    info = httpx.get(f"{g.url}/api/models/acme/gated", headers={"Authorization": f"Bearer {NOT_GRANTED}"})
    assert info.status_code == 200
    access = AccessChecker(g.url)

    async def scenario() -> None:
        path = "model-00001-of-00002.safetensors"
        assert not await access.allowed("model", "acme/gated", COMMIT, path, NOT_GRANTED)
        assert await access.allowed("model", "acme/gated", COMMIT, path, GRANTED)
        with pytest.raises(ApiError) as e:
            await require_hub_access(access, "model", "acme/gated", COMMIT, path, NOT_GRANTED)
        assert e.value.status == 403
        await access.aclose()

    run(scenario())
    url_path = f"/acme/gated/resolve/{COMMIT}/model-00001-of-00002.safetensors"
    assert g.heads == [(url_path, NOT_GRANTED), (url_path, GRANTED)]  # the refusal above was cached
    assert g.cdn_hits == 0  # the redirect is the answer: the blob itself is never fetched


def test_decisions_are_cached_per_token_and_repo_in_a_bounded_lru(gated_origin: Gated) -> None:
    g = gated_origin
    now = [1000.0]
    access = AccessChecker(g.url, clock=lambda: now[0], max_decisions=3)

    async def ask(token: str, repo: str = "acme/gated") -> bool:
        return await access.allowed("model", repo, COMMIT, "w.safetensors", token)

    async def scenario() -> None:
        assert await ask(GRANTED)
        assert await ask(GRANTED, "acme/other")  # another repo: asked again
        assert not await ask("hf_a")
        assert len(g.heads) == 3
        assert await ask(GRANTED)  # cached, and now the most recently used
        assert len(g.heads) == 3
        # Past the bound the least recently used decision goes, whatever the number of tokens seen.
        for i in range(50):
            await ask(f"hf_many_{i}")
        assert len(access) == 3 and len(g.heads) == 53
        assert await ask(GRANTED)  # evicted long ago: asked again
        assert len(g.heads) == 54
        # A denial is remembered only briefly, so a user granted access meanwhile gets in soon.
        assert not await ask("hf_b")
        assert not await ask("hf_b") and len(g.heads) == 55
        now[0] += DENY_TTL_S + 1
        assert not await ask("hf_b") and len(g.heads) == 56
        await access.aclose()

    run(scenario())


def test_one_pooled_client_with_timeouts(gated_origin: Gated) -> None:
    access = AccessChecker(gated_origin.url)

    async def scenario() -> None:
        await access.allowed("model", "acme/gated", COMMIT, "a", "hf_1")
        client = access._http()
        await access.allowed("model", "acme/gated", COMMIT, "a", "hf_2")
        assert access._http() is client and client.timeout.connect is not None
        await access.aclose()

    run(scenario())


@pytest.mark.parametrize("status", [500, 502, 429, 400])
def test_an_origin_that_cannot_answer_is_neither_yes_nor_no(gated_origin: Gated, status: int) -> None:
    gated_origin.status_override = status
    access = AccessChecker(gated_origin.url)

    async def scenario() -> None:
        with pytest.raises(AccessUnverifiable):
            await access.allowed("model", "acme/gated", COMMIT, "a", GRANTED)
        with pytest.raises(ApiError) as e:
            await require_hub_access(access, "model", "acme/gated", COMMIT, "a", GRANTED)
        assert (e.value.status, e.value.code) == (503, "OriginError")
        assert len(access) == 0  # not cached: the next request asks again
        await access.aclose()

    run(scenario())


def test_unreachable_or_missing_origin() -> None:
    async def scenario() -> None:
        for origin in ("http://127.0.0.1:9", ""):
            with pytest.raises(ApiError) as e:
                await require_hub_access(AccessChecker(origin), "model", "a/b", COMMIT, "x", "hf_1")
            assert e.value.status == 503

    run(scenario())


def test_any_of_several_holders_will_do(gated_origin: Gated) -> None:
    g = gated_origin
    access = AccessChecker(g.url)

    async def scenario() -> None:
        holders = [("model", "acme/one", COMMIT, "a.bin"), ("dataset", "acme/two", COMMIT, "b.bin")]
        await require_any_hub_access(access, holders, GRANTED)
        with pytest.raises(ApiError) as e:
            await require_any_hub_access(access, holders, NOT_GRANTED)
        assert e.value.status == 403
        with pytest.raises(ApiError):
            await require_any_hub_access(access, [], GRANTED)
        await access.aclose()

    run(scenario())
    # Models resolve at /<repo>/resolve/..., datasets at /datasets/<repo>/resolve/...
    one, two = f"/acme/one/resolve/{COMMIT}/a.bin", f"/datasets/acme/two/resolve/{COMMIT}/b.bin"
    assert g.heads == [(one, GRANTED), (one, NOT_GRANTED), (two, NOT_GRANTED)]


def test_probe_path_is_the_largest_file() -> None:
    files = [FileEntry("README.md", 10, "a" * 40), FileEntry("w/model.safetensors", 9000, "b" * 64, "b" * 64)]
    assert probe_path(files) == "w/model.safetensors"
    assert probe_path([]) == ""


def test_path_is_quoted_into_the_url() -> None:
    access = AccessChecker("http://origin/")
    url = access._url("dataset", "acme/x", COMMIT, "dir with space/a#b?.txt")
    assert url == f"http://origin/datasets/acme/x/resolve/{COMMIT}/dir%20with%20space/a%23b%3F.txt"
