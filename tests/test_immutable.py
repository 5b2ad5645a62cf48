"""Revisions are immutable: once registered, a commit's files, hashes and private flag never change, and
a file's torrent is set once. Any holder of the cluster token could otherwise re-register a commit with
other bytes, or re-point a file at another torrent, and poison the model for every node."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fastbencode import bencode

from hfbt.config import TrackerConfig
from hfbt.hashing import git_blob_sha1_bytes
from hfbt.manifest import PIECE_LENGTH, Manifest
from tracker.app import create_app
from tracker.registry import Immutable, open_registry

COMMIT = "c" * 40
SMALL = b'{"model_type": "synth"}\n'
BIG = b"\x05" * (PIECE_LENGTH + 7)


def manifest_dict(**over: object) -> dict:
    big = hashlib.sha256(BIG).hexdigest()
    files = [
        {"path": "config.json", "size": len(SMALL), "etag": git_blob_sha1_bytes(SMALL)},
        {"path": "model.safetensors", "size": len(BIG), "etag": big, "sha256": big},
    ]
    body = {"repo_type": "model", "repo_id": "org/m", "commit": COMMIT, "files": files, "private": False}
    body.update(over)
    return body


def torrent_of(data: bytes, name: str, pieces: bytes | None = None) -> bytes:
    real = b"".join(
        hashlib.sha1(data[i : i + PIECE_LENGTH]).digest() for i in range(0, len(data), PIECE_LENGTH)
    )
    info = {
        b"length": len(data),
        b"name": name.encode(),
        b"piece length": PIECE_LENGTH,
        b"pieces": real if pieces is None else pieces,
        b"private": 1,
    }
    return bencode({b"info": info})


def changed_manifests() -> list[tuple[str, dict]]:
    base = manifest_dict()
    other_size = [dict(base["files"][0]), {**base["files"][1], "size": len(BIG) + 1}]
    other_sha = hashlib.sha256(b"other bytes").hexdigest()
    other_hash = [dict(base["files"][0]), {**base["files"][1], "etag": other_sha, "sha256": other_sha}]
    extra = [*base["files"], {"path": "extra.bin", "size": 3, "etag": git_blob_sha1_bytes(b"abc")}]
    return [
        ("private flag", manifest_dict(private=True)),
        ("size", manifest_dict(files=other_size)),
        ("sha256", manifest_dict(files=other_hash)),
        ("a file added", manifest_dict(files=extra)),
        ("a file removed", manifest_dict(files=base["files"][:1])),
    ]


@pytest.mark.parametrize(("change", "body"), changed_manifests())
def test_a_registered_commit_cannot_change(registry_db: str, change: str, body: dict) -> None:
    reg = open_registry(registry_db)
    before = reg.register_revision(Manifest.from_dict(manifest_dict()), ref="main")
    with pytest.raises(Immutable) as refused:
        reg.register_revision(Manifest.from_dict(body), ref="main")
    assert refused.value.what == "revision"
    assert reg.get_manifest("model", "org/m", COMMIT) == before, change
    reg.close()


def test_the_same_manifest_again_is_a_no_op_and_keeps_the_torrents(registry_db: str) -> None:
    reg = open_registry(registry_db)
    reg.register_revision(Manifest.from_dict(manifest_dict()), ref="main")
    big = manifest_dict()["files"][1]
    reg.add_torrent(
        "model", "org/m", COMMIT, "model.safetensors", "a" * 40, b"d4:infoe", len(BIG), big["etag"]
    )
    again = reg.register_revision(Manifest.from_dict(manifest_dict()), ref="v1")
    assert {f.path: f.info_hash for f in again.files}["model.safetensors"] == "a" * 40
    assert set(again.refs) == {"main", "v1"}
    # The same torrent again is fine; another one for the same file is not, and changes nothing.
    reg.add_torrent(
        "model", "org/m", COMMIT, "model.safetensors", "a" * 40, b"d4:infoe", len(BIG), big["etag"]
    )
    with pytest.raises(Immutable) as refused:
        reg.add_torrent(
            "model", "org/m", COMMIT, "model.safetensors", "b" * 40, b"d4:infoe", len(BIG), big["etag"]
        )
    assert refused.value.what == "torrent"
    stored = reg.get_manifest("model", "org/m", COMMIT)
    assert stored is not None and {f.path: f.info_hash for f in stored.files}["model.safetensors"] == "a" * 40
    # A manifest naming another torrent for a file that has one is a change too.
    claimed = manifest_dict()
    claimed["files"][1] = {**claimed["files"][1], "info_hash": "b" * 40}
    with pytest.raises(Immutable):
        reg.register_revision(Manifest.from_dict(claimed))
    reg.close()


def _refused_count(client: TestClient, what: str) -> float:
    line = f'hfbt_tracker_refused_registrations_total{{what="{what}"}}'
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


def test_the_api_refuses_a_changed_commit_or_torrent_with_409_a_log_line_and_a_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(TrackerConfig(db=tmp_path / "t.db"))) as client:
        r = client.post(
            "/api/v1/revisions", json={"job_id": None, "ref": "main", "manifest": manifest_dict()}
        )
        assert r.status_code == 200
        big = manifest_dict()["files"][1]
        good = torrent_of(BIG, big["etag"])
        post = {"repo_type": "model", "repo_id": "org/m", "commit": COMMIT, "path": "model.safetensors"}
        r = client.post("/api/v1/torrents", json={**post, "torrent": base64.b64encode(good).decode()})
        assert r.status_code == 200
        info_hash = r.json()["info_hash"]
        served = client.get("/api/v1/manifest", params={"repo_id": "org/m", "revision": COMMIT}).json()

        caplog.set_level(logging.WARNING, logger="tracker.app")
        # A torrent of other bytes with the same name and length: it passes every structural check.
        forged = torrent_of(BIG, big["etag"], pieces=b"\x00" * 40)
        r = client.post("/api/v1/torrents", json={**post, "torrent": base64.b64encode(forged).decode()})
        assert r.status_code == 409
        assert r.json()["error"] == "Conflict" and info_hash in r.json()["detail"]
        body = {"job_id": None, "ref": "main", "manifest": manifest_dict(private=True)}
        r = client.post("/api/v1/revisions", json=body)
        assert r.status_code == 409 and r.json()["error"] == "Conflict"

        again = client.get("/api/v1/manifest", params={"repo_id": "org/m", "revision": COMMIT}).json()
        assert again == served
        assert {f["path"]: f["info_hash"] for f in again["manifest"]["files"]}[
            "model.safetensors"
        ] == info_hash
        assert _refused_count(client, "torrent") == 1.0
        assert _refused_count(client, "revision") == 1.0
        refusals = [r.getMessage() for r in caplog.records if "event=registration_refused" in r.getMessage()]
        assert len(refusals) == 2 and "what=torrent" in refusals[0] and "what=revision" in refusals[1]
