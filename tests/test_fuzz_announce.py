"""Announce and scrape fuzzing against the real tracker process on 127.0.0.1.

Hypothesis writes raw query strings (binary info_hash/peer_id percent-encoded, boundary, huge, negative
and non-ASCII integers, odd events, duplicate parameters, `ip=` with zone ids and junk, compact=0/1,
very long queries, invalid percent-escapes) and odd paths; every answer must be below 500 and the
tracker must stay healthy. A registered torrent makes part of the announces store peers, so the
response builders (compact and not) run on what earlier cases stored.

The tracker is closed, as in production: the announce/scrape paths carry a node's real ticket for the
registered torrent (`bittorrent_paths`), so the fuzz reaches the swarm code behind the ticket check.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

import httpx
import pytest
from fastbencode import bdecode, bencode

from hfbt.config import TrackerConfig
from hfbt.manifest import PIECE_LENGTH
from tests.test_tracker_hardening import TrackerProcess, start_tracker_process

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANNOUNCE_CASES = 7_000
SCRAPE_CASES = 3_500
TARGET_CASES = 10_000
HEALTH_EVERY = 1_000
OPERATOR, SEED = "fuzz-operator-" + "o" * 16, "fuzz-seed-" + "s" * 16
BUDGET_S = 90.0  # the whole run measures ~25-35 s on 2 cores; this only stops a runaway


@dataclass
class Target:
    tracker: TrackerProcess
    client: httpx.Client
    announce: str  # path prefix, e.g. "/announce" or "/announce/<ticket>"
    scrape: str
    info_hash: bytes  # a registered torrent: announces for it store peers
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def get(self, raw_path: bytes) -> httpx.Response:
        url = httpx.URL(self.tracker.url).copy_with(raw_path=raw_path)
        r = self.client.get(url)
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        return r

    def healthy(self) -> None:
        start = time.monotonic()
        r = self.client.get(f"{self.tracker.url}/healthz")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert time.monotonic() - start < 2
        assert self.tracker.proc.poll() is None


def _blob_torrent(data: bytes, name: str) -> bytes:
    pieces = b"".join(
        hashlib.sha1(data[i : i + PIECE_LENGTH]).digest() for i in range(0, len(data), PIECE_LENGTH)
    )
    info = {b"length": len(data), b"name": name.encode(), b"piece length": PIECE_LENGTH, b"pieces": pieces}
    info[b"private"] = 1
    return bencode({b"info": info})


def register_torrent(c: httpx.Client) -> bytes:
    """One revision with one LFS file and its torrent; returns the torrent's info-hash."""
    data = b"fuzz" * 1000
    etag = hashlib.sha256(data).hexdigest()
    commit = "f" * 40
    entry = {"path": "w.safetensors", "size": len(data), "etag": etag, "sha256": etag}
    manifest = {"repo_type": "model", "repo_id": "fuzz/target", "commit": commit, "files": [entry]}
    r = c.post("/api/v1/revisions", json={"job_id": None, "ref": "main", "manifest": manifest})
    assert r.status_code == 200, r.text
    body = {
        "repo_type": "model",
        "repo_id": "fuzz/target",
        "commit": commit,
        "path": "w.safetensors",
        "torrent": base64.b64encode(_blob_torrent(data, etag)).decode(),
    }
    r = c.post("/api/v1/torrents", json=body)
    assert r.status_code == 200, r.text
    return bytes.fromhex(r.json()["info_hash"])


def bittorrent_paths(c: httpx.Client, info_hash: bytes) -> tuple[str, str]:
    """The announce and scrape path prefixes of a node holding a ticket for `info_hash`."""
    r = c.post("/api/v1/nodes", json={"name": "fuzzer"}, headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 201, r.text
    node = {"Authorization": f"Bearer {r.json()['token']}"}
    ticket = c.get(f"/api/v1/tickets/{info_hash.hex()}", headers=node).json()["ticket"]
    return f"/announce/{ticket}", f"/scrape/{ticket}"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # trust_announce_ip: ip= is then parsed and stored, the riskier path (zone ids, junk).
    cfg = {"trust_announce_ip": True} if _has_field("trust_announce_ip") else {}
    env = {"HFBT_OPERATOR_TOKEN": OPERATOR, "HFBT_SEED_TOKEN": SEED}
    tracker = start_tracker_process(tmp, cfg=cfg, env=env)
    client = httpx.Client(base_url=tracker.url, timeout=10, headers={"Authorization": f"Bearer {SEED}"})
    try:
        info_hash = register_torrent(client)
        announce, scrape = bittorrent_paths(client, info_hash)
        yield Target(tracker, client, announce, scrape, info_hash)
    finally:
        client.close()
        tracker.stop()
    log = tracker.log_text()
    assert "Traceback" not in log and "event=internal_error" not in log, log[-5000:]


def _has_field(name: str) -> bool:
    return name in TrackerConfig.__dataclass_fields__


# -- strategies: raw query bytes -----------------------------------------------------------------------


def enc(raw: bytes) -> bytes:
    return quote_from_bytes(raw, safe="").encode()


# Percent-escapes that are not escapes, and bytes the parser must not choke on.
BAD_ESCAPES = [b"%", b"%z", b"%zz", b"%4", b"%%", b"%G0", b"%u00e9", b"%C3", b"%C3%", b"%00", b"%FF%FE"]

ints = st.one_of(
    st.integers(min_value=0, max_value=70000).map(lambda n: str(n).encode()),
    st.sampled_from([0, 1, 65535, 65536, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]).map(
        lambda n: str(n).encode()
    ),
    st.integers(min_value=-(2**70), max_value=-1).map(lambda n: str(n).encode()),
    st.sampled_from(
        [
            "",
            "+1",
            " 1",
            "1 ",
            "1_0",
            "0x10",
            "1e3",
            "1.5",
            "nan",
            "inf",
            "\u00b2",
            "1\u00b2",
            "\u0663",
            "\uff18",
        ]
    ).map(lambda s: enc(s.encode())),
    st.sampled_from(["9" * 19, "9" * 20, "0" * 400, "1" * 5000]).map(str.encode),
    st.sampled_from(BAD_ESCAPES),
)

hash20 = st.one_of(
    st.binary(min_size=20, max_size=20).map(enc),
    st.sampled_from([b"\x00" * 20, b"\xff" * 20, b"%&=+#? /\\\x7f\x80" * 2]).map(lambda b: enc(b[:20])),
    st.binary(min_size=0, max_size=40).map(enc),  # wrong lengths
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=20, max_size=20).map(str.encode),
    st.sampled_from(BAD_ESCAPES).map(lambda b: b * 7),
)

events = st.one_of(
    st.sampled_from(["", "started", "completed", "stopped", "paused", "STARTED", "start", "empty"]).map(
        str.encode
    ),
    st.text(max_size=30).map(lambda s: enc(s.encode("utf-8", "surrogatepass"))),
)

ips = st.one_of(
    st.ip_addresses().map(lambda a: enc(str(a).encode())),
    st.sampled_from(
        [
            "fe80::1%eth0",
            "fe80::1%\u00fc",
            "fe80::1%",
            "::1%1",
            "[::1]",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "010.1.2.3",
            "1.2.3",
            "1.2.3.4.5",
            "localhost",
            "evil.example.com",
            "\u0661.2.3.4",
            " 10.0.0.1",
            "10.0.0.1\n",
            "::ffff:10.0.0.9",
            "",
        ]
    ).map(lambda s: enc(s.encode())),
    st.binary(max_size=50).map(enc),
    # The review's case, escaped exactly as it sent it, and a zone id ipaddress keeps: both weighted up.
    st.sampled_from([b"fe80::1%25%C3%BC", b"fe80%3A%3A1%25eth0", b"fe80::2%25%E2%98%83"]),
)

flags = st.one_of(st.sampled_from([b"0", b"1", b"0", b"1", b"", b"2", b"true", b"-1", b"01"]), ints)
roles = st.sampled_from([b"", b"seed", b"pieces", b"SEED", b"x" * 300, b"%zz"])
keys = st.one_of(
    st.sampled_from([b"info_hash", b"peer_id", b"port", b"left", b"event", b"ip", b"compact", b"numwant"]),
    st.binary(max_size=12).map(enc),
    st.sampled_from([b"", b"%zz", b"%FF", b"info%5Fhash", b"INFO_HASH", b"peer_id[]"]),
)
junk_values = st.one_of(st.binary(max_size=40).map(enc), st.sampled_from(BAD_ESCAPES), ints)


REQUIRED = (b"info_hash", b"peer_id", b"port", b"uploaded", b"downloaded", b"left")
BAD_REQUIRED = {b"info_hash": hash20, b"peer_id": hash20}  # the integers: `ints`
OPTIONAL = {
    b"event": events,
    b"numwant": ints,
    b"compact": flags,
    b"no_peer_id": flags,
    b"ip": ips,
    b"hfbt": roles,
    b"key": junk_values,
    b"trackerid": junk_values,
    b"corrupt": ints,
}
OPTIONAL_NAMES = sorted(OPTIONAL)


@st.composite
def announce_queries(draw: st.DrawFn, registered: bytes) -> bytes:
    """A well-formed announce with a few fields mutated, so both refusals and stored peers happen.

    Few draws per case on purpose: hypothesis costs ~0.05 ms a draw, and 10,000 cases must fit a minute.
    """
    # Bit masks rather than st.sets: one draw each instead of one per element.
    mutate_mask = draw(st.integers(0, 2 ** len(REQUIRED) - 1))
    mutated = {k for i, k in enumerate(REQUIRED) if mutate_mask >> i & 1} if mutate_mask % 3 == 0 else set()
    present_mask = draw(st.integers(0, 2 ** len(OPTIONAL_NAMES) - 1))
    present = {k for i, k in enumerate(OPTIONAL_NAMES) if present_mask >> i & 1}
    port = draw(st.integers(1, 65535))
    good = {
        b"info_hash": enc(registered),
        # A small pool of peer ids keeps the swarm small, so later announces get these peers back.
        b"peer_id": enc(b"-FZ0001-%012d" % draw(st.integers(0, 63))),
        b"port": b"%d" % port,
        b"uploaded": b"0",
        b"downloaded": b"0",
        # Seeders and leechers both: a seeder is handed only leechers, so all-seeders would get no peers.
        b"left": b"0" if port % 3 == 0 else b"100",
    }
    params = [(k, draw(BAD_REQUIRED.get(k, ints)) if k in mutated else good[k]) for k in REQUIRED]
    params += [(k, draw(OPTIONAL[k])) for k in OPTIONAL_NAMES if k in present]
    shape = draw(st.integers(0, 99))
    if shape < 8:
        params.pop(shape % len(params))  # a parameter missing
    elif shape < 20:
        params.append((params[shape % len(params)][0], draw(junk_values)))  # a duplicate, first one counts
    elif shape < 28:
        params.append((draw(keys), draw(junk_values)))  # parameters no tracker reads
    elif shape < 40:
        params = draw(st.permutations(params))
    query = b"&".join(k if shape == 40 + i else k + b"=" + v for i, (k, v) in enumerate(params))
    if 50 <= shape < 54:
        query += b"&pad=" + b"A" * draw(st.integers(7000, 12000))  # around the query limit
    elif 54 <= shape < 58:
        query = draw(st.sampled_from([b"", b"&&&", b"=", b"==&==", b"%", b"?", b"&=&=%zz"])) + query
    return query


@st.composite
def scrape_queries(draw: st.DrawFn, registered: bytes) -> bytes:
    shape = draw(st.integers(0, 99))
    hashes = [enc(registered)] if shape % 2 else []
    hashes += draw(st.lists(hash20, max_size=3))
    if shape < 4:
        hashes += [enc(bytes([i % 256]) * 20) for i in range(draw(st.integers(990, 1010)))]
    if 10 <= shape < 20:
        hashes.append(draw(keys) + b"=" + draw(junk_values))
    return b"&".join(h if b"=" in h else b"info_hash=" + h for h in hashes)


ODD_SUFFIXES = [
    b"",
    b"/",
    b"/x",
    b"/%2e%2e",
    b"/..%2f..%2fetc",
    b"/%00",
    b"/%zz",
    b"/%C3%BC",
    b"/" + b"A" * 600,
    b"/a/b/c",
    b"/node.%ff",
    b"//",
]


def _path(prefix: str, suffix: bytes) -> bytes:
    return prefix.encode() + suffix


def _check_bencoded(r: httpx.Response, ok_key: bytes) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code == 200:
        body = bdecode(r.content)
        assert ok_key in body, body
    elif r.headers.get("content-type", "").startswith("text/plain") and r.content.startswith(b"d"):
        assert b"failure reason" in bdecode(r.content)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        # No shrinking: the tracker keeps state (the swarm), so a smaller replay would not fail the same way.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def test_fuzz_announce_and_scrape_never_5xx(target: Target) -> None:
    t = target
    started = time.monotonic()
    counted = {"announce": 0, "scrape": 0}

    def tick(kind: str) -> None:
        counted[kind] += 1
        total = counted["announce"] + counted["scrape"]
        if total % HEALTH_EVERY == 0:
            t.healthy()
        assert time.monotonic() - started < BUDGET_S, f"fuzzing is too slow: {counted} in {BUDGET_S} s"

    # Odd paths on about one request in four; the rest go to the node's own path.
    suffixes = st.sampled_from([b""] * 3 * len(ODD_SUFFIXES) + ODD_SUFFIXES)

    @_settings(ANNOUNCE_CASES)
    @given(query=announce_queries(t.info_hash), suffix=suffixes)
    def announces(query: bytes, suffix: bytes) -> None:
        r = t.get(_path(t.announce, suffix) + b"?" + query)
        _check_bencoded(r, b"interval")
        tick("announce")

    @_settings(SCRAPE_CASES)
    @given(query=scrape_queries(t.info_hash), suffix=suffixes)
    def scrapes(query: bytes, suffix: bytes) -> None:
        path = _path(t.scrape, suffix)
        r = t.get(path + b"?" + query if query else path)
        _check_bencoded(r, b"files")
        tick("scrape")

    announces()
    scrapes()
    elapsed = time.monotonic() - started
    total = counted["announce"] + counted["scrape"]
    print(
        f"fuzz: {counted} = {total} requests in {elapsed:.1f} s; statuses {dict(sorted(t.statuses.items()))}"
    )
    assert total >= TARGET_CASES, counted
    assert max(t.statuses) < 500, t.statuses
    assert t.statuses.get(200, 0) > 500, "too few announces got through: the fuzzer is not reaching the swarm"
    t.healthy()


def test_the_reviews_zone_id_announce_does_not_break_the_swarm(target: Target) -> None:
    t = target
    base = b"info_hash=" + enc(t.info_hash) + b"&port=7001&left=5&uploaded=0&downloaded=0&compact=0"
    for i, ip in enumerate([b"fe80::1%25%C3%BC", b"fe80::1%25eth0", b"10.9.8.7", b"%zz"]):
        r = t.get(_path(t.announce, b"?") + base + b"&peer_id=" + enc(b"-ZONE00-%012d" % i) + b"&ip=" + ip)
        assert r.status_code < 500
    # Every later non-compact announce in that swarm still answers, with usable addresses only.
    for compact in (b"0", b"1"):
        q = base.replace(b"compact=0", b"compact=" + compact) + b"&peer_id=" + enc(b"-LATER0-000000000000")
        r = t.get(_path(t.announce, b"?") + q)
        assert r.status_code == 200, r.content
        body = bdecode(r.content)
        if compact == b"0":
            assert all(b"%" not in p[b"ip"] for p in body[b"peers"])
    t.healthy()


def test_the_tracker_log_is_quiet_after_fuzzing(target: Target) -> None:
    log = target.tracker.log_text()
    assert "Traceback" not in log and "event=internal_error" not in log, log[-5000:]
