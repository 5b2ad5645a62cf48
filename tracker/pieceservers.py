"""The seeds' piece servers (hfbt/seed/pieces.py): soft state from POST /api/v1/seeds, kept in memory.

Like the peer table (peers.py), nothing here is persisted: a seed registers again whenever it reconnects
to the tracker, which a tracker restart forces, so the table refills by itself. A blob's .torrent lists
the piece servers of the seeds alive at that moment (torrentfile.torrent_file).
"""

from __future__ import annotations

import threading
from collections.abc import Container


def url_from_client(host: str, port: int) -> str:
    """The piece server of a seed that gave only a port: that port on the address it called from."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def seed_piece_url(piece_url: str | None, piece_port: int | None, client_host: str | None) -> str | None:
    """A seed's piece server: the full URL it gave, else its port on `client_host`, else none."""
    if piece_url:
        return piece_url
    if piece_port and client_host is not None:
        return url_from_client(client_host, piece_port)
    return None


class PieceServers:
    """seed_id -> (piece-server URL, the seed's zone); safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, tuple[str, str]] = {}

    def set(self, seed_id: str, url: str | None, zone: str = "") -> None:
        """Record the seed's piece server, or forget it (`url` None or empty: the seed serves none)."""
        with self._lock:
            if url:
                self._urls[seed_id] = (url.rstrip("/"), zone)
            else:
                self._urls.pop(seed_id, None)

    def urls(self, alive_seed_ids: Container[str], zone: str = "") -> list[str]:
        """The piece servers of the given seeds, sorted so every node of a zone gets the same .torrent.

        A node that names its zone gets only the piece servers of seeds in that zone (or of seeds that
        name none): a piece handed over HTTP to a node across zones would cross back for the seed's own
        zone, so those nodes take the seed's pieces from their zone's gateways instead.
        """
        with self._lock:
            return sorted(
                u
                for s, (u, z) in self._urls.items()
                if s in alive_seed_ids and (not zone or not z or z == zone)
            )
