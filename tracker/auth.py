"""Cluster token and per-node passkeys.

The API takes the cluster token as a Bearer token. Announce/scrape URLs end up in .torrent files, client
logs and tracker lists, so they carry a passkey instead of the token: `<node>.<hmac(token, node)>`. It is
verified statelessly (no passkey table), names the node it was issued to, and cannot be turned back into
the token. Without a configured token everything is open and announce URLs carry no passkey.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PASSKEY_HEX = 32  # 128 bits of HMAC: plenty against guessing, short enough for URLs
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_NODE = "anonymous"


def valid_node_name(node: str) -> bool:
    return bool(_NODE.match(node))


def passkey_for(token: str, node: str) -> str:
    if not valid_node_name(node):
        raise ValueError(f"invalid node name {node!r}: letters, digits, '.', '_', '-' (max 64)")
    mac = hmac.new(token.encode("utf-8"), node.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{node}.{mac[:PASSKEY_HEX]}"


def verify_passkey(token: str, passkey: str | None) -> str | None:
    """The node name the passkey was issued to, or None if it is not a passkey for this token."""
    if not passkey:
        return None
    node, sep, _ = passkey.rpartition(".")
    if not sep or not valid_node_name(node):
        return None
    if hmac.compare_digest(passkey.encode("utf-8"), passkey_for(token, node).encode("utf-8")):
        return node
    return None


def check_bearer(token: str, authorization: str | None) -> bool:
    """Whether an Authorization header carries exactly the cluster token (constant-time)."""
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))


class Auth:
    """The tracker's auth policy; `token=None` means open."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def api_allowed(self, authorization: str | None) -> bool:
        return self.token is None or check_bearer(self.token, authorization)

    def announce_allowed(self, passkey: str | None) -> bool:
        return self.token is None or verify_passkey(self.token, passkey) is not None

    def announce_path(self, node: str) -> str:
        """`/announce` or `/announce/<passkey>`."""
        if self.token is None:
            return "/announce"
        return f"/announce/{passkey_for(self.token, node)}"
