"""A node's side of the seed's piece server (hfbt/seed/pieces.py): take the pieces it hands out.

Each worker asks the seed for "the next piece nobody has had" and gives it to libtorrent
(`Swarm.add_piece`, which checks its SHA-1 and announces it); every other piece comes from the other
nodes over BitTorrent. A node takes no new piece while two of its own are still at no other node, so
no node ends up the only holder of many. Once the seed has handed everything out, the fetcher only
watches: when the download makes no progress for a while and some missing piece has no source among
the peers (the node that took it died, or a late node is alone), it fetches exactly those by index.
If no piece server answers at all, the node announces without its piece role again, so the tracker
hands it the seed as a plain BT peer.

Every request shows the seed this node's ticket for the blob (TICKET_HEADER), read from the blob's
`TicketHolder` at each request: the node renews tickets (hfbt/agent/node.py) while fetchers run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from fastbencode import bdecode

from hfbt.manifest import PIECE_LENGTH
from hfbt.swarm import Swarm, SwarmError
from hfbt.tickets import TICKET_HEADER
from hfbt.wire import PIECE_HEADER, PIECE_URLS_KEY, ROLE_PIECES, with_role

log = logging.getLogger("hfbt.pieces")

WORKERS = 2  # per blob; IN_FLIGHT bounds them across blobs
# One piece at a time per node, across all its blobs: each piece the node takes then arrives at its
# full share of the seed's link, and the node can pass it on sooner (4 blobs x 2 requests each made
# the first piece take 4-8 times longer, and the other nodes' links sat idle meanwhile).
IN_FLIGHT = threading.BoundedSemaphore(1)
UNFORWARDED = 2  # pieces of ours no other node has yet, before we take another
FORWARD_WAIT_S = 2.0  # ... but never wait longer than this for the others to copy them
RESCUE_AFTER_S = 5.0  # no progress this long, and a missing piece nobody has: fetch it by index
RESCUE_BATCH = 2  # pieces between two looks at what the peers have meanwhile
DEAD_FOR_S = 60.0  # a piece server that did not answer is skipped by every blob for this long
# A connection that fails once (a reset, a connect timeout on a loaded host) is tried once more before
# the server counts as dead: giving up sends this node to the seed over BitTorrent for a minute, where
# the seed uploads pieces other nodes also get.
RETRY_AFTER_S = 0.5

# Process-wide: with a firewalled piece server each blob would otherwise wait out its own connect
# timeout, one after the other (IN_FLIGHT), before falling back to BitTorrent.
_dead: dict[str, float] = {}
_dead_lock = threading.Lock()


def _is_dead(url: str) -> bool:
    with _dead_lock:
        return _dead.get(url, 0.0) > time.monotonic()


def _mark_dead(url: str) -> None:
    with _dead_lock:
        _dead[url] = time.monotonic() + DEAD_FOR_S


class PieceBuffers:
    """Piece-sized buffers that response bodies are read into, and reused once libtorrent has its copy.

    httpx keeps a response in a reference cycle, so each `r.content` (a new 4 MiB bytes object per
    piece) lived on until the next garbage collection: 52 MB of dead bodies were still there at the end
    of one 1 GiB pull. Reused buffers also spare the fresh pages a new body costs the kernel.
    """

    def __init__(self, keep: int = 4) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(PIECE_LENGTH)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


BUFFERS = PieceBuffers()


@dataclass
class Answer:
    """A piece server's answer: a piece (its index and `size` bytes in `body`, a BUFFERS buffer the
    caller gives back) or a status with the server's reason."""

    status: int
    piece: int | None = None
    body: bytearray | None = None
    size: int = 0
    reason: str = ""

    def release(self) -> None:
        if self.body is not None:
            BUFFERS.give(self.body)
            self.body = None


def read_answer(r: httpx.Response) -> Answer:
    """The answer of a streamed response; a piece's body goes into a BUFFERS buffer, as it arrives."""
    if r.status_code != 200 or PIECE_HEADER not in r.headers:
        r.read()
        return Answer(r.status_code, reason=_refusal(r))
    try:
        piece = int(r.headers[PIECE_HEADER])
    except ValueError:
        return Answer(r.status_code, reason=f"bad {PIECE_HEADER} header")
    buf = BUFFERS.take()
    view, size = memoryview(buf), 0
    try:
        for chunk in r.iter_raw():
            end = size + len(chunk)
            if end > len(buf):
                raise httpx.DecodingError("a piece longer than the torrent's piece length")
            view[size:end] = chunk
            size = end
    except BaseException:
        view.release()
        BUFFERS.give(buf)
        raise
    view.release()
    return Answer(200, piece, buf, size)


def piece_urls(torrent: bytes) -> tuple[list[str], str | None]:
    """The piece servers a .torrent from the tracker names, and its announce URL without the role."""
    try:
        meta = bdecode(torrent)
    except ValueError:
        return [], None
    urls = [u.decode("utf-8", "replace") for u in meta.get(PIECE_URLS_KEY, []) if isinstance(u, bytes)]
    announce = meta.get(b"announce")
    plain = None
    if isinstance(announce, bytes):
        parts = urlsplit(announce.decode("utf-8", "replace"))
        plain = urlunsplit(parts._replace(query=""))
    return urls, plain


class TicketHolder:
    """One torrent's announce URL and ticket as the node holds them now (thread-safe).

    The node renews the ticket (`renewed`); the piece fetcher reads it at every request and drops the
    piece role when no piece server answers (`without_pieces`). `trackers()` is what the torrent
    announces with: the URL, with `?hfbt=pieces` while it takes the seed's pieces over HTTP.
    """

    def __init__(self, announce: str | None, ticket: str | None, pieces: bool) -> None:
        self._lock = threading.Lock()
        self._announce = announce
        self._ticket = ticket
        self._pieces = pieces

    def __repr__(self) -> str:  # never the ticket, not even in a failing test's report
        return f"TicketHolder(pieces={self._pieces}, ticket={'set' if self._ticket else None})"

    @property
    def ticket(self) -> str | None:
        with self._lock:
            return self._ticket

    @property
    def pieces(self) -> bool:
        with self._lock:
            return self._pieces

    def trackers(self) -> list[str]:
        with self._lock:
            return self._trackers()

    def _trackers(self) -> list[str]:
        if not self._announce:
            return []
        return [with_role(self._announce, ROLE_PIECES) if self._pieces else self._announce]

    def renewed(self, announce: str, ticket: str | None) -> list[str]:
        """Hold a fresh grant; returns the trackers to announce with now."""
        with self._lock:
            self._announce, self._ticket = announce, ticket
            return self._trackers()

    def without_pieces(self) -> list[str]:
        """Announce as a plain peer from now on (renewals included); returns the trackers for that."""
        with self._lock:
            self._pieces = False
            return self._trackers()


class PieceFetcher:
    def __init__(self, swarm: Swarm, info_hash: str, urls: list[str], holder: TicketHolder) -> None:
        self.swarm = swarm
        self.info_hash = info_hash
        self.urls = list(urls)
        self.holder = holder
        self._http = httpx.Client(timeout=httpx.Timeout(60.0, connect=2.0))
        self._lock = threading.Lock()
        self._handed_out = False
        self._gave_up = False
        self.fetched = 0  # pieces this node took from the seed
        self._added: set[int] = set()
        self._taken: list[int] = []  # handed to this node by `next`, in order
        self._running = 0

    def start(self) -> PieceFetcher:
        self._running = WORKERS + 1  # set before any thread starts: the last one to end closes the client
        for i in range(WORKERS):
            self._spawn(self._take_loop, f"pieces-{self.info_hash[:8]}-{i}")
        self._spawn(self._watch_loop, f"pieces-{self.info_hash[:8]}-watch")
        return self

    def _spawn(self, target, name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def _done(self) -> bool:
        try:
            return self.swarm.wait_finished(self.info_hash, timeout=0)
        except SwarmError:
            return True  # removed from the swarm

    # --- handing out: one piece per request, until the seed has given every piece to someone ---

    def _take_loop(self) -> None:
        try:
            while not self._done() and not self._handed_out and not self._gave_up:
                self._take_one()
        except SwarmError:
            pass  # the torrent was removed (origin fallback, forget, integrity failure): nothing to do
        except Exception:  # a fetcher bug must not take the download with it: BT still works
            log.exception("event=piece_fetcher_failed info_hash=%s", self.info_hash)
            self._give_up("the piece fetcher failed")
        finally:
            self._close_when_idle()

    def _take_one(self) -> None:
        self._wait_until_forwarded()
        with IN_FLIGHT:
            if self._done() or self._handed_out:
                return
            taken = self._take_from_any()
        # Handing the piece to libtorrent copies it (≈ 6 ms per 4 MiB here): the next request is on
        # the wire meanwhile, so the seed's link does not wait for this node's CPU.
        if taken is not None:
            self._add(taken)

    def _wait_until_forwarded(self) -> None:
        """Take no new piece while UNFORWARDED of ours are still at no other node.

        A node that keeps taking pieces faster than the others copy them ends up the only holder of
        many; its uplink is then the bottleneck of the tail, and a saturated uplink also slows its own
        downloads (its requests to a peer travel behind the data it sends that peer).
        """
        deadline = time.monotonic() + FORWARD_WAIT_S
        while not self._done() and time.monotonic() < deadline:
            with self._lock:
                taken = list(self._taken)
            if len(taken) < UNFORWARDED:
                return
            st = self.swarm.status(self.info_hash)
            if st.peers == 0:
                return  # alone: nobody to forward to
            avail = self.swarm.availability(self.info_hash)
            if sum(1 for p in taken if p < len(avail) and avail[p] == 0) < UNFORWARDED:
                return
            time.sleep(0.05)

    def _take_from_any(self) -> Answer | None:
        a = self._ask("POST", f"/v1/pieces/{self.info_hash}/next", (200, 204))
        if a is None:
            return None
        if a.status == 204:
            self._handed_out = True
            return None
        with self._lock:
            self._taken.append(a.piece)
        return a

    # --- afterwards: rescue pieces nobody in the swarm has ---

    def _watch_loop(self) -> None:
        last_done, last_change = -1, time.monotonic()
        try:
            while not self._done() and not self._gave_up:
                time.sleep(1.0)
                if not self._handed_out:
                    last_change = time.monotonic()
                    continue
                st = self.swarm.status(self.info_hash)
                if st.peers == 0:
                    # Alone a second after the hand-out ended: nobody will send the rest (the nodes
                    # that took it left), so waiting RESCUE_AFTER_S for progress only costs time.
                    self._rescue()
                    last_change = time.monotonic()
                    continue
                if st.done != last_done:
                    last_done, last_change = st.done, time.monotonic()
                    continue
                if time.monotonic() - last_change >= RESCUE_AFTER_S:
                    self._rescue()
                    last_change = time.monotonic()
        except SwarmError:
            pass
        finally:
            log.info("event=piece_fetch_done info_hash=%s fetched=%d", self.info_hash, self.fetched)
            self._close_when_idle()

    def _rescue(self) -> None:
        """Fetch, back to back, every missing piece no peer has; a late node alone gets them all here."""
        with self._lock:
            self._added.clear()  # one that failed its hash check last time is wanted again
        logged = False
        while not self._done() and not self._gave_up:
            missing = self.swarm.pieces_without_source(self.info_hash)
            with self._lock:
                orphans = [p for p in missing if p not in self._added]
            if not orphans:
                return
            # Several late nodes rescue at once: different pieces first, so they can trade them.
            random.shuffle(orphans)
            if not logged:
                log.info("event=piece_rescue info_hash=%s pieces=%d", self.info_hash, len(orphans))
                logged = True
            for piece in orphans[:RESCUE_BATCH]:
                if not self._fetch(piece):
                    return

    def _fetch(self, piece: int) -> bool:
        a = self._ask("GET", f"/v1/pieces/{self.info_hash}/{piece}", (200,))
        if a is None:
            return False
        a.piece = piece  # the one asked for, whatever the header says
        self._add(a)
        return True

    # --- shared ---

    def _ask(self, method: str, path: str, ok: tuple[int, ...]) -> Answer | None:
        """The first piece server's answer with a status in `ok` (and, for a piece, its index header);
        a server that fails is dropped for good, and with none left the node falls back to BT."""
        for url in list(self.urls):
            if _is_dead(url):
                self._drop(url, "did not answer another blob's request")
                continue
            try:
                a = self._request(method, f"{url}{path}")
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                _mark_dead(url)
                self._drop(url, repr(e))
                continue
            if a.status in ok and (a.status != 200 or a.piece is not None):
                return a
            self._drop(url, a.reason)
        self._give_up("no piece server answered")
        return None

    def _request(self, method: str, url: str) -> Answer:
        try:
            return self._request_once(method, url)
        except httpx.ReadTimeout:
            raise  # it answered nothing for a minute: no second minute
        except httpx.TransportError as e:
            log.info("event=piece_server_retry url=%s error=%r", url, repr(e))
            time.sleep(RETRY_AFTER_S)
            return self._request_once(method, url)

    def _request_once(self, method: str, url: str) -> Answer:
        with self._http.stream(method, url, headers=self._headers()) as r:
            return read_answer(r)

    def _headers(self) -> dict[str, str]:
        # Read at every request: a renewal replaces the ticket while the fetcher runs.
        ticket = self.holder.ticket
        return {TICKET_HEADER: ticket} if ticket else {}

    def _add(self, a: Answer) -> None:
        assert a.body is not None and a.piece is not None
        piece = a.piece
        try:
            # libtorrent copies it before add_piece returns: the buffer is free again after this
            data = a.body if a.size == len(a.body) else a.body[: a.size]
            self.swarm.add_piece(self.info_hash, piece, data)
        finally:
            a.release()
        with self._lock:
            self.fetched += 1
            # libtorrent checks and writes it in the background: until then it still looks missing
            self._added.add(piece)

    def _drop(self, url: str, why: str) -> None:
        with self._lock:
            if url in self.urls:
                self.urls.remove(url)
                log.warning(
                    "event=piece_server_unusable url=%s info_hash=%s why=%r", url, self.info_hash, why
                )

    def _give_up(self, why: str) -> None:
        with self._lock:
            if self._gave_up:
                return
            self._gave_up = True
        log.warning("event=piece_fetch_off info_hash=%s why=%r fallback=bt_seed", self.info_hash, why)
        trackers = self.holder.without_pieces()
        if trackers:
            try:
                self.swarm.replace_trackers(self.info_hash, trackers)
            except SwarmError:
                pass

    def _close_when_idle(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self._http.close()


def _refusal(r: httpx.Response) -> str:
    """`HTTP 403: <the seed's reason>`: why a piece server said no (its reasons never hold the ticket)."""
    try:
        reason = r.json().get("error")
    except (ValueError, AttributeError):
        reason = None
    return f"HTTP {r.status_code}: {reason}" if isinstance(reason, str) else f"HTTP {r.status_code}"
