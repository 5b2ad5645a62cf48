-- wrk script for bench/tracker.py: one BEP 3 announce per request, built in request().
--
--   wrk -s bench/tracker_load.lua URL -- DATAFILE PHASE SEED
--
-- DATAFILE (written by bench/tracker.py), one record a line:
--   H <percent-encoded info_hash>              M of them, torrent 0..M-1
--   P <percent-encoded peer_id> <port> <left>  K of them, node 0..K-1
--   T <ticket>                                 N*M of them (closed mode): node n's ticket for torrent m
--                                              is record n*M+m; simulated node k uses real node k % N
-- PHASE: "warm" walks the (node, torrent) pairs in order, torrent fastest, so every swarm grows at the
-- same pace; "rand" picks a uniformly random pair per request.
-- done() prints one line "WRKJSON {...}" that bench/tracker.py parses.

local hashes, peers, tickets = {}, {}, {}
local M, K, N = 0, 0, 0
local phase = "rand"
local counter = 0
local nthreads = 1
-- per thread, read back in done() with thread:get()
bodies, failures, peers_sum = 0, 0, 0
first_failure = ""

local threads = {}

function setup(thread)
   -- runs in the main state before each thread's init(); `tid` becomes a global of that thread
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   for line in io.lines(args[1]) do
      local kind, rest = line:sub(1, 1), line:sub(3)
      if kind == "H" then
         table.insert(hashes, rest)
      elseif kind == "P" then
         local id, port, left = rest:match("^(%S+) (%d+) (%d+)$")
         table.insert(peers, { id, port, left })
      elseif kind == "T" then
         table.insert(tickets, rest)
      end
   end
   M, K = #hashes, #peers
   N = (#tickets > 0) and (#tickets / M) or 0
   phase = args[2] or "rand"
   nthreads = tonumber(args[4] or "1")
   math.randomseed(tonumber(args[3] or "1") + 7919 * tid)
end

function request()
   local k, m
   if phase == "warm" then
      -- threads interleave: thread t takes pairs t, t+T, t+2T, ...
      local idx = counter * nthreads + tid
      counter = counter + 1
      m = idx % M
      k = math.floor(idx / M) % K
   else
      k = math.random(0, K - 1)
      m = math.random(0, M - 1)
   end
   local p = peers[k + 1]
   local path = "/announce"
   if N > 0 then
      path = "/announce/" .. tickets[(k % N) * M + m + 1]
   end
   path = path .. "?info_hash=" .. hashes[m + 1] .. "&peer_id=" .. p[1] .. "&port=" .. p[2]
      .. "&uploaded=0&downloaded=0&left=" .. p[3] .. "&numwant=50&compact=1"
   return wrk.format("GET", path)
end

function response(status, headers, body)
   bodies = bodies + 1
   if status >= 300 or body:find("failure reason", 1, true) then
      if body:find("failure reason", 1, true) then
         failures = failures + 1
      end
      if first_failure == "" then
         first_failure = status .. " " .. body:sub(1, 200)
      end
   end
   -- compact IPv4 peers: 6 bytes each
   local n = body:match("5:peers(%d+):")
   if n then
      peers_sum = peers_sum + math.floor(tonumber(n) / 6)
   end
end

function done(summary, latency, requests)
   local b, f, ps, first = 0, 0, 0, ""
   for _, t in ipairs(threads) do
      if first == "" then
         first = t:get("first_failure")
      end
      b = b + t:get("bodies")
      f = f + t:get("failures")
      ps = ps + t:get("peers_sum")
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
         .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
         .. '"bodies":%d,"failures":%d,"peers_sum":%d,"first_failure":"%s"}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      b, f, ps, first:gsub("[^%w%s%.:_%-]", "?")))
end
