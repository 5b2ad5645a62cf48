"""BEP 3 announce, BEP 23/7 compact peers and BEP 48 scrape: parsing and responses (pure, no I/O).

info_hash and peer_id are raw 20-byte strings percent-encoded in the query, so the query is parsed
from the raw bytes here: a text-decoding query parser (Starlette's) would mangle them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fastbencode import bencode

from hfbt.wire import ROLE_PARAM, ROLE_PIECES, ROLE_SEED, ROLES, ZONE_PARAM, ZONE_RULE
from tracker.peerstore import Peer, SwarmCounts

# BEP 21 adds "paused" (libtorrent sends it for upload-only torrents); it is a plain re-announce for us.
EVENTS = frozenset({"", "started", "completed", "stopped", "paused"})
DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200
_MAX_QUERY = 8192
_MAX_INT = 2**63 - 1
# ASCII digits only, at most 19 of them: int() would also take "+1", " 1", "1_0" and non-ASCII digits.
_UINT = re.compile(rb"[0-9]{1,19}")
_ZONE = re.compile(ZONE_RULE)


class AnnounceError(ValueError):
    """A request the tracker refuses; the message becomes the bencoded "failure reason"."""


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    numwant: int | None
    compact: bool
    no_peer_id: bool
    role: str = ""
    zone: str = ""


def parse_query(raw: bytes | str) -> dict[str, list[bytes]]:
    """Split a raw query string into name → raw byte values, in order (non-ASCII names are skipped)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if len(raw) > _MAX_QUERY:
        raise AnnounceError("query string too long")
    out: dict[str, list[bytes]] = {}
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        try:
            key = unquote_to_bytes(name).decode("ascii")
        except UnicodeDecodeError:
            continue  # no parameter we read has such a name; clients may add their own
        out.setdefault(key, []).append(unquote_to_bytes(value))
    return out


def _first(q: Mapping[str, list[bytes]], name: str) -> bytes | None:
    values = q.get(name)
    return values[0] if values else None


def _hash20(q: Mapping[str, list[bytes]], name: str) -> bytes:
    value = _first(q, name)
    if value is None:
        raise AnnounceError(f"missing {name}")
    if len(value) != 20:
        raise AnnounceError(f"invalid {name}: expected 20 bytes, got {len(value)}")
    return value


def _int(q: Mapping[str, list[bytes]], name: str, default: int | None = None) -> int:
    value = _first(q, name)
    if value is None or value == b"":
        if default is None:
            raise AnnounceError(f"missing {name}")
        return default
    if _UINT.fullmatch(value) is None:
        raise AnnounceError(f"invalid {name}: expected a non-negative integer")
    n = int(value)
    if n > _MAX_INT:
        raise AnnounceError(f"invalid {name}: too large")
    return n


def _flag(q: Mapping[str, list[bytes]], name: str, default: bool) -> bool:
    value = _first(q, name)
    if value is None or value == b"":
        return default
    if value not in (b"0", b"1"):
        raise AnnounceError(f"invalid {name}: expected 0 or 1")
    return value == b"1"


def ip_literal(value: str) -> str | None:
    """The normalized address if `value` is a plain IP literal, else None.

    IPv4-mapped IPv6 becomes IPv4. A zone id ("fe80::1%eth0") is refused: it means nothing to other
    hosts, and ipaddress keeps whatever follows the "%" (any Unicode) in the address's text.
    """
    if not value.isascii() or "%" in value:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _connection_ip(client_ip: str) -> str:
    """The connection's address, normalized; a link-local one loses its zone (an interface of this host)."""
    host, _, _zone = client_ip.partition("%")
    normalized = ip_literal(host)
    if normalized is None:
        raise AnnounceError("cannot determine the peer's IP address")
    return normalized


def _claimed_ip(raw: bytes) -> str:
    claimed = ip_literal(raw.decode("latin-1"))  # latin-1 never fails; ip_literal refuses non-ASCII
    if claimed is None:
        raise AnnounceError("invalid ip: expected a plain IPv4 or IPv6 address (no hostname, no zone id)")
    addr = ipaddress.ip_address(claimed)
    if addr.is_unspecified or addr.is_multicast:
        raise AnnounceError("invalid ip: not a unicast address")
    return claimed


def parse_announce(raw_query: bytes | str, client_ip: str, trust_ip: bool = False) -> Announce:
    """Validate a BEP 3 announce.

    The peer's address is the connection's. With `trust_ip` (nodes behind NAT, a deployment's choice),
    an `ip` parameter replaces it, but only as a plain IP literal: a hostname would make the tracker
    hand out whatever a client claims. Without it, `ip` is ignored, so no client can point the swarm
    at someone else's address.
    """
    q = parse_query(raw_query)
    info_hash = _hash20(q, "info_hash")
    peer_id = _hash20(q, "peer_id")
    port = _int(q, "port")
    if not 1 <= port <= 65535:
        raise AnnounceError("invalid port: expected 1..65535")
    uploaded = _int(q, "uploaded", 0)
    downloaded = _int(q, "downloaded", 0)
    left = _int(q, "left")
    raw_event = _first(q, "event") or b""
    event = raw_event.decode("ascii", "replace")
    if event not in EVENTS:
        raise AnnounceError("invalid event: expected started, completed, stopped or empty")
    numwant = _int(q, "numwant", -1)
    raw_ip = _first(q, "ip")
    ip = _claimed_ip(raw_ip) if trust_ip and raw_ip else _connection_ip(client_ip)
    role = (_first(q, ROLE_PARAM) or b"").decode("ascii", "replace")
    if role not in ROLES:
        raise AnnounceError(f"invalid {ROLE_PARAM}: expected {ROLE_SEED} or {ROLE_PIECES}")
    zone = (_first(q, ZONE_PARAM) or b"").decode("ascii", "replace")
    if zone and not _ZONE.fullmatch(zone):
        raise AnnounceError(f"invalid {ZONE_PARAM}: expected a label value ({ZONE_RULE})")
    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=ip,
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=None if numwant < 0 else numwant,
        compact=_flag(q, "compact", True),
        no_peer_id=_flag(q, "no_peer_id", False),
        role=role,
        zone=zone,
    )


def parse_scrape(raw_query: bytes | str) -> list[bytes]:
    """BEP 48: zero or more info_hash parameters, each 20 raw bytes; duplicates collapse."""
    q = parse_query(raw_query)
    hashes = q.get("info_hash", [])
    for h in hashes:
        if len(h) != 20:
            raise AnnounceError(f"invalid info_hash: expected 20 bytes, got {len(h)}")
    if len(hashes) > 1000:
        raise AnnounceError("too many info_hash parameters")
    return list(dict.fromkeys(hashes))


def _endpoint(p: Peer) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """A stored peer's address and port, or None for one no client could use (never raises)."""
    if not isinstance(p.port, int) or not 1 <= p.port <= 65535 or not isinstance(p.ip, str):
        return None
    literal = ip_literal(p.ip)
    return (ipaddress.ip_address(literal), p.port) if literal is not None else None


def compact_peers(peers: Iterable[Peer]) -> tuple[bytes, bytes]:
    """BEP 23 `peers` (6 bytes per IPv4 peer) and BEP 7 `peers6` (18 bytes per IPv6 peer)."""
    v4 = bytearray()
    v6 = bytearray()
    for p in peers:
        endpoint = _endpoint(p)
        if endpoint is None:
            continue
        addr, port = endpoint
        (v4 if addr.version == 4 else v6).extend(addr.packed + port.to_bytes(2, "big"))
    return bytes(v4), bytes(v6)


def announce_response(
    peers: Iterable[Peer],
    counts: SwarmCounts,
    interval: int,
    min_interval: int,
    compact: bool = True,
    no_peer_id: bool = False,
) -> bytes:
    """The bencoded announce answer. Peers whose stored address is unusable are left out, not fatal."""
    resp: dict[bytes, object] = {
        b"interval": interval,
        b"min interval": min_interval,
        b"complete": counts.complete,
        b"incomplete": counts.incomplete,
        b"downloaded": counts.downloaded,
    }
    if compact:
        v4, v6 = compact_peers(peers)
        resp[b"peers"] = v4
        if v6:
            resp[b"peers6"] = v6
    else:
        out = []
        for p in peers:
            endpoint = _endpoint(p)
            if endpoint is None:
                continue
            addr, port = endpoint
            d: dict[bytes, object] = {b"ip": str(addr).encode("ascii"), b"port": port}
            if not no_peer_id:
                d[b"peer id"] = bytes(p.peer_id)
            out.append(d)
        resp[b"peers"] = out
    return bencode(resp)


def scrape_response(files: Mapping[bytes, SwarmCounts]) -> bytes:
    return bencode(
        {
            b"files": {
                h: {b"complete": c.complete, b"downloaded": c.downloaded, b"incomplete": c.incomplete}
                for h, c in files.items()
            }
        }
    )


def failure(reason: str) -> bytes:
    return bencode({b"failure reason": reason.encode("utf-8", "replace")})
