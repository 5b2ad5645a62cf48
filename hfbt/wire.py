"""What seed, tracker and nodes agree on beyond BEP 3 (docs/protocol.md): one home for each rule.

The tracker writes the piece servers into a blob's .torrent and reads announce roles; the seed serves
pieces and announces as the seed; nodes read the piece servers and take pieces. Each side imports
these names from here, never from another side's module.
"""

from __future__ import annotations

from hfbt.manifest import PIECE_LENGTH

# A blob's .torrent: a top-level key, outside the info dict (so every node gets the same info-hash),
# listing the seeds' piece servers (hfbt/seed/pieces.py).
PIECE_URLS_KEY = b"hfbt-piece-urls"

# Announce parameter: what kind of hfbt peer announces (stock clients omit it).
ROLE_PARAM = "hfbt"
ROLE_SEED = "seed"  # the seed service
ROLE_PIECES = "pieces"  # a node that takes the seed's pieces over HTTP
ROLES = frozenset({"", ROLE_SEED, ROLE_PIECES})

# Announce parameter: where the announcing peer is (a zone, rack or site; Kubernetes' topology zone
# label). The tracker hands out same-zone peers first and lets only a few per zone cross zones.
ZONE_PARAM = "zone"
ZONE_RULE = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62})"  # a Kubernetes label value, not empty

# The piece server's response header: which piece of the blob the body is.
PIECE_HEADER = "X-Hfbt-Piece"

# Blobs of fewer pieces go plain BitTorrent: the seed's per-piece hand-out (piece server, super
# seeding) buys nothing for them, and libtorrent's super seeding stalled on them.
HANDOUT_MIN_PIECES = 8


def with_role(announce_url: str, role: str) -> str:
    return f"{announce_url}?{ROLE_PARAM}={role}"


def with_zone(announce_url: str, zone: str) -> str:
    """The announce URL naming this peer's zone ("" : unchanged); libtorrent appends its own
    parameters after ours."""
    if not zone:
        return announce_url
    return f"{announce_url}{'&' if '?' in announce_url else '?'}{ZONE_PARAM}={zone}"


def seed_hands_out(size: int) -> bool:
    """Whether the seed hands out this blob's pieces one by one: it serves exactly the blobs the
    nodes ask its piece server for, and super-seeds exactly these."""
    return size >= HANDOUT_MIN_PIECES * PIECE_LENGTH


# A node's credential, issued by `hfbt tracker node add NAME`: `hfbtn_<name>.<secret>`. The prefix
# lets secret scanners find one in a leaked log; the name lets a node know who it is without asking.
NODE_TOKEN_PREFIX = "hfbtn_"
NODE_NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def node_token_name(token: str | None) -> str | None:
    """The node name a node token was issued to (None: not a node token)."""
    if not token or not token.startswith(NODE_TOKEN_PREFIX):
        return None
    name, sep, secret = token[len(NODE_TOKEN_PREFIX) :].rpartition(".")
    return name if sep and name and secret else None
