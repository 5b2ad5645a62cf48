import os

import pytest

from hfbt import cache
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import FileEntry, ManifestError

COMMIT = "c" * 40


def test_layout_names(tmp_path):
    assert cache.repo_folder_name("model", "org/name") == "models--org--name"
    assert cache.repo_folder_name("dataset", "org/name") == "datasets--org--name"
    assert cache.repo_dir(tmp_path, "model", "gpt2") == tmp_path / "models--gpt2"


@pytest.mark.parametrize(
    "path,target",
    [("a.json", "../../blobs/E"), ("x/a.json", "../../../blobs/E"), ("x/y/z", "../../../../blobs/E")],
)
def test_relative_link_targets(path, target):
    assert cache.blob_link_target(path, "E") == target


def test_link_target_refuses_escaping_paths():
    with pytest.raises(ManifestError):
        cache.blob_link_target("../x", "E")


def test_publish_empty_file_link_and_ref(tmp_path):
    repo = tmp_path / "models--o--n"
    empty = FileEntry("sub/empty.txt", 0, git_blob_sha1_bytes(b""))
    cache.write_empty_blob(repo, empty)
    link = cache.link_snapshot(repo, COMMIT, empty)
    assert link.read_bytes() == b""
    assert os.readlink(link) == "../../../blobs/" + empty.etag
    assert cache.is_linked(repo, COMMIT, empty)
    cache.write_ref(repo, "refs/pr/1", COMMIT)
    assert (repo / "refs" / "refs" / "pr" / "1").read_bytes() == COMMIT.encode()  # no newline
    assert cache.read_ref(repo, "refs/pr/1") == COMMIT


def test_empty_blob_with_wrong_etag_is_refused(tmp_path):
    repo = tmp_path / "models--o--n"
    with pytest.raises(ValueError, match="not the hash of an empty file"):
        cache.write_empty_blob(repo, FileEntry("e", 0, "0" * 40))
    assert not any((repo / "blobs").iterdir())


def test_verify_blob(tmp_path):
    data = b"hello"
    p = tmp_path / "b"
    p.write_bytes(data)
    assert cache.verify_blob(p, FileEntry("x", 5, git_blob_sha1_bytes(data)))
    assert not cache.verify_blob(p, FileEntry("x", 5, git_blob_sha1_bytes(b"hellp")))
    assert not cache.verify_blob(p, FileEntry("x", 6, git_blob_sha1_bytes(data)))
