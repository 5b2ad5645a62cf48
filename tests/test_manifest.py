import pytest

from hfbt.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    check_path,
    check_repo_id,
    check_revision,
    is_commit,
    is_lfs,
    select_files,
)

SHA1 = "a" * 40
SHA256 = "b" * 64
COMMIT = "c" * 40


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/../b", "a//b", "./a", "a/", "", "a\\b", "a\0b", "x/.."])
def test_bad_paths_are_refused_with_a_reason(bad):
    with pytest.raises(ManifestError, match="invalid file path"):
        check_path(bad)


@pytest.mark.parametrize(
    "good", ["config.json", "nested/deeper/notes.md", "a b/c.txt", ".gitattributes", "x..y"]
)
def test_good_paths_pass(good):
    assert check_path(good) == good


@pytest.mark.parametrize("bad", ["", "a/b/c", "../x", "a--b/c", "/x", "x/"])
def test_bad_repo_ids(bad):
    with pytest.raises(ManifestError):
        check_repo_id(bad)


@pytest.mark.parametrize("rev", ["main", "v1.0", "refs/pr/1", COMMIT])
def test_revisions(rev):
    assert check_revision(rev) == rev


@pytest.mark.parametrize("rev", ["", "a..b", "/main", "ma in", "x:y"])
def test_bad_revisions(rev):
    with pytest.raises(ManifestError):
        check_revision(rev)


def test_lfs_rule():
    assert is_lfs("model.safetensors", 10)
    assert is_lfs("big.txt", 10 * 1024 * 1024)
    assert not is_lfs("config.json", 1000)


def test_lfs_etag_must_be_sha256():
    with pytest.raises(ManifestError, match="must be its sha256"):
        FileEntry("m.safetensors", 5, SHA1, sha256=SHA256).validate()
    FileEntry("m.safetensors", 5, SHA256, sha256=SHA256).validate()


def test_manifest_roundtrip_and_conflicts():
    m = Manifest(
        "model", "org/name", COMMIT, (FileEntry("a/b.json", 3, SHA1), FileEntry("c", 0, SHA1)), refs=("main",)
    )
    assert Manifest.from_dict(m.to_dict()) == m.validate()
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest("model", "org/name", COMMIT, (FileEntry("a", 1, SHA1), FileEntry("a", 1, SHA1))).validate()
    with pytest.raises(ManifestError, match="both as file and folder"):
        Manifest("model", "org/name", COMMIT, (FileEntry("a", 1, SHA1), FileEntry("a/b", 1, SHA1))).validate()
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.from_dict({"repo_type": "model"})
    bad = m.to_dict()
    bad["files"][0]["path"] = "../../etc/passwd"
    with pytest.raises(ManifestError, match="invalid file path"):
        Manifest.from_dict(bad)


def test_select_files_like_allow_patterns():
    files = [FileEntry(p, 1, SHA1) for p in ("a.json", "w/x.safetensors", "w/y.bin", "README.md")]
    names = lambda fs: [f.path for f in fs]  # noqa: E731
    assert names(select_files(files, ["*.json"])) == ["a.json"]
    assert names(select_files(files, ["w/"])) == ["w/x.safetensors", "w/y.bin"]
    assert names(select_files(files, [], ["*.bin", "*.md"])) == ["a.json", "w/x.safetensors"]
    assert names(select_files(files, ["w/*"], ["*.bin"])) == ["w/x.safetensors"]


# -- the review's inputs: every one a ManifestError with a reason, none a crash ----------------------

HUB_REPO_IDS = ["gpt2", "org/name", "Org-1/model_v2.5", "_x/y_", "a" * 96, "a" * 96 + "/" + "b" * 96, "a.b/c"]


@pytest.mark.parametrize("good", HUB_REPO_IDS)
def test_repo_ids_the_hub_accepts(good: str) -> None:
    assert check_repo_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "a/..",
        "../b",
        "a/.",
        "./a",
        ".",
        "..",
        "a//b",
        "/b",
        "a/",
        "-a/b",
        "a-/b",
        "a/b.",
        ".a/b",
        "a/b--c",
        "a..b/c",
        "a/b.git",
        "a" * 97,
        "a/b\n",
        "a/b\x00",
        "ü/x",
        "a b/c",
        "a/b/c",
    ],
)
def test_repo_ids_the_hub_refuses(bad: str) -> None:
    with pytest.raises(ManifestError, match="invalid repo id"):
        check_repo_id(bad)


@pytest.mark.parametrize(
    "good", ["main", "v1.0", "refs/pr/1", "refs/pr/123", "feature/x-y_z", "release@2", "v1.0-rc.1", "a" * 255]
)
def test_branch_and_tag_names(good: str) -> None:
    assert check_revision(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        ".",
        "..",
        "a/../b",
        "../main",
        "main/..",
        "a/./b",
        "a/.hidden",
        ".main",
        "main.",
        "main.lock",
        "a.lock/b",
        "/main",
        "main/",
        "a//b",
        "ma\x00in",
        "ma\nin",
        "ma\tin",
        "ma\x7fin",
        "ma\u2028in",
        "ma\u00a0in",
        "\udcff",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "@",
        "a@{u}",
        "a" * 256,
        COMMIT + "\n",
    ],
)
def test_revisions_git_refuses(bad: str) -> None:
    with pytest.raises(ManifestError, match="invalid revision"):
        check_revision(bad)


def test_commits_are_exactly_40_lowercase_hex() -> None:
    assert is_commit(COMMIT) and not is_commit(COMMIT + "\n") and not is_commit(COMMIT.upper())


@pytest.mark.parametrize("bad", ["a/\x7f", "a/\udc80", "x" * 256, "d/" + "é" * 128])
def test_paths_that_cannot_be_written_to_disk(bad: str) -> None:
    with pytest.raises(ManifestError, match="invalid file path"):
        check_path(bad)


def _manifest_dict(**file_over: object) -> dict:
    entry = {"path": "a.json", "size": 3, "etag": SHA1, **file_over}
    return {"repo_type": "model", "repo_id": "org/name", "commit": COMMIT, "files": [entry]}


@pytest.mark.parametrize(
    "size",
    [1e30, float("inf"), float("-inf"), float("nan"), -1, True, False, "5", None, 3.0, 2**63, 2**48 + 1],
)
def test_sizes_must_be_plain_integers_in_range(size: object) -> None:
    with pytest.raises(ManifestError, match="invalid size"):
        Manifest.from_dict(_manifest_dict(size=size))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(repo_id=None), "'repo_id' must be a str"),
        (lambda d: d.update(repo_id="a/.."), "invalid repo id"),
        (lambda d: d.update(commit=["x"]), "'commit' must be a str"),
        (lambda d: d.update(commit=COMMIT + "\n"), "invalid commit"),
        (lambda d: d.update(refs="main"), "refs must be a list"),
        (lambda d: d.update(refs=[1]), "refs must be a list"),
        (lambda d: d.update(refs=["."]), "invalid revision"),
        (lambda d: d.update(complete="no"), "'complete' must be a bool"),
        (lambda d: d.update(private=1), "'private' must be a bool"),
        (lambda d: d.update(files={}), "'files' must be a list"),
        (lambda d: d.update(files=[7]), "file #0: expected an object"),
        (lambda d: d["files"][0].pop("size"), "missing 'size'"),
        (lambda d: d["files"][0].update(path=5), "'path' must be a str"),
        (lambda d: d["files"][0].update(sha256=5), "'sha256' must be a str"),
        (lambda d: d["files"][0].update(info_hash="x" * 40), "invalid info_hash"),
        (lambda d: d.pop("files"), "missing 'files'"),
    ],
)
def test_malformed_manifests_say_why(mutate, reason: str) -> None:  # noqa: ANN001
    d = _manifest_dict()
    mutate(d)
    with pytest.raises(ManifestError, match=reason):
        Manifest.from_dict(d)


@pytest.mark.parametrize("junk", [None, [], "manifest", 5])
def test_a_manifest_must_be_an_object(junk: object) -> None:
    with pytest.raises(ManifestError, match="expected an object"):
        Manifest.from_dict(junk)


def test_error_messages_stay_short_for_huge_values() -> None:
    with pytest.raises(ManifestError) as e:
        check_repo_id("x" * 100_000)
    assert len(str(e.value)) < 300
