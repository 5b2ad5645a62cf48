"""HTTP client for the tracker's registry API (docs/protocol.md), used by seeds and nodes.

Every call carries the caller's credential (`Authorization: Bearer`): a seed's seed token, a node's
node token; none against an open tracker, where `X-HFBT-Node` names the node. What a caller announces
with is a ticket grant (`TicketGrant`): the announce URL, carrying a short-lived ticket on a closed
tracker, and when that ticket expires; holders renew it at about half its remaining life.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from hfbt.errors import HfbtError
from hfbt.manifest import Manifest, ManifestError

# Renewal timing (TicketGrant.renew_in, retry_in): never closer together than RENEW_MIN_S, so a ticket
# that already looks expired (a skewed clock, a tracker with a tiny --ticket-ttl) cannot spin a loop;
# a failed renewal is tried again after 1, 2, 4 ... s, at most RETRY_MAX_S apart.
RENEW_MIN_S = 1.0
RETRY_MAX_S = 60.0
# The tracker's Date header has whole seconds: a smaller difference between its clock and ours is noise.
SKEW_TOLERANCE_S = 2.0
# Grant calls never long-poll: one stuck call must not hold every other torrent's renewal for 90 s.
GRANT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_ANNOUNCE_SEGMENT = "/announce/"


@dataclass
class ManifestReply:
    status: str  # complete | partial | pending
    manifest: Manifest | None
    job: dict | None


@dataclass(frozen=True)
class TicketGrant:
    """What a seed or a node announces with: the announce URL (without any role parameter) and, on a
    closed tracker, the ticket in it and when it expires (tracker's clock, unix seconds). ticket and
    expires None: an open tracker, nothing to renew."""

    # Not in repr: a grant may end up in a log line or a test's failure report, the ticket never.
    ticket: str | None = field(repr=False)
    announce: str = field(repr=False)
    expires: float | None = None
    skew: float = 0.0  # the tracker's clock minus ours when it answered (0 within SKEW_TOLERANCE_S)

    def renew_in(self, now: float | None = None) -> float | None:
        """Seconds from `now` (our clock) until this grant should be renewed: half its remaining life
        on the tracker's clock; None when it never expires."""
        if self.expires is None:
            return None
        now = time.time() if now is None else now
        return max(RENEW_MIN_S, (self.expires - self.skew - now) / 2)


def retry_in(failures: int) -> float:
    """Seconds before trying a failed renewal again, after `failures` failures in a row."""
    return min(RETRY_MAX_S, 2.0 ** max(0, failures - 1))


def peek_expires(ticket: str | None) -> float | None:
    """A ticket's expiry, read from its payload without checking the signature (the holder's own
    bookkeeping only: the tracker and the seeds verify it). None: no ticket, or not one we can read."""
    if not ticket:
        return None
    payload_b64 = ticket.partition(".")[0]
    try:
        payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    except (ValueError, binascii.Error):
        return None
    parts = payload.decode("ascii", "replace").split("|")
    # v1|node|info_hash|role|expires (hfbt/tickets.py)
    if len(parts) != 5 or not parts[4].isascii() or not parts[4].isdigit():
        return None
    return float(parts[4])


def grant_of_announce(announce: str | None, skew: float = 0.0) -> TicketGrant | None:
    """The grant a .torrent's announce URL carries: `<base>/announce/<ticket>[?hfbt=...]`, the role
    dropped; None for a torrent without an announce URL."""
    if not announce:
        return None
    parts = urlsplit(announce)
    plain = urlunsplit(parts._replace(query="", fragment=""))
    _, sep, ticket = parts.path.rpartition(_ANNOUNCE_SEGMENT)
    if not sep or not ticket or "/" in ticket:
        return TicketGrant(None, plain, None, skew)
    return TicketGrant(ticket, plain, peek_expires(ticket), skew)


class TrackerRefused(HfbtError):
    """The tracker refused the caller: 401 (no valid credential, a revoked node) or 403 (the credential
    is good but not for this, e.g. a Hub token that no longer reads the repo). Trying again is pointless."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


class TrackerClient:
    def __init__(
        self, url: str, credential: str | None = None, node_name: str = "anonymous", zone: str = ""
    ) -> None:
        self.zone = zone  # told with piece-server lookups and seed registrations (tracker/pieceservers.py)
        # X-HFBT-Node names the node to an open tracker; a closed one reads the name from the credential.
        headers = {"X-HFBT-Node": node_name, "User-Agent": "hfbt"}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        self.url = url.rstrip("/")
        self.skew = 0.0  # the tracker's clock minus ours, from its last answer (see TicketGrant.skew)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(90.0, connect=5.0)
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise HfbtError("TrackerUnreachable", f"cannot reach the tracker at {self.url}: {e}") from None
        self._note_clock(r)
        if r.status_code >= 400:
            code, detail = "TrackerError", r.text[:300]
            try:
                body = r.json()
                code, detail = body.get("error", code), body.get("detail", detail)
            except (ValueError, AttributeError):
                pass
            message = detail or f"tracker answered HTTP {r.status_code}"
            if r.status_code in (401, 403):
                raise TrackerRefused(code, message, r.status_code)
            raise HfbtError(code, message)
        return r

    def _note_clock(self, r: httpx.Response) -> None:
        try:
            skew = parsedate_to_datetime(r.headers["date"]).timestamp() - time.time()
        except (KeyError, TypeError, ValueError, IndexError):
            return
        self.skew = skew if abs(skew) > SKEW_TOLERANCE_S else 0.0

    def _grant(self, body: dict) -> TicketGrant:
        try:
            ticket, announce, expires = body.get("ticket"), body["announce"], body.get("expires")
            return TicketGrant(ticket, announce, None if expires is None else float(expires), self.skew)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise HfbtError("TrackerError", "the tracker sent a ticket grant hfbt cannot read") from None

    # --- nodes ---

    def manifest(
        self, repo_type: str, repo_id: str, revision: str, wait: float = 20.0, hf_token: str | None = None
    ) -> ManifestReply:
        r = self._call(
            "GET",
            "/api/v1/manifest",
            params={"repo_type": repo_type, "repo_id": repo_id, "revision": revision, "wait": wait},
            headers=_hub_auth(hf_token),
        )
        body = r.json()
        if r.status_code == 202:
            return ManifestReply("pending", None, body.get("job"))
        try:
            return ManifestReply(body["status"], Manifest.from_dict(body["manifest"]), None)
        except (KeyError, ManifestError) as e:
            raise HfbtError("BadManifest", f"the tracker sent a manifest hfbt refuses: {e}") from None

    def torrent(self, info_hash: str, hf_token: str | None = None, pieces: bool = False) -> bytes:
        """pieces: ask for the seeds' piece servers too (the announce URL then says so). On a closed
        tracker the announce URL carries this node's ticket for the torrent (grant_of_announce)."""
        params = ({"pieces": "1"} | ({"zone": self.zone} if self.zone else {})) if pieces else None
        path = f"/api/v1/torrents/{info_hash}.torrent"
        return self._call("GET", path, headers=_hub_auth(hf_token), params=params).content

    def ticket(self, info_hash: str, hf_token: str | None = None) -> TicketGrant:
        """A fresh ticket for a torrent this node holds; the tracker checks the Hub token again for a
        private repo (TrackerRefused 403 once it no longer reads the repo, 401 for a revoked node)."""
        path = f"/api/v1/tickets/{info_hash}"
        r = self._call("GET", path, headers=_hub_auth(hf_token), timeout=GRANT_TIMEOUT)
        return self._grant(r.json())

    # --- seeds ---

    def announce_url(self) -> TicketGrant:
        """The seed's announce grant: one ticket for every torrent it seeds."""
        return self._grant(self._call("GET", "/api/v1/announce-url", timeout=GRANT_TIMEOUT).json())

    def ticket_key(self) -> str | None:
        """The tracker's ticket-signing public key (base64url, raw Ed25519); None: an open tracker."""
        body = self._call("GET", "/api/v1/ticket-key", timeout=GRANT_TIMEOUT).json()
        key = body.get("public_key") if isinstance(body, dict) else None
        if key is not None and not isinstance(key, str):
            raise HfbtError("TrackerError", "the tracker sent a ticket key hfbt cannot read")
        return key

    def register_seed(
        self, seed_id: str, origin: str, piece_port: int | None = None, piece_url: str | None = None
    ) -> None:
        body = {"seed_id": seed_id, "origin": origin, "piece_port": piece_port, "piece_url": piece_url}
        if self.zone:
            body["zone"] = self.zone
        self._call("POST", "/api/v1/seeds", json=body)

    def next_job(self, seed_id: str, wait: float = 25.0) -> dict | None:
        r = self._call("POST", f"/api/v1/seeds/{seed_id}/next-job", params={"wait": wait})
        return None if r.status_code == 204 else r.json()

    def register_revision(self, manifest: Manifest, ref: str | None, job_id: str | None) -> Manifest:
        body = {"job_id": job_id, "ref": ref, "manifest": manifest.to_dict()}
        return Manifest.from_dict(self._call("POST", "/api/v1/revisions", json=body).json()["manifest"])

    def register_torrent(self, manifest: Manifest, path: str, torrent: bytes) -> str:
        body = {
            "repo_type": manifest.repo_type,
            "repo_id": manifest.repo_id,
            "commit": manifest.commit,
            "path": path,
            "torrent": base64.b64encode(torrent).decode(),
        }
        return self._call("POST", "/api/v1/torrents", json=body).json()["info_hash"]

    def job_result(
        self, job_id: str, ok: bool, commit: str | None = None, error: str = "", detail: str = ""
    ) -> None:
        body: dict = {"ok": ok}
        if ok:
            body["commit"] = commit
        else:
            body.update(error=error, detail=detail)
        self._call("POST", f"/api/v1/jobs/{job_id}/result", json=body)


def _hub_auth(hf_token: str | None) -> dict[str, str]:
    # The node's own Hub token, for private repos: the tracker checks it with the origin, never stores it.
    return {"X-HF-Token": hf_token} if hf_token else {}
