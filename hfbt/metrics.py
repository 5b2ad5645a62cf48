"""Prometheus metrics for the tracker, the seed and the agent (prometheus_client).

Every process gets its own CollectorRegistry, never the library's global one: tests build several
tracker apps in one process, and the global registry refuses a second metric of the same name.
What a process already counts (libtorrent's byte totals, the peer table, the job table) is read at
scrape time by a custom collector instead of being mirrored into counters on every event; only what
nobody counts yet (announces and their latency, bytes fetched from the origin, job outcomes) is
incremented where it happens. No label carries a repo name, path, node name or token: the series
count stays bounded however many repos the cluster moves, and /metrics needs no authentication.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# `*_created` timestamps double the output and no hfbt dashboard needs them.
disable_created_metrics()
# Announces are answered from memory: sub-millisecond normally, tens of ms when SQLite is busy.
ANNOUNCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def serve(registry: CollectorRegistry, host: str, port: int) -> None:
    """prometheus_client's own HTTP server in a daemon thread (for processes without an HTTP API)."""
    start_http_server(port, addr=host, registry=registry)


class _Scrape(Collector):
    """Adapts a function returning metric families to a collector read at every scrape."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        return list(self._fn())


def swarm_families(prefix: str, totals: dict[str, int], torrents: Iterable) -> list[Metric]:
    """Bytes to/from peers, torrents, peers and rates of one libtorrent session, from its totals()
    and the status of each of its torrents (hfbt.swarm.Swarm / TorrentStatus)."""
    peers = seeds = down_rate = up_rate = 0
    for st in torrents:
        peers += st.peers
        seeds += st.seeds
        down_rate += st.download_rate
        up_rate += st.upload_rate
    return [
        CounterMetricFamily(
            f"{prefix}_peer_download_bytes", "Payload bytes received from peers.", value=totals["downloaded"]
        ),
        CounterMetricFamily(
            f"{prefix}_peer_upload_bytes", "Payload bytes sent to peers.", value=totals["uploaded"]
        ),
        GaugeMetricFamily(f"{prefix}_torrents", "Blob torrents in the session.", value=totals["torrents"]),
        GaugeMetricFamily(
            f"{prefix}_peers", "Peer connections, summed over torrents (one peer may count per blob).", peers
        ),
        GaugeMetricFamily(f"{prefix}_peer_seeds", "Connected peers that have the whole blob.", seeds),
        GaugeMetricFamily(f"{prefix}_download_rate_bytes", "Current payload download rate (B/s).", down_rate),
        GaugeMetricFamily(f"{prefix}_upload_rate_bytes", "Current payload upload rate (B/s).", up_rate),
    ]


# --- agent --------------------------------------------------------------------------------------


def agent_registry(
    totals: Callable[[], dict[str, int]], torrents: Callable[[], Iterable]
) -> CollectorRegistry:
    """totals, torrents: the agent node's (hfbt.agent.node.Node), read at every scrape."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Scrape(lambda: _agent_families(totals(), torrents())))
    return reg


def _agent_families(totals: dict[str, int], torrents: Iterable) -> list[Metric]:
    return [
        *swarm_families("hfbt_agent", totals, torrents),
        CounterMetricFamily(
            "hfbt_agent_integrity_failures",
            "Downloads whose bytes failed the final sha256/git-sha1 check (discarded, never published).",
            value=totals.get("integrity_failures", 0),
        ),
    ]


# --- seed ---------------------------------------------------------------------------------------


class SeedMetrics:
    def __init__(self, swarm) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.origin_bytes = Counter(
            "hfbt_seed_origin_download_bytes",
            "Bytes of verified blobs fetched from the origin (the one copy per revision).",
            registry=self.registry,
        )
        self.blobs_mirrored = Counter(
            "hfbt_seed_blobs_mirrored", "Blobs fetched from the origin and published.", registry=self.registry
        )
        self.jobs = Counter(
            "hfbt_seed_mirror_jobs", "Mirror jobs finished by this seed.", ["result"], registry=self.registry
        )
        for result in ("done", "failed"):
            self.jobs.labels(result)  # both series exist from the start, at 0
        self.running = Gauge(
            "hfbt_seed_mirror_jobs_running", "Mirror jobs running on this seed now.", registry=self.registry
        )
        self.piece_bytes = Counter(
            "hfbt_seed_piece_server_bytes",
            "Bytes the piece server sent: how=next (each piece's one hand-out), how=index (re-fetches).",
            ["how"],
            registry=self.registry,
        )
        for how in ("next", "index"):
            self.piece_bytes.labels(how)
        self.integrity_failures = Counter(
            "hfbt_seed_integrity_failures",
            "Blobs the origin sent whose bytes did not match its own sha256/git-sha1 (discarded).",
            registry=self.registry,
        )
        self.registry.register(_Scrape(lambda: swarm_families("hfbt_seed", swarm.totals(), swarm.statuses())))

    def piece_served(self, how: str, size: int) -> None:
        self.piece_bytes.labels(how).inc(size)

    def job_started(self) -> None:
        self.running.inc()

    def job_finished(self, ok: bool) -> None:
        self.running.dec()
        self.jobs.labels("done" if ok else "failed").inc()

    def blob_fetched(self, size: int) -> None:
        self.origin_bytes.inc(size)
        self.blobs_mirrored.inc()

    def integrity_failed(self) -> None:
        self.integrity_failures.inc()


# --- tracker ------------------------------------------------------------------------------------


class TrackerMetrics:
    """Announce counts and latency (from an ASGI middleware, so the announce route stays as it is),
    plus peers, torrents and mirror jobs read from the tracker's own state at scrape time."""

    def __init__(self, peers, registry, job_states: Iterable[str], seed_timeout: float) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.announces = Counter(
            "hfbt_tracker_announces",
            "Announce requests, by BitTorrent event and outcome (ok, or failed: refused or invalid).",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hfbt_tracker_announce_seconds",
            "Time to answer an announce.",
            buckets=ANNOUNCE_BUCKETS,
            registry=self.registry,
        )
        self.scrapes = Counter("hfbt_tracker_scrapes", "BEP 48 scrape requests.", registry=self.registry)
        self.refused = Counter(
            "hfbt_tracker_refused_registrations",
            "Registrations refused because they would change a registered commit or a file's torrent.",
            ["what"],
            registry=self.registry,
        )
        self.denied = Counter(
            "hfbt_tracker_denied",
            "Requests refused for their credential, role, ticket or Hub access (reason: a fixed word).",
            ["reason"],
            registry=self.registry,
        )
        self._peers = peers
        self._db = registry
        self._job_states = tuple(job_states)
        self._seed_timeout = seed_timeout
        self.registry.register(_Scrape(self._state))

    def observe_request(self, path: str, query: bytes, status: int, seconds: float) -> None:
        """Called by the tracker's request middleware once per request: counts and times announces."""
        if path.startswith("/scrape"):
            self.scrapes.inc()
        elif path.startswith("/announce"):
            self.latency.observe(seconds)
            self.announces.labels(_event(query), _outcome(status)).inc()

    def _state(self) -> Iterable[Metric]:
        now = time.time()
        seeders = leechers = 0
        swarms = self._peers.swarms()
        for c in swarms.values():
            seeders += c.complete
            leechers += c.incomplete
        peers = GaugeMetricFamily("hfbt_tracker_peers", "Live peers in all swarms.", labels=["state"])
        peers.add_metric(["seeder"], seeders)
        peers.add_metric(["leecher"], leechers)
        yield peers
        yield GaugeMetricFamily("hfbt_tracker_swarms", "Torrents with at least one live peer.", len(swarms))
        yield GaugeMetricFamily(
            "hfbt_tracker_torrents", "Blob torrents registered.", self._db.torrent_count()
        )
        counts = self._db.job_counts()
        jobs = GaugeMetricFamily("hfbt_tracker_mirror_jobs", "Mirror jobs by state.", labels=["state"])
        for state in self._job_states:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        alive = sum(1 for s in self._db.seeds() if s.last_seen >= now - self._seed_timeout)
        yield GaugeMetricFamily("hfbt_tracker_seeds", "Registered seeds alive (heard from recently).", alive)


def _event(query: bytes) -> str:
    # Only the four BEP 3 values become a label: anything else a client sends would add series.
    ev = parse_qs(query.decode("latin-1")).get("event", [""])[0]
    return ev if ev in ("started", "completed", "stopped") else "none"


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "failed"
