import hashlib

import libtorrent as lt
import pytest

from hfbt.manifest import PIECE_LENGTH, FileEntry
from hfbt.torrents import TorrentError, make_blob_torrent
from tracker.torrentfile import check_blob_torrent


@pytest.mark.parametrize("size", [1, PIECE_LENGTH - 1, PIECE_LENGTH, 2 * PIECE_LENGTH + 12345])
def test_blob_torrent_matches_libtorrent(tmp_path, size):
    data = hashlib.sha256(b"x").digest() * (size // 32 + 1)
    data = data[:size]
    p = tmp_path / "blob"
    p.write_bytes(data)
    t = make_blob_torrent(p, "e" * 64)
    ti = lt.torrent_info(lt.bdecode(t.data))
    assert str(ti.info_hashes().v1) == t.info_hash
    assert ti.priv() and ti.piece_length() == PIECE_LENGTH and ti.total_size() == size
    assert ti.num_pieces() == (size + PIECE_LENGTH - 1) // PIECE_LENGTH
    assert (
        ti.hash_for_piece(ti.num_pieces() - 1)
        == hashlib.sha1(data[(ti.num_pieces() - 1) * PIECE_LENGTH :]).digest()
    )
    # The tracker accepts exactly what a seed makes, with the same info-hash.
    assert (
        check_blob_torrent(t.data, FileEntry("x", size, "e" * 64, sha256="e" * 64)).info_hash == t.info_hash
    )
    # Deterministic: the same content gives the same info-hash on any seed.
    assert make_blob_torrent(p, "e" * 64).info_hash == t.info_hash


def test_empty_file_gets_no_torrent(tmp_path):
    p = tmp_path / "empty"
    p.touch()
    with pytest.raises(TorrentError):
        make_blob_torrent(p, "x")


def test_parse_refuses_garbage():
    with pytest.raises(TorrentError):
        check_blob_torrent(b"not bencode", FileEntry("x", 1, "e" * 64, sha256="e" * 64))
