"""The emulated network: one network namespace per process on a private bridge, shaped with tc HTB.

    hfbtb-<pid>-sw       the switch: bridge br0 and the outer end of every endpoint's veth
    hfbtb-<pid>-origin   10.77.0.2   link B       hfbtb-<pid>-tracker  10.77.0.3   link U
    hfbtb-<pid>-seed     10.77.0.4   link U       hfbtb-<pid>-nNN      10.77.0.(10+NN)  link U

With zones=2 the switch holds two bridges, zone a (origin, tracker, seed, odd nodes) and zone b (even
nodes), joined by one veth pair shaped to zone_mbit each way: the link between two sites or racks.

Every endpoint's link is capped both ways: its upload on its own eth0 (egress), its download on the
switch port that sends to it (egress in the switch namespace). This kernel has HTB and TBF but neither
netem nor fq/sfq, so there is no latency emulation and no flow-fair leaf qdisc: under each link's HTB
class sits one child class per other endpoint (matched by address), so concurrent peers share a link
fairly instead of one TCP flow starving the others.

Nothing is created outside namespaces named `hfbtb-<pid>-*`, the addresses exist only inside them, and
deleting the namespaces removes every bridge and veth with them (the switch namespace owns the bridge
and the outer veth ends). `cleanup_stale()` removes leftovers of runs whose process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger("bench.net")

PREFIX = "hfbtb-"
SUBNET = "10.77.0"
LEAF_PACKETS = 100  # pfifo limit per peer class: ~12 ms at 100 Mbit, bounded queueing delay
QUANTUM = 3028  # two full frames per DRR round for every peer class: equal shares


class NetError(RuntimeError):
    pass


@dataclass
class Endpoint:
    name: str  # origin, tracker, seed, n01 ...
    ip: str
    mbit: float  # link rate, both directions
    ns: str = ""
    port: str = ""  # the veth end in the switch namespace
    zone: str = "a"

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


def netns_available() -> tuple[bool, str]:
    """(usable, why not): root, the ip/tc tools, and a namespace that can actually be created."""
    if os.geteuid() != 0:
        return False, "not root (network namespaces and tc need CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return False, f"`{tool}` not found (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except NetError as e:
        return False, f"cannot create a network namespace: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Delete hfbtb-<pid>-* namespaces whose pid is no longer running (a run that was SIGKILLed)."""
    removed = []
    for ns in list_namespaces():
        m = re.match(rf"^{re.escape(PREFIX)}(\d+)-", ns)
        if not m or _alive(int(m.group(1))):
            continue
        _kill_ns_pids(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        removed.append(ns)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_pids(ns: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Network:
    """The namespaces, bridge, veths and HTB classes of one run. Use as a context manager."""

    origin_mbit: float
    node_mbit: float
    nodes: int
    mtu: int = 1500
    zones: int = 1  # 1 or 2
    zone_mbit: float = 0.0  # the link between the zones (zones=2)
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        eps = [
            Endpoint("origin", f"{SUBNET}.2", self.origin_mbit),
            Endpoint("tracker", f"{SUBNET}.3", self.node_mbit),
            Endpoint("seed", f"{SUBNET}.4", self.node_mbit),
        ]
        if self.nodes > 200:
            raise NetError("at most 200 nodes fit the /24")
        eps += [Endpoint(f"n{i:02d}", f"{SUBNET}.{10 + i}", self.node_mbit) for i in range(1, self.nodes + 1)]
        if self.zones not in (1, 2):
            raise NetError("zones: 1 or 2")
        for i, ep in enumerate(eps):
            ep.ns = f"{self.tag}-{ep.name}"
            ep.port = f"p{i}"
            if self.zones == 2 and ep.name.startswith("n") and int(ep.name[1:]) % 2 == 0:
                ep.zone = "b"
        self.endpoints = {ep.name: ep for ep in eps}
        self.switch = f"{self.tag}-sw"

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- build -----------------------------------------------------------------------------------

    def create(self) -> None:
        self._add_ns(self.switch)
        sw = ["ip", "-n", self.switch]
        _run([*sw, "link", "set", "lo", "up"])
        _run([*sw, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge"])
        _run([*sw, "link", "set", "br0", "up"])
        if self.zones == 2:
            _run([*sw, "link", "add", "br1", "mtu", str(self.mtu), "type", "bridge"])
            _run([*sw, "link", "set", "br1", "up"])
            _run([*sw, "link", "add", "za", "mtu", str(self.mtu), "type", "veth", "peer", "name", "zb"])
            _run([*sw, "link", "set", "za", "master", "br0", "up"])
            _run([*sw, "link", "set", "zb", "master", "br1", "up"])
            for dev in ("za", "zb"):  # each end's egress: one direction of the inter-zone link
                self._htb(["ip", "netns", "exec", self.switch], dev, self.zone_mbit, [])
        for ep in self.endpoints.values():
            self._add_ns(ep.ns)
            ns = ["ip", "-n", ep.ns]
            _run(
                ["ip", "link", "add", ep.port, "netns", self.switch, "mtu", str(self.mtu), "type", "veth"]
                + ["peer", "name", "eth0", "netns", ep.ns, "mtu", str(self.mtu)]
            )
            bridge = "br1" if ep.zone == "b" else "br0"
            _run([*sw, "link", "set", ep.port, "master", bridge, "up"])
            _run([*ns, "link", "set", "lo", "up"])
            _run([*ns, "addr", "add", f"{ep.ip}/24", "dev", "eth0"])
            _run([*ns, "link", "set", "eth0", "up"])
        for ep in self.endpoints.values():
            self.shape(ep)

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)

    def shape(self, ep: Endpoint, mbit: float | None = None) -> None:
        """(Re)build the endpoint's HTB trees: upload on its eth0, download on its switch port."""
        rate = mbit if mbit is not None else ep.mbit
        others = [o for o in self.endpoints.values() if o is not ep]
        self._htb(["ip", "netns", "exec", ep.ns], "eth0", rate, [(o.ip, "dst") for o in others])
        self._htb(["ip", "netns", "exec", self.switch], ep.port, rate, [(o.ip, "src") for o in others])

    def _htb(self, pre: list[str], dev: str, mbit: float, peers: list[tuple[str, str]]) -> None:
        tc = [*pre, "tc"]
        subprocess.run([*tc, "qdisc", "del", "dev", dev, "root"], capture_output=True)
        rate = f"{int(mbit * 1000)}kbit"
        share = f"{max(8, int(mbit * 1000 / (len(peers) + 1)))}kbit"
        batch = [
            f"qdisc add dev {dev} root handle 1: htb default 9",
            f"class add dev {dev} parent 1: classid 1:1 htb rate {rate} ceil {rate}",
            # non-IP traffic (ARP) and anything unmatched
            f"class add dev {dev} parent 1:1 classid 1:9 htb rate {share} ceil {rate} quantum {QUANTUM}",
            f"qdisc add dev {dev} parent 1:9 pfifo limit {LEAF_PACKETS}",
        ]
        for i, (ip, direction) in enumerate(peers):
            cid = f"1:{i + 10:x}"
            batch += [
                f"class add dev {dev} parent 1:1 classid {cid} htb rate {share} ceil {rate}"
                f" quantum {QUANTUM}",
                f"qdisc add dev {dev} parent {cid} pfifo limit {LEAF_PACKETS}",
                f"filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip {direction} {ip}/32 "
                f"flowid {cid}",
            ]
        _run([*tc, "-batch", "-"], stdin="\n".join(batch) + "\n")

    # --- measure ---------------------------------------------------------------------------------

    def tx_bytes(self, name: str) -> int:
        """Bytes the endpoint sent on its link (IP + Ethernet headers included)."""
        out = _run(["ip", "-n", self.endpoints[name].ns, "-j", "-s", "link", "show", "eth0"])
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def cross_zone_bytes(self) -> int:
        """Bytes that crossed between the zones, both ways (0 with one zone)."""
        if self.zones == 1:
            return 0
        out = json.loads(_run(["ip", "-n", self.switch, "-j", "-s", "link", "show"]))
        return sum(int(d["stats64"]["tx"]["bytes"]) for d in out if d["ifname"] in ("za", "zb"))

    # --- tear down -------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill anything left in our namespaces, then delete them (veths and the bridge go with them)."""
        for name in reversed(self._created):
            _kill_ns_pids(name)
        for name in reversed(self._created):
            r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
            if r.returncode != 0 and name in list_namespaces():
                log.warning("could not delete namespace %s: %s", name, r.stderr.strip())
        self._created.clear()


def _run(cmd: list[str], stdin: str | None = None) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout
