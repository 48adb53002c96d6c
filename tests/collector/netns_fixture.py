"""A small real two-node dataplane built with ordinary `ip`/`iptables`/`nft` commands.

Until (and besides) the lab, this is what the collector tests read back: every value the
dump must contain is configured here, so the tests compare the dump with this `Fixture`.

node1 (netns P-n1): eth0 192.168.50.1 ↔ node2 eth0; bridge cni0 10.244.1.1/24 with pods
p1 (10.244.1.10, hairpin on), p2 (10.244.1.11) and p4 (10.244.1.12, an *unnamed* netns held
by a `sleep` process, found through /proc); vxlan flannel.1 with FDB/neighbour entries;
multipath, blackhole, onlink and policy routes; iptables rules in BOTH backends (mixed),
an nft table and an ipset. node2 (P-n2): legacy-only iptables, pod p3.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNET = 0x40000000

NFT_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -j KUBE-FORWARD
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TEST - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-TEST
-A KUBE-SVC-TEST -p tcp -j DNAT --to-destination 10.244.1.10:8080
COMMIT
"""

LEGACY_RULES_NODE1 = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 10.66.0.0/16 -j DROP
COMMIT
"""

LEGACY_RULES_NODE2 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9999 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""

NFT_TABLE = """table inet ndtest {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 7777 drop
  }
}
"""


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def run_in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a throwaway thread switched into netns (sockets made there stay there)."""
    result: dict[str, Any] = {}

    def body() -> None:
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


@dataclass
class Fixture:
    prefix: str
    node1: str
    node2: str
    pods: dict[str, str]  # pod key → named netns (p4 has none: see p4_pid)
    pod_ips: dict[str, str]
    p4_pid: int = 0
    sockets: list[socket.socket] = field(default_factory=list)


def _netns(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def _pod(node: str, pod_ns: str, host_if: str, ip: str, gw: str, *, by_pid: int | None = None) -> None:
    target = str(by_pid) if by_pid else pod_ns
    sh("ip", "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", target)
    sh("ip", "-n", node, "link", "set", host_if, "up")
    run = ("nsenter", f"--net=/proc/{by_pid}/ns/net", "ip") if by_pid else ("ip", "-n", pod_ns)
    sh(*run, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh(*run, "link", "set", "eth0", "up")
    sh(*run, "link", "set", "lo", "up")
    sh(*run, "route", "add", "default", "via", gw)


def build(prefix: str | None = None) -> Fixture:
    prefix = prefix or f"cx{uuid.uuid4().hex[:6]}"
    n1, n2 = f"{prefix}-n1", f"{prefix}-n2"
    fx = Fixture(prefix=prefix, node1=n1, node2=n2,
                 pods={"default/p1": f"{prefix}-p1", "default/p2": f"{prefix}-p2", "default/p3": f"{prefix}-p3"},
                 pod_ips={"default/p1": "10.244.1.10", "default/p2": "10.244.1.11", "default/p3": "10.244.2.10",
                          "default/p4": "10.244.1.12"})
    try:
        _build(fx)
    except BaseException:
        teardown(fx)
        raise
    return fx


def _build(fx: Fixture) -> None:
    n1, n2 = fx.node1, fx.node2
    for ns in (n1, n2, *fx.pods.values()):
        _netns(ns)
    # underlay: a direct veth between the two nodes
    sh("ip", "-n", n1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n2)
    for ns, ip in ((n1, "192.168.50.1"), (n2, "192.168.50.2")):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", "1450", "up")
    # node1: bridge + pods
    sh("ip", "-n", n1, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", n1, "addr", "add", "10.244.1.1/24", "dev", "cni0")
    sh("ip", "-n", n1, "link", "set", "cni0", "up")
    _pod(n1, fx.pods["default/p1"], "vethp1", "10.244.1.10", "10.244.1.1")
    _pod(n1, fx.pods["default/p2"], "vethp2", "10.244.1.11", "10.244.1.1")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    fx.p4_pid = holder.pid
    for _ in range(200):  # unshare has switched once the netns link differs from ours
        if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
            break
        threading.Event().wait(0.01)
    _pod(n1, "", "vethp4", "10.244.1.12", "10.244.1.1", by_pid=holder.pid)
    for port, hairpin in (("vethp1", "on"), ("vethp2", "off"), ("vethp4", "off")):
        sh("ip", "-n", n1, "link", "set", port, "master", "cni0")
        sh("ip", "-n", n1, "link", "set", port, "type", "bridge_slave", "hairpin", hairpin)
    # node1: vxlan overlay towards node2
    sh("ip", "-n", n1, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "192.168.50.1",
       "dev", "eth0", "dstport", "8472", "nolearning")
    sh("ip", "-n", n1, "link", "set", "flannel.1", "address", "02:aa:00:00:00:01", "mtu", "1400", "up")
    sh("ip", "-n", n1, "addr", "add", "10.244.1.0/32", "dev", "flannel.1")
    sh("ip", "-n", n1, "neigh", "add", "10.244.2.0", "lladdr", "02:aa:00:00:00:02", "dev", "flannel.1",
       "nud", "permanent")
    sh("bridge", "-n", n1, "fdb", "append", "02:aa:00:00:00:02", "dev", "flannel.1", "dst", "192.168.50.2")
    sh("ip", "-n", n1, "route", "add", "10.244.2.0/24", "via", "10.244.2.0", "dev", "flannel.1", "onlink")
    # node1: routes of every kind, policy rules, a failed neighbour
    sh("ip", "-n", n1, "route", "add", "10.10.0.0/16", "nexthop", "via", "192.168.50.2", "dev", "eth0",
       "weight", "1", "nexthop", "via", "192.168.50.3", "dev", "eth0", "weight", "2")
    sh("ip", "-n", n1, "route", "add", "blackhole", "10.99.0.0/16")
    sh("ip", "-n", n1, "route", "add", "unreachable", "10.98.0.0/16", "metric", "50")
    sh("ip", "-n", n1, "route", "add", "default", "via", "192.168.50.2", "dev", "eth0", "table", "100")
    sh("ip", "-n", n1, "rule", "add", "priority", "100", "from", "10.244.1.10/32", "lookup", "100")
    sh("ip", "-n", n1, "rule", "add", "priority", "200", "fwmark", "0x10/0xff", "iif", "cni0", "lookup", "100")
    sh("ip", "-n", n1, "rule", "add", "priority", "300", "not", "to", "10.0.0.0/8", "prohibit")
    sh("ip", "-n", n1, "neigh", "add", "192.168.50.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0",
       "nud", "permanent")
    # node1: sysctls
    sh("ip", "netns", "exec", n1, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "netns", "exec", n1, "sysctl", "-qw", "net.ipv4.conf.cni0.rp_filter=2")
    sh("ip", "netns", "exec", n1, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
    sh("ip", "netns", "exec", n2, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    # netfilter: node1 mixed (nft + a legacy raw table), nft table, ipset; node2 legacy only
    sh("ip", "netns", "exec", n1, "iptables-nft-restore", input=NFT_RULES)
    sh("ip", "netns", "exec", n1, "iptables-legacy-restore", input=LEGACY_RULES_NODE1)
    sh("ip", "netns", "exec", n1, "nft", "-f", "-", input=NFT_TABLE)
    sh("ip", "netns", "exec", n1, "ipset", "create", "NDTEST", "hash:ip")
    sh("ip", "netns", "exec", n1, "ipset", "add", "NDTEST", "10.244.1.10")
    sh("ip", "netns", "exec", n2, "iptables-legacy-restore", input=LEGACY_RULES_NODE2)
    # node2: its pod and its route back
    sh("ip", "-n", n2, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", n2, "addr", "add", "10.244.2.1/24", "dev", "cni0")
    sh("ip", "-n", n2, "link", "set", "cni0", "up")
    _pod(n2, fx.pods["default/p3"], "vethp3", "10.244.2.10", "10.244.2.1")
    sh("ip", "-n", n2, "link", "set", "vethp3", "master", "cni0")
    # listeners: TCP 8080 and UDP 5353 in p1, TCP 10250 on node1 (bound to its address)
    fx.sockets.append(run_in_netns(fx.pods["default/p1"], lambda: _listen(socket.SOCK_STREAM, "0.0.0.0", 8080)))
    fx.sockets.append(run_in_netns(fx.pods["default/p1"], lambda: _listen(socket.SOCK_DGRAM, "0.0.0.0", 5353)))
    fx.sockets.append(run_in_netns(n1, lambda: _listen(socket.SOCK_STREAM, "192.168.50.1", 10250)))


def _listen(kind: int, address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


def teardown(fx: Fixture) -> None:
    for s in fx.sockets:
        s.close()
    if fx.p4_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(fx.p4_pid, 9)
            os.waitpid(fx.p4_pid, 0)
    for ns in (*fx.pods.values(), fx.node1, fx.node2):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def fixture() -> Iterator[Fixture]:
    fx = build()
    try:
        yield fx
    finally:
        teardown(fx)
