"""serve-dir against hostile input, over real HTTP (uvicorn in a thread, raw requests): every bad input
is a 4xx with a Hub-style reason, nothing outside the served folder is listed or read, and `--token`
covers the stats too."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from hfbt.config import ServeDirConfig
from hfbt.hub.readapi import HubError
from hfbt.hub.servedir import FolderRepos, create_app
from tests.fuzz.harness import RawResponse, raw_request, serve_in_thread

SECRET = b"outside the served folder\n"
CONFIG = b'{"hidden_size": 64}\n'
WEIGHTS = bytes(range(256)) * 40  # .safetensors: an LFS file (sha256 etag)


@dataclass
class Site:
    port: int
    root: Path
    outside: Path

    def get(self, target: bytes | str, **kw: object) -> RawResponse:
        return raw_request(self.port, target, **kw)  # type: ignore[arg-type]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "served", tmp_path / "outside"
    tiny = root / "models" / "acme" / "tiny"
    _write(tiny / "config.json", CONFIG)
    _write(tiny / "weights.safetensors", WEIGHTS)
    _write(tiny / "nested" / "notes.md", b"# notes\n")
    _write(outside / "secret.txt", SECRET)
    _write(outside / "repo" / "config.json", SECRET)
    (tiny / "leak.txt").symlink_to(outside / "secret.txt")  # absolute link out of the folder
    (tiny / "nested" / "rel-leak.txt").symlink_to(Path("../../../../../outside/secret.txt"))
    (tiny / "passwd").symlink_to("/etc/passwd")
    (tiny / "linked-dir").symlink_to(outside, target_is_directory=True)
    (tiny / "alias.json").symlink_to("config.json")  # stays inside: served like the file it names
    (root / "models" / "acme" / "evil").symlink_to(outside / "repo", target_is_directory=True)
    _write(root / "datasets" / "acme" / "corpus" / "data.csv", b"a,b\n1,2\n")
    return root, outside


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    # Shared by the tests that only read; a test that changes files makes its own tree.
    root, outside = _make_tree(tmp_path_factory.mktemp("site"))
    with serve_in_thread(create_app(ServeDirConfig(directory=root))) as server:
        yield Site(server.port, root, outside)


LEAKS = ["leak.txt", "nested/rel-leak.txt", "passwd", "linked-dir/secret.txt"]


def test_symlinks_out_of_the_folder_are_neither_listed_nor_served(site: Site) -> None:
    info = site.get("/api/models/acme/tiny?blobs=true")
    assert info.status == 200
    names = {s["rfilename"] for s in info.json()["siblings"]}
    assert names == {"config.json", "weights.safetensors", "nested/notes.md", "alias.json"}
    tree = site.get("/api/models/acme/tiny/tree/main?recursive=true").json()
    assert not {e["path"] for e in tree} & set(LEAKS)
    form = "&".join(f"paths={p}" for p in LEAKS).encode()
    found = site.get(
        "/api/models/acme/tiny/paths-info/main",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=form,
    )
    assert found.status == 200 and found.json() == []
    for leak in LEAKS:
        for method in ("GET", "HEAD"):
            r = site.get(f"/acme/tiny/resolve/main/{leak}", method=method)
            assert r.status == 404, (leak, method)
            assert SECRET not in r.body and b"root:" not in r.body
    alias = site.get("/acme/tiny/resolve/main/alias.json")
    assert (alias.status, alias.body) == (200, CONFIG)


def test_a_repo_folder_linked_from_outside_is_not_a_repo(site: Site) -> None:
    r = site.get("/api/models/acme/evil")
    assert r.status == 404 and r.headers["x-error-code"] == "RepoNotFound"
    r = site.get("/acme/evil/resolve/main/config.json")
    assert r.status == 404 and SECRET not in r.body


def test_single_repo_mode_keeps_to_its_folder(tmp_path: Path) -> None:
    root, _ = _make_tree(tmp_path)
    cfg = ServeDirConfig(directory=root / "models" / "acme" / "tiny", repo="acme/tiny")
    with serve_in_thread(create_app(cfg)) as server:
        for leak in LEAKS:
            assert raw_request(server.port, f"/acme/tiny/resolve/main/{leak}").status == 404, leak
        assert raw_request(server.port, "/acme/tiny/resolve/main/alias.json").body == CONFIG


def test_an_hf_cache_snapshot_folder_is_served_as_it_is(tmp_path: Path) -> None:
    # The Hub client's layout: snapshots/<commit>/<path> are symlinks to ../../blobs/<etag>.
    repo = tmp_path / "hub" / "models--acme--tiny"
    blob = _write(repo / "blobs" / ("a" * 40), CONFIG)
    snap = repo / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(os.path.relpath(blob, snap))
    (snap / "passwd").symlink_to("/etc/passwd")
    _write(tmp_path / "outside" / "secret.txt", SECRET)
    (snap / "leak.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    with serve_in_thread(create_app(ServeDirConfig(directory=snap, repo="acme/tiny"))) as server:
        assert raw_request(server.port, "/acme/tiny/resolve/main/config.json").body == CONFIG
        names = {s["rfilename"] for s in raw_request(server.port, "/api/models/acme/tiny").json()["siblings"]}
        assert names == {"config.json"}
        assert raw_request(server.port, "/acme/tiny/resolve/main/leak.txt").status == 404


def test_a_file_changed_since_it_was_hashed_is_not_served(tmp_path: Path) -> None:
    root, _ = _make_tree(tmp_path)
    repos = FolderRepos(ServeDirConfig(directory=root))
    snap = repos.snapshot("model", "acme/tiny")
    f = snap.files["config.json"]
    fh = repos.open_file(f)
    assert fh is not None and fh.read() == CONFIG
    fh.close()
    (root / "models" / "acme" / "tiny" / "config.json").write_bytes(CONFIG + b"more")
    with pytest.raises(HubError) as e:  # its bytes would not match the etag the client checks
        repos.open_file(f)
    assert e.value.status == 503 and e.value.headers["Retry-After"]
    (root / "models" / "acme" / "tiny" / "config.json").unlink()
    assert repos.open_file(f) is None  # gone: the caller's 404


def test_with_a_token_the_stats_need_it_too(tmp_path: Path) -> None:
    root, _ = _make_tree(tmp_path)
    token = "hf_OriginToken123"
    good = {"Authorization": f"Bearer {token}"}
    with serve_in_thread(create_app(ServeDirConfig(directory=root, token=token))) as server:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": b"Bearer \xb2\xe9"}):
            r = raw_request(server.port, "/_hfbt/stats", headers=headers)  # type: ignore[arg-type]
            assert r.status == 401 and r.error(), headers
            assert b"total_bytes" not in r.body
            r = raw_request(server.port, "/_hfbt/stats/reset", method="POST", headers=headers)  # type: ignore[arg-type]
            assert r.status == 401, headers
            r = raw_request(server.port, "/acme/tiny/resolve/main/config.json", headers=headers)  # type: ignore[arg-type]
            assert r.status == 401 and CONFIG not in r.body
        assert raw_request(server.port, "/acme/tiny/resolve/main/config.json", headers=good).body == CONFIG
        stats = raw_request(server.port, "/_hfbt/stats", headers=good)
        assert stats.status == 200 and stats.json()["total_bytes"] == len(CONFIG)
        # What a container healthcheck can ask without the token: it tells nothing about the repos.
        health = raw_request(server.port, "/_hfbt/health")
        assert (health.status, health.json()) == (200, {"ok": True})


NON_ASCII_DIGITS = ["²", "٣", "١٢", "𝟙", "⁵", "Ⅻ"]


@pytest.mark.parametrize("value", [*NON_ASCII_DIGITS, "+3", " 3", "3_0", "0x10", "-1", "0", "9" * 5000])
def test_a_limit_that_is_not_ascii_digits_is_a_400(site: Site, value: str) -> None:
    r = site.get(f"/api/models/acme/tiny/tree/main?limit={quote(value)}")
    assert r.status == 400, r.body
    assert "limit" in r.error()


@pytest.mark.parametrize("offset", [*NON_ASCII_DIGITS, "+1", " 1", "1_0", "-1", "1e3", ""])
def test_a_cursor_that_is_not_an_ascii_offset_is_a_400(site: Site, offset: str) -> None:
    cursor = base64.urlsafe_b64encode(offset.encode()).decode() or "%3D%3D"
    r = site.get(f"/api/models/acme/tiny/tree/main?cursor={cursor}")
    assert r.status == 400, r.body
    assert "cursor" in r.error()


def test_a_cursor_past_the_end_is_an_empty_page(site: Site) -> None:
    cursor = base64.urlsafe_b64encode(b"9" * 5000).decode()
    r = site.get(f"/api/models/acme/tiny/tree/main?cursor={cursor}")
    assert (r.status, r.json()) == (200, [])


@pytest.mark.parametrize(
    "value, status",
    [
        *[(f"bytes={d}-", 200) for d in NON_ASCII_DIGITS],
        *[(f"bytes=0-{d}", 200) for d in NON_ASCII_DIGITS],
        *[(f"bytes=-{d}", 200) for d in NON_ASCII_DIGITS],
        ("bytes=+1-2", 200),
        ("bytes=1_0-", 200),
        ("bytes=0-" + "9" * 5000, 200),  # an end past the file: the whole file
        ("bytes=" + "9" * 5000 + "-", 416),
        ("bytes=5-2", 416),
        ("bytes=-0", 416),
        ("bytes=2-4", 206),
    ],
)
def test_a_malformed_range_is_ignored_and_an_unsatisfiable_one_is_a_416(
    site: Site, value: str, status: int
) -> None:
    r = site.get("/acme/tiny/resolve/main/config.json", headers={"Range": value.encode("utf-8")})
    assert r.status == status, (value, r.body)
    if status == 200:
        assert r.body == CONFIG
    elif status == 206:
        assert r.body == CONFIG[2:5]
    else:
        assert r.headers["content-range"] == f"bytes */{len(CONFIG)}" and r.error()


BAD_TARGETS = [
    "/api/models/a/..",
    "/api/models/../x",
    "/api/models/a/%2E%2E",
    "/api/models/%2E%2E/x",
    "/api/models/a//b",
    "/api/models/acme/tiny%0A",
    "/api/models/" + "a" * 97 + "/b",
    "/api/models/acme/tiny/revision/.",
    "/api/models/acme/tiny/revision/..",
    "/api/models/acme/tiny/revision/%2E",
    "/api/models/acme/tiny/revision/a..b",
    "/api/models/acme/tiny/revision/a%2F%2Fb",
    "/api/models/acme/tiny/revision/%00",
    "/api/models/acme/tiny/revision/%7F",
    "/api/models/acme/tiny/revision/x%0Ay",
    "/api/models/acme/tiny/revision/" + "r" * 300,
    "/api/models/acme/tiny/tree/%2E%2E",
    "/api/models/acme/tiny/tree/main/..",
    "/api/models/acme/tiny/tree/main/%2E%2E%2F%2E%2E",
    "/acme/tiny/resolve/%2E/config.json",
    "/acme/tiny/resolve/%2E%2E/config.json",
    "/acme/tiny/resolve/.lock/config.json",
    "/acme/tiny/resolve/main/../../outside/secret.txt",
    "/acme/tiny/resolve/main/..%2F..%2F..%2F..%2Foutside%2Fsecret.txt",
    "/acme/..%2F..%2Foutside/resolve/main/secret.txt",
    "/a/../resolve/main/config.json",
    "/../../outside/resolve/main/secret.txt",
    "/datasets/acme/%2E%2E/resolve/main/data.csv",
    "@127.0.0.1/x",
    "http://127.0.0.1/api/models/acme/tiny",
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_repo_ids_revisions_and_paths_are_a_4xx_with_a_reason(site: Site, target: str) -> None:
    r = site.get(target)
    assert 400 <= r.status < 500, (target, r.status, r.body)
    assert r.error(), r.body
    assert SECRET not in r.body and b"root:" not in r.body
