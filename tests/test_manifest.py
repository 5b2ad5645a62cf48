import pytest

from hfbt.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    check_path,
    check_repo_id,
    check_revision,
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
