"""Tickets: the tracker's short-lived, signed grant that one node may use one torrent.

The tracker checks a caller's credential and, for a private repo, the caller's Hub access once, when it
hands out the torrent; what the node carries from then on is a ticket naming the node, the info-hash
and an expiry, signed with the tracker's Ed25519 key. The tracker checks it on every announce and
scrape, and a seed checks it on every piece it serves, offline, with the tracker's public key: a seed
can verify tickets but never mint one. A ticket is useless for any other torrent, expires within
minutes (the node renews it while it keeps the torrent), and lets nothing be derived about the key.

Wire form: `<payload>.<signature>`, both base64url without padding, so it fits in a URL path segment;
the payload is `v1|node|info_hash|role|expires`. Seeds get tickets for `*`: they serve every torrent.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hfbt.errors import HfbtError

VERSION = "v1"
ANY_TORRENT = "*"  # a seed's tickets: it holds every torrent it registered
MAX_TICKET_CHARS = 512  # longer is not ours: refuse before decoding anything
TICKET_HEADER = "X-HFBT-Ticket"  # how a node shows its ticket to a seed's piece server


class TicketError(ValueError):
    """A ticket that does not grant what is asked; the message says why (never echoes the ticket)."""


@dataclass(frozen=True)
class Ticket:
    node: str
    info_hash: str  # 40 lowercase hex, or ANY_TORRENT
    role: str  # "node" or "seed" (hfbt.wire's roles a caller cannot choose for itself)
    expires: int  # unix seconds

    def covers(self, info_hash: str) -> bool:
        return self.info_hash == ANY_TORRENT or self.info_hash == info_hash.lower()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(t: Ticket) -> bytes:
    return "|".join((VERSION, t.node, t.info_hash, t.role, str(t.expires))).encode("ascii")


class TicketSigner:
    """Mints tickets (the tracker only)."""

    def __init__(self, key: Ed25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    @property
    def public_key(self) -> str:
        """The raw public key, base64url: what seeds verify tickets with."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _b64(raw)

    def mint(self, node: str, info_hash: str, role: str, ttl: float) -> tuple[str, Ticket]:
        ticket = Ticket(node, info_hash.lower(), role, int(self._clock() + ttl))
        payload = _payload(ticket)
        return f"{_b64(payload)}.{_b64(self._key.sign(payload))}", ticket


class TicketVerifier:
    """Checks tickets (the tracker and the seeds' piece servers)."""

    def __init__(self, public_key: str | Ed25519PublicKey, clock: Callable[[], float] = time.time) -> None:
        if isinstance(public_key, str):
            try:
                public_key = Ed25519PublicKey.from_public_bytes(_unb64(public_key))
            except (ValueError, binascii.Error):
                raise HfbtError("BadTicketKey", "the tracker's ticket key is not an Ed25519 key") from None
        self._key = public_key
        self._clock = clock

    def verify(self, text: str | None, info_hash: str | None = None) -> Ticket:
        """The ticket, if it is genuine, unexpired and (given `info_hash`) covers that torrent."""
        if not text:
            raise TicketError("no ticket")
        if len(text) > MAX_TICKET_CHARS or text.count(".") != 1:
            raise TicketError("malformed ticket")
        payload_b64, _, sig_b64 = text.partition(".")
        try:
            payload, sig = _unb64(payload_b64), _unb64(sig_b64)
        except (ValueError, binascii.Error):
            raise TicketError("malformed ticket") from None
        try:
            self._key.verify(sig, payload)
        except InvalidSignature:
            raise TicketError("ticket signature does not verify") from None
        # Signed by us, so well-formed; parse defensively anyway.
        parts = payload.decode("ascii", "replace").split("|")
        if len(parts) != 5 or parts[0] != VERSION or not parts[4].isascii() or not parts[4].isdigit():
            raise TicketError("unknown ticket version")
        ticket = Ticket(parts[1], parts[2], parts[3], int(parts[4]))
        if ticket.expires < self._clock():
            raise TicketError("ticket expired: the node renews it from the tracker")
        if info_hash is not None and not ticket.covers(info_hash):
            raise TicketError("ticket is for another torrent")
        return ticket


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The tracker's signing key from `path`, created (mode 0600) on first start.

    Like ssh, a key file others can read is refused: whoever reads it can mint tickets for any torrent.
    Its group may read it (not write it): Kubernetes hands a non-root pod a shared Secret, the one key
    of all tracker replicas, as a 0440 file through fsGroup.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
            raise HfbtError(
                "InsecureKey", f"{path} is readable by other users: chmod 600 it (it signs tickets)"
            ) from None
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise HfbtError("BadTicketKey", f"{path} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise HfbtError("BadTicketKey", f"{path} is not an Ed25519 key") from None
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key
