"""Who is calling: roles, their credentials, node identities and tickets.

Three roles, each with its own credential (docs/protocol.md, SECURITY.md):
- operator (`HFBT_OPERATOR_TOKEN`): issues and revokes node identities, reads jobs and listings;
- seed (`HFBT_SEED_TOKEN`): registers revisions and torrents, takes mirror jobs, announces as the seed;
- node (`hfbtn_<name>.<secret>`, from `hfbt tracker node add NAME`): reads manifests and torrents.
A node token is stored only as a hash of its secret; revoking it stops every API call at once and every
announce within the ticket's life at most (at once on this tracker).

Announce and scrape URLs end up in .torrent files and client logs, so they carry a ticket
(hfbt/tickets.py) rather than a credential: signed, bound to one node and one info-hash, short-lived.

With neither token configured the tracker is open (one machine, demos): every caller has every role, the
node name comes from `X-HFBT-Node`, and announces need no ticket. Private repos still need a Hub token
that reads them for manifests and torrents.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from hfbt.tickets import ANY_TORRENT, Ticket, TicketError, TicketSigner, TicketVerifier
from hfbt.wire import NODE_NAME_RULE, NODE_TOKEN_PREFIX, node_token_name

OPERATOR = "operator"
SEED = "seed"
NODE = "node"
OPEN = "open"  # an open tracker's caller: every role
_NODE = re.compile(f"^{NODE_NAME_RULE}$")
DEFAULT_NODE = "anonymous"
# Other replicas' revocations reach this one's cache within this long (issue 13: a shared store).
NODES_REFRESH_S = 10.0


class Denied(Exception):
    """The caller lacks the credential or the role; `status` 401 (who are you) or 403 (not you)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def valid_node_name(node: str) -> bool:
    return bool(_NODE.match(node))


def token_hash(secret: str) -> str:
    # The secret is 256 random bits: a plain hash cannot be brute-forced, and no salt is needed.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_node_token(name: str) -> tuple[str, str]:
    """(the token the node gets, once; the hash the registry keeps)."""
    secret = secrets.token_urlsafe(32)
    return f"{NODE_TOKEN_PREFIX}{name}.{secret}", token_hash(secret)


@dataclass(frozen=True)
class Caller:
    role: str  # OPERATOR, SEED, NODE or OPEN
    name: str  # the node's name; "operator" / "seed" for those roles

    def may(self, *roles: str) -> bool:
        return self.role == OPEN or self.role in roles


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class Auth:
    """The tracker's auth policy. `nodes` answers a node name's live token hash (None: unknown or
    revoked); it is the registry's, cached here for NODES_REFRESH_S."""

    def __init__(
        self,
        operator_token: str | None,
        seed_token: str | None,
        node_hash: Callable[[str], str | None],
        signer: TicketSigner | None,
        ticket_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bool(operator_token) != bool(seed_token):
            raise ValueError(
                "set both HFBT_OPERATOR_TOKEN and HFBT_SEED_TOKEN to close the tracker, or neither"
            )
        self._operator = operator_token or None
        self._seed = seed_token or None
        if self._operator and self._seed and _same(self._operator, self._seed):
            raise ValueError("HFBT_OPERATOR_TOKEN and HFBT_SEED_TOKEN must differ: they are different roles")
        self._node_hash = node_hash
        self._signer = signer if self.enabled else None
        self._verifier = TicketVerifier(signer.public_key) if self._signer else None
        self.ticket_ttl = ticket_ttl
        self._clock = clock
        self._cache: dict[str, tuple[str | None, float]] = {}

    @property
    def enabled(self) -> bool:
        return self._operator is not None

    @property
    def public_key(self) -> str | None:
        return self._signer.public_key if self._signer else None

    def forget(self, name: str) -> None:
        """A node was added or revoked here: do not wait for the cache."""
        self._cache.pop(name, None)

    def _live_hash(self, name: str) -> str | None:
        now = self._clock()
        hit = self._cache.get(name)
        if hit is None or hit[1] <= now:
            if len(self._cache) > 100_000:  # bounded: names come from callers
                self._cache.clear()
            hit = (self._node_hash(name), now + NODES_REFRESH_S)
            self._cache[name] = hit
        return hit[0]

    def node_is_live(self, name: str) -> bool:
        return self._live_hash(name) is not None

    def caller(self, authorization: str | None, x_hfbt_node: str | None = None) -> Caller:
        """Who sent this API request (raises Denied 401 when no credential matches)."""
        if not self.enabled:
            name = x_hfbt_node or DEFAULT_NODE
            if not valid_node_name(name):
                raise Denied(422, "invalid X-HFBT-Node: letters, digits, '.', '_', '-' (max 64)")
            return Caller(OPEN, name)
        token = _bearer(authorization)
        if token is None:
            raise Denied(401, "missing credential (Authorization: Bearer <token>)")
        assert self._operator is not None and self._seed is not None
        if _same(token, self._operator):
            return Caller(OPERATOR, OPERATOR)
        if _same(token, self._seed):
            # Seeds share one credential and are trusted alike; the name only tells their announces apart.
            return Caller(SEED, x_hfbt_node if x_hfbt_node and valid_node_name(x_hfbt_node) else SEED)
        name = node_token_name(token)
        if name is not None and valid_node_name(name):
            live = self._live_hash(name)
            secret = token.rpartition(".")[2]
            if live is not None and _same(token_hash(secret), live):
                return Caller(NODE, name)
        raise Denied(401, "unknown or revoked credential")

    # --- tickets ---

    def mint(self, caller: Caller, info_hash: str) -> tuple[str | None, float | None]:
        """(ticket, expires) for this caller and torrent; (None, None) on an open tracker."""
        if self._signer is None:
            return None, None
        role = SEED if caller.role == SEED else NODE
        text, t = self._signer.mint(
            caller.name, ANY_TORRENT if role == SEED else info_hash, role, self.ticket_ttl
        )
        return text, float(t.expires)

    def check_ticket(self, text: str | None, info_hash: str) -> Ticket | None:
        """The ticket's grant for this torrent (None on an open tracker); raises TicketError."""
        if self._verifier is None:
            return None
        t = self._verifier.verify(text, info_hash)
        if t.role == NODE and not self.node_is_live(t.node):
            raise TicketError("the node's identity was revoked")
        return t
