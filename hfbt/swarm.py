"""The one libtorrent session of a process. Nothing else in hfbt imports libtorrent.

Settings are tuned for a private LAN swarm: TCP only (uTP ran at
≈ 9 MB/s on loopback), no DHT/LSD/UPnP, several peers per IP (tests and the demo run every node on
127.0.0.1), suggest_mode off, and limits raised so a node can seed hundreds of blobs at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import libtorrent as lt

from hfbt.config import SwarmConfig
from hfbt.log import redact
from hfbt.wire import with_zone

log = logging.getLogger("hfbt.swarm")


class SwarmError(RuntimeError):
    pass


# How long close() waits for calls already inside libtorrent (a status or add_piece takes milliseconds).
CLOSE_WAIT_S = 10.0


class _Calls:
    """The threads inside libtorrent right now; once closed, nobody gets in.

    A daemon thread (piece fetchers, the shim, the API's pulls) still inside a libtorrent call when the
    interpreter exits is ended by pthread_exit as it retakes the GIL, in the destructor of the bindings'
    GIL guard: the C++ runtime then aborts the whole process ("terminate called without an active
    exception", exit code -6) however well the pull went. So close() waits for the calls in flight and
    every later call raises SwarmError before it reaches libtorrent.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise SwarmError("the swarm is closed")
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Turn new calls away and wait for those inside; False if some are still there at the timeout."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._inside == 0, timeout)


P = ParamSpec("P")
R = TypeVar("R")


def _inside_libtorrent(method: Callable[Concatenate[Swarm, P], R]) -> Callable[Concatenate[Swarm, P], R]:
    """A Swarm method that only calls libtorrent (milliseconds), run as one call through the gate.
    Methods that wait on an alert afterwards gate their libtorrent call alone, not the wait."""

    @functools.wraps(method)
    def gated(self: Swarm, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._calls.call():
            return method(self, *args, **kwargs)

    return gated


@dataclass
class TorrentStatus:
    info_hash: str
    total: int
    done: int
    finished: bool
    seeding: bool
    peers: int
    seeds: int
    download_rate: int
    upload_rate: int
    uploaded: int
    downloaded: int
    error: str | None


@dataclass
class _Entry:
    handle: lt.torrent_handle
    finished: threading.Event = field(default_factory=threading.Event)
    renamed: threading.Event = field(default_factory=threading.Event)
    resumed: threading.Event = field(default_factory=threading.Event)
    flushed: threading.Event = field(default_factory=threading.Event)
    piece_waiters: dict[int, list[Future]] = field(default_factory=dict)
    rename_error: str | None = None
    error: str | None = None


def session_settings(cfg: SwarmConfig) -> dict:
    mbit = 1_000_000 // 8
    settings = {
        "listen_interfaces": f"{cfg.listen_host}:{cfg.listen_port}",
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        # localhost trackers with a passkey path would be refused by the SSRF guard
        "ssrf_mitigation": False,
        "suggest_mode": 0,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": 100_000,
        "active_checking": 4,
        "dont_count_slow_torrents": False,
        "connections_limit": 2000,
        "min_announce_interval": 5,
        "min_reconnect_time": 2,
        # Peer connections are attempted on the session tick: 500 ms by default, which put a
        # ~1 s floor under every blob, however small.
        "tick_interval": 100,
        "peer_connect_timeout": 5,
        "max_out_request_queue": 1500,
        "max_allowed_in_request_queue": 4000,
        # How much piece data libtorrent queues per peer ahead of its own requests and HAVEs (one TCP
        # connection carries both directions): 1 % of that peer's upload rate per second, i.e. 10 ms,
        # between 16 KiB and 4 MiB. The usual 50-150 % (0.5-1.5 s) suits WAN seeds; on a LAN it holds
        # every request back behind up to a second of outgoing data (bench/README.md).
        "send_buffer_watermark": 4 * 1024 * 1024,
        "send_buffer_watermark_factor": 1,
        "send_buffer_low_watermark": 16 * 1024,
        "send_socket_buffer_size": cfg.socket_buffer_kb * 1024,
        "hashing_threads": 2,
        "upload_rate_limit": int(cfg.upload_mbit * mbit),
        "download_rate_limit": int(cfg.download_mbit * mbit),
        "user_agent": "hfbt/0.1 libtorrent/" + lt.__version__,
        "alert_mask": (
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.storage
            | lt.alert_category.tracker
        ),
    }
    return {**settings, **cfg.lt_settings}


class Swarm:
    """A libtorrent session plus the bookkeeping hfbt needs: completion, renames, resume data."""

    def __init__(self, cfg: SwarmConfig, resume_dir: Path | None = None) -> None:
        params = lt.session_params()
        params.settings = session_settings(cfg)
        # The bindings take the backend by name (an unknown one silently means the default).
        params.disk_io_constructor = f"{cfg.disk_io}_disk_io_constructor"
        self._ses = lt.session(params)
        self._zone = cfg.zone  # named in every announce (hfbt/wire.py with_zone)
        if cfg.upload_mbit or cfg.download_mbit:
            # libtorrent exempts LAN peers from rate limits (its "local" peer class); in a cluster
            # every peer is on the LAN, so an operator's cap must cover them all.
            everyone = lt.ip_filter()
            everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
            everyone.add_rule(
                "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id
            )
            self._ses.set_peer_class_filter(everyone)
        self._resume_dir = resume_dir
        if resume_dir:
            resume_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._removed_up = 0
        self._removed_down = 0
        self._added_down = 0  # payload handed in with add_piece (the seed's piece server): not BT
        self._calls = _Calls()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._alert_loop, name="swarm-alerts", daemon=True)
        self._thread.start()

    @property
    @_inside_libtorrent
    def listen_port(self) -> int:
        return self._ses.listen_port()

    # --- adding and removing -------------------------------------------------------------------

    @_inside_libtorrent
    def add(
        self,
        torrent: bytes,
        save_path: Path,
        *,
        file_name: str | None = None,
        seeding: bool = False,
        trackers: list[str] | None = None,
    ) -> str:
        """Join a blob's swarm; returns its info-hash. Idempotent per info-hash.

        file_name: the on-disk name of the torrent's single file, relative to save_path (a partial
        name while downloading). seeding: the file is complete and already verified (skip hashing).
        trackers: announce with exactly these (an empty list: none yet), not the torrent's own
        announce URL nor one in resume data, whose ticket may have expired; None: the torrent's own.
        """
        ti = lt.torrent_info(lt.bdecode(torrent))
        ih = str(ti.info_hashes().v1)
        with self._lock:
            if ih in self._entries:
                return ih
            params = self._resume_params(ih) or lt.add_torrent_params()
            params.ti = ti
            params.save_path = str(save_path)
            if file_name and file_name != ti.name():
                params.renamed_files = {0: file_name}
            flags = params.flags & ~lt.torrent_flags.paused & ~lt.torrent_flags.auto_managed
            if trackers is None and self._zone:
                trackers = [t.url for t in ti.trackers()]
            if trackers is not None:
                params.trackers = [with_zone(t, self._zone) for t in trackers]
                flags |= lt.torrent_flags.override_trackers
            if seeding:
                flags |= lt.torrent_flags.seed_mode
            params.flags = flags
            entry = _Entry(self._ses.add_torrent(params))
            if seeding:
                entry.finished.set()  # seed mode raises no finished alert: the data is known complete
            self._entries[ih] = entry
        return ih

    def _resume_params(self, ih: str) -> lt.add_torrent_params | None:
        if not self._resume_dir:
            return None
        path = self._resume_dir / f"{ih}.resume"
        if not path.exists():
            return None
        try:
            return lt.read_resume_data(path.read_bytes())
        except Exception as e:  # a torn resume file only costs a recheck
            log.warning("event=resume_unreadable info_hash=%s error=%r", ih, e)
            return None

    @_inside_libtorrent
    def remove(self, ih: str) -> None:
        with self._lock:
            entry = self._entries.pop(ih, None)
        if entry is None:
            return
        st = entry.handle.status()
        self._removed_up += st.total_payload_upload
        self._removed_down += st.total_payload_download
        self._ses.remove_torrent(entry.handle)
        if self._resume_dir:
            (self._resume_dir / f"{ih}.resume").unlink(missing_ok=True)

    @_inside_libtorrent
    def reannounce(self, ih: str) -> None:
        # A node can announce a moment before the seed does and get no peers; waiting a whole
        # announce interval for the next try would stall the pull.
        self._entry(ih).handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)

    @_inside_libtorrent
    def super_seed(self, ih: str) -> None:
        """Super seeding (BEP 16) for a complete torrent: each peer is shown only pieces no other peer
        has been given yet, so the swarm, not the seed, spreads the copies."""
        self._entry(ih).handle.set_flags(lt.torrent_flags.super_seeding)

    @_inside_libtorrent
    def add_piece(self, ih: str, piece: int, data: bytes | bytearray) -> None:
        """Hand libtorrent a piece fetched elsewhere; it checks the hash, writes and announces it."""
        self._entry(ih).handle.add_piece(piece, data, 0)
        with self._lock:
            self._added_down += len(data)

    @_inside_libtorrent
    def pieces_without_source(self, ih: str) -> list[int]:
        """Pieces this node lacks that no connected peer has either."""
        have = self._entry(ih).handle.status(lt.status_flags_t.query_pieces).pieces
        avail = self.availability(ih)
        return [i for i, (got, n) in enumerate(zip(have, avail, strict=False)) if not got and n == 0]

    @_inside_libtorrent
    def availability(self, ih: str) -> list[int]:
        """How many connected peers have each piece."""
        return list(self._entry(ih).handle.piece_availability())

    @_inside_libtorrent
    def interested_peers(self) -> int:
        """Connected peers, over every torrent, that want a piece this node has."""
        n = 0
        for ih in self.info_hashes():
            try:
                peers = self._entry(ih).handle.get_peer_info()
            except Exception:  # removed meanwhile: SwarmError, or libtorrent's invalid handle
                continue
            n += sum(1 for p in peers if p.flags & lt.peer_info.remote_interested)
        return n

    @_inside_libtorrent
    def replace_trackers(self, ih: str, urls: list[str]) -> None:
        h = self._entry(ih).handle
        h.replace_trackers([{"url": with_zone(u, self._zone)} for u in urls])
        h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)

    def has(self, ih: str) -> bool:
        with self._lock:
            return ih in self._entries

    def info_hashes(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    # --- waiting -------------------------------------------------------------------------------

    def wait_finished(self, ih: str, timeout: float | None = None) -> bool:
        entry = self._entry(ih)
        if not entry.finished.wait(timeout):
            return False
        if entry.error:
            raise SwarmError(entry.error)
        return True

    # --- streaming -----------------------------------------------------------------------------

    def read_piece(self, ih: str, piece: int, timeout: float = 300.0) -> bytes:
        """One verified piece, as soon as it is here: downloaded first if need be (deadline 0).

        Always through libtorrent's read_piece, never from the file: a piece is hash-checked
        before it is written, and a read right after have_piece() returned zero-filled bytes.
        """
        entry = self._entry(ih)
        fut: Future = Future()
        with self._lock:
            entry.piece_waiters.setdefault(piece, []).append(fut)
        # alert_when_available also covers a piece that arrives between a check and this call.
        with self._calls.call():
            entry.handle.set_piece_deadline(piece, 0, lt.deadline_flags_t.alert_when_available)
        try:
            return fut.result(timeout)
        except TimeoutError:
            with self._lock:
                waiters = entry.piece_waiters.get(piece, [])
                if fut in waiters:
                    waiters.remove(fut)
            raise SwarmError(f"piece {piece} of {ih} did not arrive within {timeout:.0f}s") from None

    @_inside_libtorrent
    def read_ahead(self, ih: str, pieces: range, step_ms: int = 200) -> None:
        """Ask for the pieces a reader needs next, in reading order, before it asks for each."""
        handle = self._entry(ih).handle
        for i, p in enumerate(pieces):
            if not handle.have_piece(p):
                handle.set_piece_deadline(p, (i + 1) * step_ms, 0)

    def flush(self, ih: str, timeout: float = 60.0) -> None:
        """Wait until every verified piece is on disk.

        A torrent is "finished" once its pieces pass the hash check, which happens before the disk
        write: reading the file right then returned stale bytes (the demo's sha256 check caught it).
        """
        entry = self._entry(ih)
        entry.flushed.clear()
        with self._calls.call():
            entry.handle.flush_cache()
        if not entry.flushed.wait(timeout):
            raise SwarmError(f"flushing {ih} to disk timed out")

    def rename(self, ih: str, new_name: str, timeout: float = 60.0) -> None:
        """Rename the torrent's file (relative to save_path); seeding goes on from the new name."""
        entry = self._entry(ih)
        entry.renamed.clear()
        entry.rename_error = None
        with self._calls.call():
            entry.handle.rename_file(0, new_name)
        if not entry.renamed.wait(timeout):
            raise SwarmError(f"rename of {ih} timed out")
        if entry.rename_error:
            raise SwarmError(f"rename of {ih} failed: {entry.rename_error}")

    def _entry(self, ih: str) -> _Entry:
        with self._lock:
            try:
                return self._entries[ih]
            except KeyError:
                raise SwarmError(f"torrent {ih} is not in the session") from None

    # --- status --------------------------------------------------------------------------------

    def statuses(self) -> list[TorrentStatus]:
        """Every torrent's status, downloads and seeds; one removed while we look is left out."""
        out = []
        for ih in self.info_hashes():
            try:
                out.append(self.status(ih))
            except Exception:  # removed meanwhile: SwarmError, or libtorrent's invalid handle
                continue
        return out

    @_inside_libtorrent
    def status(self, ih: str) -> TorrentStatus:
        entry = self._entry(ih)
        st = entry.handle.status()
        return TorrentStatus(
            info_hash=ih,
            total=st.total_wanted,
            done=st.total_wanted_done,
            finished=entry.finished.is_set() and not entry.error,
            seeding=st.is_seeding,
            peers=st.num_peers,
            seeds=st.num_seeds,
            download_rate=st.download_payload_rate,
            upload_rate=st.upload_payload_rate,
            uploaded=st.total_payload_upload,
            downloaded=st.total_payload_download,
            error=entry.error,
        )

    def totals(self) -> dict[str, int]:
        up, down = self._removed_up, self._removed_down + self._added_down
        for ih in self.info_hashes():
            try:
                st = self.status(ih)
            except SwarmError:
                continue
            up += st.uploaded
            down += st.downloaded
        return {
            "uploaded": up,
            "downloaded": down,
            "from_piece_servers": self._added_down,
            "torrents": len(self.info_hashes()),
        }

    # --- shutdown ------------------------------------------------------------------------------

    def close(self, save_resume: bool = True) -> None:
        if not self._calls.close(CLOSE_WAIT_S):
            log.warning("event=swarm_close_busy waited_s=%s", CLOSE_WAIT_S)
        try:
            if save_resume and self._resume_dir:
                self._save_resume_incomplete()
        except Exception as e:  # resume data only saves a recheck: never let it keep the session alive
            log.warning("event=resume_save_failed error=%r", e)
        finally:
            # The alert thread must be gone before the session is: libtorrent aborts the process otherwise.
            self._stop.set()
            self._thread.join(timeout=5)
            self._ses.pause()
            del self._ses

    def _save_resume_incomplete(self, timeout: float = 10.0) -> None:
        # Only downloads need resume data: complete blobs are re-added in seed mode without a check.
        with self._lock:
            pending = [e for e in self._entries.values() if not e.finished.is_set()]
        for e in pending:
            e.resumed.clear()
            e.handle.save_resume_data(
                lt.save_resume_flags_t.save_info_dict | lt.save_resume_flags_t.flush_disk_cache
            )
        deadline = time.monotonic() + timeout
        for e in pending:
            e.resumed.wait(max(0.0, deadline - time.monotonic()))

    # --- alerts --------------------------------------------------------------------------------

    def _alert_loop(self) -> None:
        while not self._stop.is_set():
            self._ses.wait_for_alert(250)
            for a in self._ses.pop_alerts():
                try:
                    self._on_alert(a)
                except Exception:  # one bad alert must not kill completion tracking
                    log.exception("event=alert_handler_failed alert=%s", type(a).__name__)

    def _entry_for(self, a: lt.alert) -> _Entry | None:
        try:
            ih = str(a.handle.info_hashes().v1)
        except Exception:
            return None
        with self._lock:
            return self._entries.get(ih)

    def _on_alert(self, a: lt.alert) -> None:
        if isinstance(a, lt.torrent_finished_alert):
            if e := self._entry_for(a):
                e.finished.set()
        elif isinstance(a, lt.read_piece_alert):
            if e := self._entry_for(a):
                with self._lock:
                    waiters = e.piece_waiters.pop(a.piece, [])
                if a.error.value():
                    err = SwarmError(f"reading piece {a.piece} failed: {a.error.message()}")
                    for fut in waiters:
                        fut.set_exception(err)
                else:
                    data = bytes(a.buffer)
                    for fut in waiters:
                        fut.set_result(data)
        elif isinstance(a, lt.cache_flushed_alert):
            if e := self._entry_for(a):
                e.flushed.set()
        elif isinstance(a, lt.file_renamed_alert):
            if e := self._entry_for(a):
                e.renamed.set()
        elif isinstance(a, lt.file_rename_failed_alert):
            if e := self._entry_for(a):
                e.rename_error = a.error.message()
                e.renamed.set()
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            if e := self._entry_for(a):
                e.error = a.message()
                e.finished.set()
            log.warning("event=torrent_error message=%r", a.message())
        elif isinstance(a, lt.save_resume_data_alert):
            e = self._entry_for(a)
            if self._resume_dir:
                ih = str(a.handle.info_hashes().v1)
                tmp = self._resume_dir / f"{ih}.resume.tmp"
                tmp.write_bytes(lt.write_resume_data_buf(a.params))
                tmp.replace(self._resume_dir / f"{ih}.resume")
            if e:
                e.resumed.set()
        elif isinstance(a, lt.save_resume_data_failed_alert):
            if e := self._entry_for(a):
                e.resumed.set()
        elif isinstance(a, lt.tracker_error_alert):
            log.warning("event=tracker_error message=%r", redact(a.message()))
