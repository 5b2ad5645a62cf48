"""The peer table in Redis, shared by every tracker replica (`--peer-store redis://host:6379/0`).

One swarm is five keys under `hfbt:peers:<info_hash hex>:`: `s` and `l` (hashes peer_id → peer, the
seeders and the leechers), `o` (peer_id → owner node and address), `a` (address → peer_id, to find a
restarted client's old entry) and `x` (a sorted set peer_id → expiry). `hfbt:peers:swarms` lists the
swarms. An announce is one round trip: a Lua script refreshes the peer, expires a bounded number of
stale ones, and returns HRANDFIELD samples and the counts, so its cost does not grow with the swarm and
two replicas can never interleave half-done updates of one swarm.
"""

from __future__ import annotations

import redis

from tracker.peerstore.peer import SAMPLE_PER_KIND, Peer, PeerIdTaken, PeerStoreError, Sample, SwarmCounts

PREFIX = "hfbt:peers:"
SWARMS = PREFIX + "swarms"
# Stale entries an announce cleans up on its way (the housekeeping pass gets the rest).
EXPIRE_PER_CALL = 16
SOCKET_TIMEOUT_S = 2.0

# Shared by every script: the swarm's first five keys, who owns an entry, dropping one entry with its
# address index, and dropping the entries past their expiry (at most `limit`).
_COMMON = """
local s, l, o, a, x = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local function node_of(own)
  return string.match(own, '^([^\\n]*)')
end

local function drop(id)
  local own = redis.call('HGET', o, id)
  redis.call('HDEL', s, id)
  redis.call('HDEL', l, id)
  redis.call('HDEL', o, id)
  redis.call('ZREM', x, id)
  if own then
    local at = string.match(own, '\\n(.*)$')
    if at and redis.call('HGET', a, at) == id then redis.call('HDEL', a, at) end
  end
end

local function expire_before(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', x, '-inf', '(' .. now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do drop(id) end
  return #ids
end
"""

# KEYS: s l o a x d swarms. ARGV: peer_id value owner addr seeder expires now completed sample limit
# keep_s ih. owner = node .. "\n" .. addr.
_ANNOUNCE = (
    _COMMON
    + """
local d, swarms = KEYS[6], KEYS[7]
local pid, value, owner, addr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seeder, expires, now = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local node = node_of(owner)

local old = redis.call('HGET', o, pid)
if old and node_of(old) ~= node then
  local exp = redis.call('ZSCORE', x, pid)
  if exp and tonumber(exp) >= now then return {0} end
end
local there = redis.call('HGET', a, addr)
if there and there ~= pid then
  local own = redis.call('HGET', o, there)
  if own and node_of(own) == node then drop(there) end
end
if old and old ~= owner then drop(pid) end
if seeder then
  redis.call('HDEL', l, pid)
  redis.call('HSET', s, pid, value)
else
  redis.call('HDEL', s, pid)
  redis.call('HSET', l, pid, value)
end
redis.call('HSET', o, pid, owner)
redis.call('HSET', a, addr, pid)
redis.call('ZADD', x, expires, pid)
if ARGV[8] == '1' then redis.call('INCR', d) end
expire_before(now, tonumber(ARGV[10]))
local keep = tonumber(ARGV[11])
for _, k in ipairs({s, l, o, a, x, d}) do redis.call('EXPIRE', k, keep, 'GT') end
for _, k in ipairs({s, l, o, a, x, d}) do redis.call('EXPIRE', k, keep, 'NX') end
redis.call('SADD', swarms, ARGV[12])
local n = tonumber(ARGV[9])
return {1, redis.call('HRANDFIELD', s, n, 'WITHVALUES'), redis.call('HRANDFIELD', l, n, 'WITHVALUES'),
        redis.call('HLEN', s), redis.call('HLEN', l), redis.call('GET', d) or '0'}
"""
)

# KEYS: s l o a x. ARGV: peer_id node
_REMOVE = (
    _COMMON
    + """
local own = redis.call('HGET', o, ARGV[1])
if not own or node_of(own) ~= ARGV[2] then return 0 end
drop(ARGV[1])
return 1
"""
)

# KEYS: s l o a x. ARGV: now limit
_EXPIRE = (
    _COMMON
    + """
return expire_before(tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)


def _keys(info_hash: bytes) -> list[str]:
    base = PREFIX + info_hash.hex() + ":"
    return [base + k for k in ("s", "l", "o", "a", "x", "d")]


def _encode(p: Peer) -> bytes:
    fields = (p.ip, str(p.port), str(p.left), p.role, p.node, repr(p.last_seen), repr(p.ttl), p.zone)
    return "\t".join(fields).encode()


def _decode(peer_id: bytes, value: bytes) -> Peer | None:
    """A stored peer, or None for one that does not parse (never trusted blindly: it is shared state)."""
    try:
        ip, port, left, role, node, last_seen, ttl, zone = value.decode().split("\t")
        return Peer(peer_id, ip, int(port), int(left), float(last_seen), role, node, float(ttl), zone)
    except ValueError:
        return None


def _pairs(flat: list) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


class RedisPeerStore:
    def __init__(self, url: str, password: str | None = None, sample: int = SAMPLE_PER_KIND) -> None:
        self._redis = redis.Redis.from_url(
            url, password=password, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._announce = self._redis.register_script(_ANNOUNCE)
        self._remove = self._redis.register_script(_REMOVE)
        self._expire = self._redis.register_script(_EXPIRE)
        self._sample = sample

    def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            # The message names the failure, never the URL (it may carry a password).
            raise PeerStoreError(f"peer store unavailable: {type(e).__name__}") from None

    def announce(self, info_hash: bytes, peer: Peer, completed: bool, now: float) -> Sample:
        addr = f"{peer.ip}:{peer.port}"
        args = [
            peer.peer_id,
            _encode(peer),
            f"{peer.node}\n{addr}",
            addr,
            "1" if peer.seeder else "0",
            repr(now + peer.ttl),
            repr(now),
            "1" if completed else "0",
            self._sample,
            EXPIRE_PER_CALL,
            # Keys outlive their last peer by a margin, so an abandoned swarm vanishes by itself.
            int(peer.ttl) + 60,
            info_hash.hex(),
        ]
        out = self._call(self._announce, keys=[*_keys(info_hash), SWARMS], args=args)
        if out[0] == 0:
            raise PeerIdTaken(peer.peer_id.hex())
        _, seeders, leechers, n_seeders, n_leechers, downloaded = out
        peers = [_decode(pid, v) for pid, v in _pairs(seeders) + _pairs(leechers)]
        live = [p for p in peers if p is not None and p.live(now)]
        return Sample(live, SwarmCounts(int(n_seeders), int(n_leechers), int(downloaded)))

    def remove(self, info_hash: bytes, peer_id: bytes, node: str = "") -> None:
        self._call(self._remove, keys=_keys(info_hash)[:5], args=[peer_id, node])

    def counts(self, info_hash: bytes) -> SwarmCounts:
        return self._counts([info_hash])[info_hash]

    def _counts(self, hashes: list[bytes]) -> dict[bytes, SwarmCounts]:
        pipe = self._redis.pipeline(transaction=False)
        for h in hashes:
            seeders, leechers, _, _, _, downloaded = _keys(h)
            pipe.hlen(seeders)
            pipe.hlen(leechers)
            pipe.get(downloaded)
        flat = self._call(pipe.execute)
        return {
            h: SwarmCounts(int(flat[3 * i]), int(flat[3 * i + 1]), int(flat[3 * i + 2] or 0))
            for i, h in enumerate(hashes)
        }

    def _swarm_hashes(self) -> list[bytes]:
        out = []
        for raw in self._call(self._redis.smembers, SWARMS):
            try:
                h = bytes.fromhex(raw.decode())
            except ValueError:
                continue
            if len(h) == 20:
                out.append(h)
        return out

    def swarms(self) -> dict[bytes, SwarmCounts]:
        counts = self._counts(self._swarm_hashes())
        empty = [h for h, c in counts.items() if c.complete + c.incomplete == 0]
        if empty:
            self._call(self._redis.srem, SWARMS, *[h.hex() for h in empty])
        return {h: c for h, c in counts.items() if c.complete + c.incomplete}

    def expire(self, now: float) -> int:
        """Housekeeping: any replica may run it; the script makes concurrent passes harmless."""
        dropped = 0
        for h in self._swarm_hashes():
            dropped += int(self._call(self._expire, keys=_keys(h)[:5], args=[repr(now), 1000]))
        return dropped

    def close(self) -> None:
        self._redis.close()
