"""Tickets (hfbt/tickets.py) and what a holder does with them (hfbt/trackerclient.py).

The signer and verifier in one process: a round trip, every way a ticket can be wrong, junk that must
come back as TicketError and nothing else, and the key file's permissions. Then the client side: a
grant read from an announce URL without the key, renewal timing, and TrackerClient's ticket calls
against a small HTTP server speaking the tracker's contract (docs/protocol.md).
"""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hfbt import trackerclient
from hfbt.cluster import free_port
from hfbt.errors import HfbtError
from hfbt.tickets import (
    ANY_TORRENT,
    MAX_TICKET_CHARS,
    Ticket,
    TicketError,
    TicketSigner,
    TicketVerifier,
    load_or_create_key,
)
from hfbt.trackerclient import (
    TicketGrant,
    TrackerClient,
    TrackerRefused,
    grant_of_announce,
    peek_expires,
    retry_in,
)
from tests.conftest import Clock

IH = "ab" * 20
OTHER = "cd" * 20
NOW = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)  # a fixed instant: the expiries below are exact


@pytest.fixture
def verifier(signer: TicketSigner, clock: Clock) -> TicketVerifier:
    return TicketVerifier(signer.public_key, clock)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- signing and verifying ----------------------------------------------------------------------


def test_a_minted_ticket_verifies_and_names_what_it_grants(
    signer: TicketSigner, verifier: TicketVerifier
) -> None:
    text, ticket = signer.mint("node1", IH.upper(), "node", ttl=600)
    assert ticket == Ticket("node1", IH, "node", int(NOW + 600))
    assert verifier.verify(text, IH) == ticket
    assert verifier.verify(text, IH.upper()) == ticket  # info-hashes compare case-insensitively
    assert verifier.verify(text) == ticket  # no torrent asked about: only genuine and unexpired
    # URL-safe: it goes into an announce path segment as it is.
    assert text.count(".") == 1 and all(c.isalnum() or c in "-_." for c in text)
    assert len(text) <= MAX_TICKET_CHARS


def test_a_ticket_is_for_its_torrent_only(signer: TicketSigner, verifier: TicketVerifier) -> None:
    text, _ = signer.mint("node1", IH, "node", ttl=600)
    with pytest.raises(TicketError, match="another torrent"):
        verifier.verify(text, OTHER)


def test_a_seed_ticket_covers_every_torrent(signer: TicketSigner, verifier: TicketVerifier) -> None:
    text, ticket = signer.mint("seed", ANY_TORRENT, "seed", ttl=600)
    assert ticket.covers(IH) and ticket.covers(OTHER)
    assert verifier.verify(text, IH).role == "seed"
    assert verifier.verify(text, OTHER).info_hash == ANY_TORRENT


def test_a_ticket_expires_on_the_verifiers_clock(
    signer: TicketSigner, verifier: TicketVerifier, clock: Clock
) -> None:
    text, ticket = signer.mint("node1", IH, "node", ttl=60)
    clock.now = ticket.expires  # the last second it is valid
    assert verifier.verify(text, IH) == ticket
    clock.now = ticket.expires + 0.5
    with pytest.raises(TicketError, match="expired") as e:
        verifier.verify(text, IH)
    assert text not in str(e.value)  # a reason, never the ticket itself


def test_a_tampered_payload_or_signature_does_not_verify(
    signer: TicketSigner, verifier: TicketVerifier
) -> None:
    text, _ = signer.mint("node1", IH, "node", ttl=600)
    payload_b64, sig_b64 = text.split(".")
    payload = _unb64(payload_b64).decode()
    forged_payloads = [
        payload.replace("node1", "node2"),  # someone else's ticket
        payload.replace(IH, OTHER),  # another torrent
        payload.replace("|node|", "|seed|"),  # a role it was not given
        payload.rsplit("|", 1)[0] + f"|{int(NOW) + 10**6}",  # a longer life
        payload.replace(IH, ANY_TORRENT),  # every torrent
    ]
    for forged in forged_payloads:
        with pytest.raises(TicketError, match="signature"):
            verifier.verify(f"{_b64(forged.encode())}.{sig_b64}", IH)
    sig = bytearray(_unb64(sig_b64))
    sig[0] ^= 1
    with pytest.raises(TicketError, match="signature"):
        verifier.verify(f"{payload_b64}.{_b64(bytes(sig))}", IH)
    # Signed by another tracker's key: just as forged.
    stranger = TicketSigner(Ed25519PrivateKey.generate(), lambda: NOW)
    alien, _ = stranger.mint("node1", IH, "node", ttl=600)
    with pytest.raises(TicketError, match="signature"):
        verifier.verify(alien, IH)


def test_a_genuine_signature_over_an_unknown_payload_is_refused(clock: Clock) -> None:
    key = Ed25519PrivateKey.generate()
    verifier = TicketVerifier(TicketSigner(key, clock).public_key, clock)
    for payload in (
        b"v2|node1|" + IH.encode() + b"|node|1800000000",
        b"v1|node1|" + IH.encode() + b"|node|soon",
    ):
        with pytest.raises(TicketError, match="version"):
            verifier.verify(f"{_b64(payload)}.{_b64(key.sign(payload))}", IH)


JUNK = [
    None,
    "",
    ".",
    "..",
    "a.b.c",
    "no-dot-at-all",
    "!!!.???",
    "é.ü",  # non-ASCII
    "\u202e\u0000.\ufeff",
    "🎫." + "🎫" * 10,
    "x" * 10_000,  # far too long: refused before any decoding
    "x" * 5_000 + "." + "y" * 5_000,
    "A" * 43 + "." + "A" * 86,  # the right shape, zero bytes
    _b64(b"v1|n|" + IH.encode() + b"|node|9999999999") + "." + _b64(b"\x00" * 64),
    _b64(b"v1|n|x|node|9") + ".",
    "." + _b64(b"\x00" * 64),
    "%2e%2e.%2f",
    "a" * 511 + ".",
]


@pytest.mark.parametrize("junk", JUNK, ids=range(len(JUNK)))
def test_junk_is_a_ticket_error_and_nothing_else(verifier: TicketVerifier, junk: str | None) -> None:
    with pytest.raises(TicketError):
        verifier.verify(junk, IH)


def test_a_public_key_that_is_not_one_is_refused_at_once(clock: Clock) -> None:
    for key in ("", "not base64 at all!", _b64(b"short"), "é" * 43):
        with pytest.raises(HfbtError) as e:
            TicketVerifier(key, clock)
        assert e.value.code == "BadTicketKey"


# --- the key file -------------------------------------------------------------------------------


def test_the_key_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "ticket.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(path)
    # The same key: tickets minted before a restart still verify after it.
    text, _ = TicketSigner(key, lambda: NOW).mint("node1", IH, "node", ttl=60)
    assert TicketVerifier(TicketSigner(again).public_key, lambda: NOW).verify(text, IH).node == "node1"


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ticket.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(HfbtError) as e:
        load_or_create_key(path)
    assert e.value.code == "InsecureKey" and "chmod 600" in e.value.message
    os.chmod(path, 0o660)  # a group that may rewrite it could swap in its own key
    with pytest.raises(HfbtError):
        load_or_create_key(path)
    os.chmod(path, 0o440)  # a Kubernetes Secret through fsGroup: the replicas' one shared key
    assert load_or_create_key(path).public_key() is not None


def test_a_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ticket.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    with pytest.raises(HfbtError) as e:
        load_or_create_key(path)
    assert e.value.code == "BadTicketKey"


# --- the holder's side: reading a grant, timing renewals ------------------------------------------


def test_a_holder_reads_the_expiry_without_the_key(signer: TicketSigner) -> None:
    text, ticket = signer.mint("node1", IH, "node", ttl=600)
    assert peek_expires(text) == ticket.expires
    for junk in (None, "", "x" * 10_000, "é.ü", "a.b", _b64(b"v1|n|x|node|soon") + ".sig"):
        assert peek_expires(junk) is None


def test_a_grant_is_read_from_a_torrents_announce_url(signer: TicketSigner) -> None:
    text, ticket = signer.mint("node1", IH, "node", ttl=600)
    grant = grant_of_announce(f"http://t:6969/announce/{text}?hfbt=pieces", skew=3.0)
    assert grant == TicketGrant(text, f"http://t:6969/announce/{text}", ticket.expires, 3.0)
    open_grant = grant_of_announce("http://t:6969/announce?hfbt=pieces")
    assert open_grant == TicketGrant(None, "http://t:6969/announce", None)
    assert grant_of_announce(None) is None and grant_of_announce("") is None
    assert text not in repr(grant)  # a grant in a log line or a failing assert shows no ticket


def test_renewal_comes_at_half_the_remaining_life_on_the_trackers_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = TicketGrant("t", "http://t/announce/t", NOW + 600)
    assert grant.renew_in(NOW) == 300
    assert grant.renew_in(NOW + 500) == 50
    # The tracker's clock runs 100 s ahead of ours: its ticket has 100 s less left than ours says.
    assert TicketGrant("t", "u", NOW + 600, skew=100.0).renew_in(NOW) == 250
    # Already expired (or nearly): soon, but never in a tight loop.
    assert grant.renew_in(NOW + 700) == trackerclient.RENEW_MIN_S
    assert TicketGrant(None, "http://t/announce", None).renew_in(NOW) is None  # open: never
    assert [retry_in(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_in(50) == trackerclient.RETRY_MAX_S


# --- TrackerClient against the contract -----------------------------------------------------------


class _Tracker:
    """The tracker routes the client's ticket calls use, with a clock `ahead` of ours."""

    def __init__(self, signer: TicketSigner) -> None:
        self.signer = signer
        self.ahead = 0.0
        self.seen: list[dict[str, str]] = []
        self.readable = True  # whether the Hub token still reads the repo
        self.url = ""

    def app(self) -> Starlette:
        def date() -> dict[str, str]:
            return {"date": formatdate(time.time() + self.ahead, usegmt=True)}

        def note(request: Request) -> None:
            self.seen.append(
                {k: request.headers.get(k, "") for k in ("authorization", "x-hfbt-node", "x-hf-token")}
            )

        async def ticket(request: Request) -> JSONResponse:
            note(request)
            if not self.readable:
                body = {"error": "GatedRepo", "detail": "your Hub token does not read acme/private"}
                return JSONResponse(body, 403, headers=date())
            text, t = self.signer.mint("node1", request.path_params["ih"], "node", ttl=600)
            body = {"ticket": text, "announce": f"{self.url}/announce/{text}", "expires": t.expires}
            return JSONResponse(body, headers=date())

        async def announce_url(request: Request) -> JSONResponse:
            note(request)
            if request.headers.get("authorization") != "Bearer seed-secret":
                return JSONResponse({"error": "Unauthorized", "detail": "not the seed token"}, 401)
            text, t = self.signer.mint("seed", ANY_TORRENT, "seed", ttl=600)
            return JSONResponse(
                {"announce": f"{self.url}/announce/{text}", "ticket": text, "expires": t.expires}
            )

        async def ticket_key(request: Request) -> JSONResponse:
            return JSONResponse({"public_key": self.signer.public_key})

        async def broken(request: Request) -> JSONResponse:
            return JSONResponse({"announce": 7, "expires": "soon"})

        return Starlette(
            routes=[
                Route("/api/v1/tickets/{ih}", ticket),
                Route("/api/v1/announce-url", announce_url),
                Route("/api/v1/ticket-key", ticket_key),
                Route("/broken/api/v1/announce-url", broken),
            ]
        )


@pytest.fixture
def tracker() -> Iterator[_Tracker]:
    t = _Tracker(TicketSigner(Ed25519PrivateKey.generate()))  # on the real clock, as a tracker is
    port = free_port()
    t.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        # Its own Date header only: the one a tracker whose clock is off would send.
        uvicorn.Config(
            t.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False, date_header=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake tracker did not start"
        time.sleep(0.02)
    try:
        yield t
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_node_asks_for_a_ticket_with_its_token_and_the_hub_token(tracker: _Tracker) -> None:
    client = TrackerClient(tracker.url, "hfbtn_node1.s3cret", node_name="node1")
    try:
        grant = client.ticket(IH, hf_token="hf_user")
        assert tracker.seen == [
            {"authorization": "Bearer hfbtn_node1.s3cret", "x-hfbt-node": "node1", "x-hf-token": "hf_user"}
        ]
        assert grant.announce == f"{tracker.url}/announce/{grant.ticket}"
        ticket = TicketVerifier(client.ticket_key() or "").verify(grant.ticket, IH)
        assert grant.expires == ticket.expires and grant.skew == 0.0
        # The Hub token no longer reads the repo: refused, with the tracker's reason, and marked so.
        tracker.readable = False
        with pytest.raises(TrackerRefused) as e:
            client.ticket(IH, hf_token="hf_user")
        assert (e.value.status, e.value.code) == (403, "GatedRepo")
        assert isinstance(e.value, HfbtError) and "acme/private" in e.value.message
    finally:
        client.close()


def test_the_client_learns_how_far_the_trackers_clock_is_from_ours(tracker: _Tracker) -> None:
    client = TrackerClient(tracker.url)
    try:
        tracker.ahead = 120.0
        grant = client.ticket(IH)
        assert 118 <= grant.skew <= 121 and client.skew == grant.skew
        # 600 s on the tracker's clock, 120 s of which already gone on ours: renew in about 240 s.
        assert 235 <= (grant.renew_in() or 0) <= 242
        tracker.ahead = 0.0
        assert client.ticket(IH).skew == 0.0  # within the Date header's second: no skew
    finally:
        client.close()


def test_a_seed_gets_one_grant_for_every_torrent_and_the_key_to_check_tickets(tracker: _Tracker) -> None:
    seed = TrackerClient(tracker.url, "seed-secret", node_name="seed-a")
    stranger = TrackerClient(tracker.url)
    broken = TrackerClient(f"{tracker.url}/broken")
    try:
        grant = seed.announce_url()
        key = seed.ticket_key()
        assert key == tracker.signer.public_key
        assert TicketVerifier(key).verify(grant.ticket, OTHER).role == "seed"
        with pytest.raises(TrackerRefused) as e:
            stranger.announce_url()
        assert (e.value.status, e.value.code) == (401, "Unauthorized")
        with pytest.raises(HfbtError) as bad:
            broken.announce_url()
        assert bad.value.code == "TrackerError" and not isinstance(bad.value, TrackerRefused)
    finally:
        for c in (seed, stranger, broken):
            c.close()


def test_an_unreachable_tracker_is_not_a_refusal() -> None:
    client = TrackerClient(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(HfbtError) as e:
            client.ticket(IH)
        assert e.value.code == "TrackerUnreachable" and not isinstance(e.value, TrackerRefused)
    finally:
        client.close()
