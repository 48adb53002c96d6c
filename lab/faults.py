"""The fault catalogue: data describing how to break a lab and what the kernel (and a diagnosis) must say.

Each Fault names its scenario (examples/lab/<scenario>.yaml), the probe that exposes it, the real-probe
outcome before and after injection, the verdict a diagnosis must reach and the finding code + hop id it
must name. Injection uses plain commands (`ip`, `iptables`, `sysctl`, `bridge`, `kill`) run inside a lab
namespace; argv strings may hold placeholders expanded by `Lab.expand` ({pod:ns/name}, {node:name},
{svc:ns/name}, {podcidr:node}, {vtepmac:node}, {vtep:node} (Calico's VXLAN tunnel address), {veth:ns/pod},
{pid:ns/pod}, {netns:name}, {iptables},
{bpf:name} — lab/bpf/<name>.c compiled with clang).
A few faults are Kubernetes-level (readiness, a new NetworkPolicy): the lab reprograms the nodes the way
kube-proxy / the policy agent would, and the changed objects are in the state file for the API server.

tests/lab/test_faults.py asserts the kernel outcomes; the simulator's differential test reuses the same
catalogue to assert `netdiag diagnose` returns `verdict_after` and names `finding` (a decoy, `finding=None`,
is a correct NAT the kernel accepts: REACHABLE with no error finding):

    lab = Lab.up(resolve(Scenario.load(fault.scenario_path)), prefix=...); lab.start_api()
    fault.inject(lab)
    src, dst = lab.source_address(fault.probe.src), lab.address(fault.probe.dst)
    # diagnose src -> dst:port/protocol against lab.state.api (kubeconfig) and node agents per lab.state.nodes
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import netns
from lab.dataplane import Lab
from lab.probe import Outcome

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "lab"
SPLIT_FLOWS = 12  # new flows probed until a split (ECMP) fault shows both outcomes: all alike ≈ 2**-11


@dataclass(frozen=True)
class Cmd:
    where: str | None  # node, "ns/pod", ext, inet, underlay; None = the root namespace (only for kill)
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ProbeSpec:
    src: str  # node name, "ns/pod", ext or inet
    dst: str  # address reference understood by Lab.address
    port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Expected:
    code: str  # shared/codes.py finding code
    hop: str  # hop id, e.g. "node:node-2", "pod:shop/api-2", "service:shop/api"
    also: tuple[str, ...] = ()  # other codes a correct diagnosis may use for the same cause


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    scenario: str
    probe: ProbeSpec
    before: Outcome
    after: Outcome
    finding: Expected | None  # None: a healthy decoy (a correct NAT): the diagnosis must find nothing wrong
    commands: tuple[Cmd, ...] = ()
    not_ready: tuple[str, ...] = ()  # pods whose containers turn not ready (Kubernetes-level fault)
    add_policy: dict[str, Any] | None = field(default=None, hash=False)
    felix: dict[str, Any] | None = field(default=None, hash=False)  # FelixConfiguration settings felix applies
    verdict_before: str = "REACHABLE"
    verdict_after: str = "UNREACHABLE"
    ends: str | None = None  # the dropped path's final cause, when the packet dies after the named cause

    @property
    def decoy(self) -> bool:
        return self.finding is None

    @property
    def scenario_path(self) -> Path:
        return EXAMPLES / f"{self.scenario}.yaml"

    @property
    def beyond_the_nodes(self) -> bool:
        """The fault acts where no node dump reaches (an outside host): the diagnosis cannot decide."""
        return self.verdict_after == "UNDETERMINED"

    @property
    def split(self) -> bool:
        """Only some flows break (one ECMP next hop): the kernel shows both outcomes, a diagnosis AMBIGUOUS."""
        return self.verdict_after == "AMBIGUOUS"

    @property
    def outcomes_after(self) -> set[Outcome]:
        return {self.before, self.after} if self.split else {self.after}

    def observe(self, lab: Lab, timeout_s: float = 1.0) -> set[Outcome]:
        """The kernel's outcomes after injection: one probe, or for a split fault new flows (each a new
        source port, hashed anew) until both outcomes were seen."""
        spec, seen = self.probe, set()
        for _ in range(SPLIT_FLOWS if self.split else 1):
            seen.add(lab.probe(spec.src, spec.dst, spec.port, spec.protocol, timeout_s).outcome)
            if seen == self.outcomes_after:
                break
        return seen

    def inject(self, lab: Lab) -> None:
        for cmd in self.commands:
            argv = [lab.expand(a) for a in cmd.argv]
            lab.exec(cmd.where, argv)
            if argv[0] == "kill":
                _wait_dead([int(a) for a in argv[1:] if a.isdigit()])
        if self.not_ready:
            lab.set_ready(self.not_ready, False)
        if self.add_policy is not None:
            lab.add_network_policy(_expanded(lab, self.add_policy))
        if self.felix is not None:  # the FelixConfiguration changes: felix reprograms its chains
            sc = lab.resolved.scenario
            lab.update_scenario(sc.model_copy(update={"felix": sc.felix.model_validate(
                {**sc.felix.model_dump(by_alias=True), **self.felix})}))


def _expanded(lab: Lab, value: Any) -> Any:
    """A policy with address placeholders ({pod:ns/name} …) filled in, like a command's argv."""
    if isinstance(value, str):
        return lab.expand(value)
    if isinstance(value, dict):
        return {k: _expanded(lab, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expanded(lab, v) for v in value]
    return value


def _wait_dead(pids: list[int], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(netns.alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.005)


def _node(where: str, *argv: str) -> Cmd:
    return Cmd(where, tuple(argv))


CLIENT_TO_API2 = ProbeSpec("web/client", "pod:shop/api-2", 8080)
DNS_TCP = ProbeSpec("web/client", "svc:kube-system/kube-dns", 53)

CATALOGUE: list[Fault] = [
    Fault("forward_drop", "an iptables DROP at the top of node-2's FORWARD chain for the destination pod",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("IPTABLES_DROP", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-I", "FORWARD", "1", "-d", "{pod:shop/api-2}/32", "-p", "tcp",
                          "--dport", "8080", "-j", "DROP"),)),
    Fault("nft_native_drop", "a native nftables table on node-2 (beside kube-proxy's iptables) drops the destination "
          "pod's port in its forward chain", "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("NFTABLES_DROP", "node:node-2"),
          commands=(_node("node-2", "nft", "add", "table", "inet", "guard"),
                    _node("node-2", "nft", "add", "chain", "inet", "guard", "forward",
                          "{ type filter hook forward priority 0 ; }"),
                    _node("node-2", "nft", "add", "rule", "inet", "guard", "forward", "ip", "daddr",
                          "{pod:shop/api-2}", "tcp", "dport", "8080", "drop"))),
    Fault("pod_cidr_route_missing", "node-1 lost its host-gw route to node-2's pod CIDR (falls to the default "
          "route; the underlay router has no route for pod CIDRs)",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("NO_ROUTE", "node:node-1", ("INVALID_ROUTE",)),
          commands=(_node("node-1", "ip", "route", "del", "{podcidr:node-2}"),)),
    Fault("blackhole_route", "node-1 routes node-2's pod CIDR into a blackhole",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("ROUTE_BLACKHOLE", "node:node-1"),
          commands=(_node("node-1", "ip", "route", "replace", "blackhole", "{podcidr:node-2}"),)),
    Fault("policy_rule_blackhole", "a policy-routing rule on node-1 sends traffic for the destination pod to "
          "table 100, which blackholes it (the main table is fine)", "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("ROUTE_BLACKHOLE", "node:node-1"),
          commands=(_node("node-1", "ip", "route", "add", "blackhole", "{pod:shop/api-2}/32", "table", "100"),
                    _node("node-1", "ip", "rule", "add", "to", "{pod:shop/api-2}/32", "lookup", "100",
                          "priority", "100"))),
    Fault("fwmark_rule_blackhole", "node-1 marks the pod's packets in mangle PREROUTING, and a policy rule for "
          "that fwmark routes them into a blackhole table", "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("ROUTE_BLACKHOLE", "node:node-1"),
          commands=(_node("node-1", "{iptables}", "-t", "mangle", "-A", "PREROUTING", "-d", "{pod:shop/api-2}/32",
                          "-p", "tcp", "--dport", "8080", "-j", "MARK", "--set-mark", "0x42"),
                    _node("node-1", "ip", "route", "add", "blackhole", "default", "table", "101"),
                    _node("node-1", "ip", "rule", "add", "fwmark", "0x42", "lookup", "101", "priority", "101"))),
    Fault("forward_reject_tcp_reset", "node-2 rejects the destination pod's port with a TCP reset in FORWARD",
          "basic", CLIENT_TO_API2, "connected", "refused", Expected("IPTABLES_REJECT", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-I", "FORWARD", "1", "-d", "{pod:shop/api-2}/32", "-p", "tcp",
                          "--dport", "8080", "-j", "REJECT", "--reject-with", "tcp-reset"),)),
    Fault("dnat_to_a_closed_port", "node-2 DNATs the destination pod's port 8080 to port 9999 of the same pod, "
          "where nothing listens", "basic", CLIENT_TO_API2, "connected", "refused",
          Expected("NO_LISTENER", "pod:shop/api-2"),
          commands=(_node("node-2", "{iptables}", "-t", "nat", "-I", "PREROUTING", "1", "-d", "{pod:shop/api-2}/32",
                          "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "{pod:shop/api-2}:9999"),)),
    # the reply is lost beyond the nodes (the internet host has no route to the pod CIDR), where no node
    # dump can see: the diagnosis must say it cannot decide, name the cause, and never claim REACHABLE
    Fault("pod_masquerade_missing", "node-1's CNI masquerade for pod traffic leaving the cluster is gone: the "
          "internet host answers the private pod address, which it cannot route", "basic",
          ProbeSpec("web/client", "inet", 80), "connected", "timeout",
          Expected("POD_SOURCE_NOT_MASQUERADED", "node:node-1"), verdict_after="UNDETERMINED",
          commands=(_node("node-1", "{iptables}", "-t", "nat", "-F", "FLANNEL-POSTRTG"),)),
    Fault("ip_forward_off_source_node", "net.ipv4.ip_forward=0 on the source pod's node",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("IP_FORWARD_DISABLED", "node:node-1"),
          commands=(_node("node-1", "sysctl", "-w", "net.ipv4.ip_forward=0"),)),
    Fault("ip_forward_off_destination_node", "net.ipv4.ip_forward=0 on the destination pod's node",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("IP_FORWARD_DISABLED", "node:node-2"),
          commands=(_node("node-2", "sysctl", "-w", "net.ipv4.ip_forward=0"),)),
    Fault("network_policy_deny", "a new NetworkPolicy admits only same-namespace clients to the api pods",
          "basic", ProbeSpec("web/client", "pod:shop/api-1", 8080), "connected", "timeout",
          Expected("NETWORK_POLICY_DENY", "pod:shop/api-1"),
          add_policy={
              "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "api-from-shop-only", "namespace": "shop"},
              "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {}}]}]},
          }),
    Fault("no_listener", "the destination pod's process is gone: nothing listens on 8080",
          "basic", CLIENT_TO_API2, "connected", "refused", Expected("NO_LISTENER", "pod:shop/api-2"),
          commands=(Cmd(None, ("kill", "-9", "{pid:shop/api-2}")),)),
    Fault("pod_link_down", "the destination pod's eth0 is down",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("LINK_DOWN", "pod:shop/api-2"),
          commands=(_node("shop/api-2", "ip", "link", "set", "eth0", "down"),)),
    Fault("node_uplink_down", "node-2's underlay uplink eth0 is down",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("LINK_DOWN", "node:node-2"),
          commands=(_node("node-2", "ip", "link", "set", "eth0", "down"),)),
    Fault("veth_peer_deleted", "the node side of the destination pod's veth pair was deleted (the pod is cut off)",
          "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("VETH_PEER_MISSING", "pod:shop/api-2", ("LINK_DOWN",)),
          commands=(_node("node-2", "ip", "link", "del", "{veth:shop/api-2}"),)),
    Fault("kube_services_flushed", "nat KUBE-SERVICES flushed on the client's node: the ClusterIP is not DNATed, "
          "flannel masquerades it to the underlay router, which answers ICMP net unreachable",
          "basic", ProbeSpec("web/client", "svc:shop/api", 80), "connected", "unreachable",
          Expected("KUBE_PROXY_RULES_MISSING", "node:node-1"),
          commands=(_node("node-1", "{iptables}", "-t", "nat", "-F", "KUBE-SERVICES"),)),
    Fault("service_no_endpoints", "every api pod turned not ready: kube-proxy REJECTs the ClusterIP",
          "basic", ProbeSpec("web/client", "svc:shop/api", 80), "connected", "refused",
          Expected("SERVICE_NO_ENDPOINT", "service:shop/api"), not_ready=("shop/api-1", "shop/api-2")),
    Fault("hairpin_off", "hairpin off on coredns' bridge port: the pod cannot reach itself through its Service",
          "basic", ProbeSpec("kube-system/coredns", "svc:kube-system/kube-dns", 53), "connected", "timeout",
          Expected("HAIRPIN_DISABLED", "node:node-1"),
          commands=(_node("node-1", "ip", "link", "set", "{veth:kube-system/coredns}", "type", "bridge_slave",
                          "hairpin", "off"),)),
    Fault("bridge_nf_off", "bridge-nf-call-iptables=0 on node-1: the same-node Service reply bypasses conntrack "
          "and reaches the client un-NATed",
          "basic", DNS_TCP, "connected", "timeout", Expected("BRIDGE_NF_DISABLED", "node:node-1"),
          commands=(_node("node-1", "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"),)),
    Fault("rp_filter_asymmetric", "node-2 returns traffic for node-1's pod CIDR over a second uplink eth1 while "
          "rp_filter is strict: the request arriving on eth0 fails the reverse-path check",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("RP_FILTER_DROP", "node:node-2"),
          commands=(
              _node("node-2", "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "rpf2", "netns",
                    "{netns:underlay}"),
              _node("underlay", "ip", "link", "set", "rpf2", "master", "br0", "up"),
              _node("node-2", "ip", "link", "set", "eth1", "up"),
              _node("node-2", "ip", "route", "replace", "{podcidr:node-1}", "via", "{node:node-1}", "dev", "eth1",
                    "onlink"),
              _node("node-2", "sysctl", "-w", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1"),
          )),
    Fault("vxlan_fdb_wrong", "node-1's FDB entry for node-2's VTEP points at an address nobody owns",
          "vxlan", ProbeSpec("app/frontend", "pod:app/backend-1", 9000), "connected", "timeout",
          Expected("INVALID_ROUTE", "node:node-1", ("NEIGHBOR_FAILED",)),
          commands=(_node("node-1", "bridge", "fdb", "replace", "{vtepmac:node-2}", "dev", "flannel.1", "dst",
                          "172.30.0.99", "self", "permanent"),)),
    Fault("stale_static_neighbor", "node-1 holds a static ARP entry for node-2's address with a MAC no interface "
          "has: frames for node-2 are flooded on the underlay and dropped by every receiver",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("NEIGHBOR_FAILED", "node:node-1"),
          commands=(_node("node-1", "ip", "neigh", "replace", "{node:node-2}", "lladdr", "02:00:00:00:00:99",
                          "dev", "eth0", "nud", "permanent"),)),
    Fault("localnet_dnat", "node-2 DNATs the destination pod's port to 127.0.0.1 while route_localnet is 0: "
          "the translated packet is a martian on eth0",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("ROUTE_LOCALNET_DISABLED", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-t", "nat", "-I", "PREROUTING", "1", "-d", "{pod:shop/api-2}/32",
                          "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "127.0.0.1:8080"),)),
    Fault("internet_reply_dropped", "node-1 drops the internet server's replies in FORWARD: the request leaves "
          "(masqueraded), the un-SNATed reply never reaches the pod",
          "basic", ProbeSpec("web/client", "inet", 80), "connected", "timeout",
          Expected("IPTABLES_DROP", "node:node-1"),
          commands=(_node("node-1", "{iptables}", "-I", "FORWARD", "1", "-i", "eth0", "-p", "tcp", "--sport", "80",
                          "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "DROP"),)),
    Fault("ecmp_one_next_hop_drops", "node-1 reaches node-2's pod CIDR over two equal-cost next hops (a second "
          "uplink eth1, flows hashed on their 5-tuple) and drops what leaves by eth1: flows hashed onto eth1 time "
          "out, the others connect",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("IPTABLES_DROP", "node:node-1"),
          verdict_after="AMBIGUOUS",
          commands=(
              _node("node-1", "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "ecmp1", "netns",
                    "{netns:underlay}"),
              _node("underlay", "ip", "link", "set", "ecmp1", "master", "br0", "up"),
              _node("node-1", "ip", "link", "set", "eth1", "up"),
              _node("node-1", "sysctl", "-w", "net.ipv4.fib_multipath_hash_policy=1"),
              _node("node-1", "ip", "route", "replace", "{podcidr:node-2}", "nexthop", "via", "{node:node-2}", "dev",
                    "eth0", "nexthop", "via", "{node:node-2}", "dev", "eth1", "onlink"),
              _node("node-1", "{iptables}", "-I", "FORWARD", "1", "-o", "eth1", "-j", "DROP"),
          )),
    # tc, bridge port state and XDP (issue 15): what the walk once passed as REACHABLE
    Fault("tc_blackhole_pod_veth", "a blackhole root qdisc on the node side of the destination pod's veth: every "
          "frame towards the pod is dropped", "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("TC_DROP", "node:node-2"),
          commands=(_node("node-2", "tc", "qdisc", "add", "dev", "{veth:shop/api-2}", "root", "blackhole"),)),
    # this kernel has the u32 classifier but no tc action modules (`u32 ... action drop` fails: "Failed to
    # load TC action module"): the u32 filter drops by classifying into an htb class whose leaf is blackhole
    Fault("tc_u32_to_blackhole_class", "an htb root on the destination pod's veth whose u32 filter sends port "
          "8080 into a class with a blackhole leaf qdisc (other ports take the default class)", "basic",
          CLIENT_TO_API2, "connected", "timeout", Expected("TC_DROP", "node:node-2"),
          commands=(_node("node-2", "tc", "qdisc", "add", "dev", "{veth:shop/api-2}", "root", "handle", "1:", "htb",
                          "default", "10"),
                    _node("node-2", "tc", "class", "add", "dev", "{veth:shop/api-2}", "parent", "1:", "classid",
                          "1:10", "htb", "rate", "1gbit", "quantum", "60000"),
                    _node("node-2", "tc", "class", "add", "dev", "{veth:shop/api-2}", "parent", "1:", "classid",
                          "1:20", "htb", "rate", "1gbit", "quantum", "60000"),
                    _node("node-2", "tc", "qdisc", "add", "dev", "{veth:shop/api-2}", "parent", "1:20", "handle",
                          "20:", "blackhole"),
                    _node("node-2", "tc", "filter", "add", "dev", "{veth:shop/api-2}", "parent", "1:", "protocol",
                          "ip", "prio", "1", "u32", "match", "ip", "dport", "8080", "0xffff", "flowid", "1:20"))),
    Fault("bridge_port_disabled", "the destination pod's bridge port on cni0 set to STP state disabled "
          "(`bridge link set ... state 0`)", "basic", CLIENT_TO_API2, "connected", "timeout",
          Expected("BRIDGE_PORT_BLOCKED", "node:node-2"),
          commands=(_node("node-2", "bridge", "link", "set", "dev", "{veth:shop/api-2}", "state", "0"),)),
    Fault("xdp_drop_pod_eth0", "an XDP program that returns XDP_DROP attached to the destination pod's eth0",
          "basic", CLIENT_TO_API2, "connected", "timeout", Expected("XDP_DROP", "pod:shop/api-2"),
          commands=(_node("shop/api-2", "ip", "link", "set", "dev", "eth0", "xdp", "obj", "{bpf:xdp_drop}", "sec",
                          "xdp"),)),
    Fault("dns_not_listening", "the coredns process is gone: DNS queries to kube-dns get ICMP port unreachable",
          "basic", ProbeSpec("web/client", "svc:kube-system/kube-dns", 53, "udp"), "reply", "refused",
          Expected("NO_LISTENER", "pod:kube-system/coredns"),
          commands=(Cmd(None, ("kill", "-9", "{pid:kube-system/coredns}")),)),
]

# ---- replies that leave the nodes for an outside client, NAT addresses, collection on demand (issue 18)
_UNTRACK_WEB1_REPLY = _node("node-1", "{iptables}", "-t", "raw", "-I", "PREROUTING", "1", "-s", "{pod:prod/web-1}/32",
                            "-p", "tcp", "--sport", "80", "-j", "NOTRACK")
CATALOGUE += [
    Fault("nodeport_reply_untracked", "a raw-table NOTRACK on node-1 matches the replies of web-1: conntrack cannot "
          "undo the NodePort DNAT (externalTrafficPolicy Local, no masquerade), so the SYN-ACK leaves for the client "
          "from web-1's address instead of node-1:30000 and the client resets it",
          "legacy", ProbeSpec("ext", "node:node-1", 30000), "connected", "timeout",
          Expected("REPLY_NOT_TRANSLATED", "node:node-1"), commands=(_UNTRACK_WEB1_REPLY,)),
    Fault("lb_reply_untracked", "the same NOTRACK for web-1's replies, seen from a client of the LoadBalancer IP: "
          "the reply leaves node-1 from the pod address, not the LB IP the client connected to",
          "legacy", ProbeSpec("ext", "lb:prod/web", 80), "connected", "timeout",
          Expected("REPLY_NOT_TRANSLATED", "node:node-1"), commands=(_UNTRACK_WEB1_REPLY,)),
    Fault("nodeport_masquerade_exempted", "node-2 exempts the external client from masquerade (a POSTROUTING ACCEPT "
          "before kube-proxy's and flannel's MASQUERADE): NodePort traffic DNATed to api-1 on node-1 keeps the "
          "client's address, api-1's reply leaves through node-1 untranslated; flows to api-2 on node-2 still work",
          "basic", ProbeSpec("ext", "node:node-2", 30000), "connected", "timeout",
          Expected("REPLY_NOT_TRANSLATED", "node:node-1"), verdict_after="AMBIGUOUS",
          commands=(_node("node-2", "{iptables}", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "{ext}/32", "-j",
                          "ACCEPT"),)),
    Fault("asymmetric_reply_invalid", "node-2 routes node-3's pod CIDR via node-1: web-2's SYN-ACK reaches node-1, "
          "whose conntrack never saw the SYN (ctstate INVALID), and kube-proxy's KUBE-FORWARD INVALID rule drops it",
          "legacy", ProbeSpec("prod/toolbox", "pod:prod/web-2", 80), "connected", "timeout",
          Expected("IPTABLES_DROP", "node:node-1"),
          commands=(_node("node-2", "ip", "route", "replace", "{podcidr:node-3}", "via", "{node:node-1}", "dev",
                          "eth0"),)),
    Fault("snat_to_other_node_address", "node-1 SNATs the client pod's internet traffic to node-2's address: the "
          "internet host answers node-2, which never sent the request (it resets it)",
          "basic", ProbeSpec("web/client", "inet", 80), "connected", "timeout",
          Expected("SNAT_ADDRESS_NOT_OWNED", "node:node-1"),
          commands=(_node("node-1", "{iptables}", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "{pod:web/client}/32",
                          "-d", "{inet}/32", "-j", "SNAT", "--to-source", "{node:node-2}"),)),
    Fault("snat_to_own_node_address", "decoy: node-1 SNATs the client pod's internet traffic to its own address",
          "basic", ProbeSpec("web/client", "inet", 80), "connected", "connected", None,
          verdict_after="REACHABLE",
          commands=(_node("node-1", "{iptables}", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "{pod:web/client}/32",
                          "-d", "{inet}/32", "-j", "SNAT", "--to-source", "{node:node-1}"),)),
    # node-3 alone is on the model's path (toolbox and the hostNetwork node-exporter): node-1 is collected on demand
    Fault("stale_dnat_to_uncollected_node", "a stale DNAT on node-3 sends the node-exporter Service to port 9100 of "
          "web-1 on node-1 (not an endpoint), where nothing listens", "legacy",
          ProbeSpec("prod/toolbox", "svc:kube-system/node-exporter", 9100), "connected", "refused",
          Expected("KUBE_PROXY_RULES_MISSING", "node:node-3"), ends="NO_LISTENER",
          commands=(_node("node-3", "{iptables}", "-t", "nat", "-I", "KUBE-SERVICES", "1", "-d",
                          "{svc:kube-system/node-exporter}/32", "-p", "tcp", "--dport", "9100", "-j", "DNAT",
                          "--to-destination", "{pod:prod/web-1}:9100"),)),
    Fault("dnat_to_pod_on_uncollected_node", "decoy: node-3 DNATs an address outside the cluster to web-1:80 on "
          "node-1 (a node the model does not plan to collect), which serves it", "legacy",
          ProbeSpec("prod/toolbox", "192.0.2.77", 80), "unreachable", "connected", None, verdict_after="REACHABLE",
          commands=(_node("node-3", "{iptables}", "-t", "nat", "-I", "PREROUTING", "1", "-d", "192.0.2.77/32", "-p",
                          "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "{pod:prod/web-1}:80"),)),
]

CALICO_CROSS_NODE = ProbeSpec("shop/client", "pod:shop/api-2", 8080)
CATALOGUE += [  # Calico BGP mode (examples/lab/calico.yaml): what operators of the plug-in hit
    Fault("calico_pod_route_missing", "node-2 lost its `podIP dev cali* scope link` route to the destination "
          "pod: the lookup falls to the node's blackhole route for its own block",
          "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("POD_ROUTE_MISSING", "node:node-2", ("ROUTE_BLACKHOLE",)),
          commands=(_node("node-2", "ip", "route", "del", "{pod:shop/api-2}/32", "dev", "{veth:shop/api-2}"),)),
    Fault("calico_proxy_arp_off", "proxy_arp is off on the client's cali interface (and the pod's neighbour "
          "cache is flushed): nothing answers ARP for the pod's gateway 169.254.1.1",
          "calico", CALICO_CROSS_NODE, "connected", "timeout", Expected("PROXY_ARP_DISABLED", "node:node-1"),
          commands=(_node("node-1", "sysctl", "-w", "net.ipv4.conf.{veth:shop/client}.proxy_arp=0"),
                    _node("shop/client", "ip", "neigh", "flush", "dev", "eth0"))),
    Fault("calico_block_route_missing", "node-1 has no route for node-2's block (its BGP session to node-2 is "
          "down, BIRD withdrew the route): the packet follows the default route to the VPC router, which has no "
          "route for pod addresses", "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("INVALID_ROUTE", "node:node-1", ("NO_ROUTE",)),
          commands=(_node("node-1", "ip", "route", "del", "{podcidr:node-2}"),)),
    Fault("calico_nat_outgoing_off", "the IPPool's natOutgoing is off (felix empties cali40masq-ipam-pools): pod → "
          "internet leaves with the pod address, which the internet host cannot answer",
          "calico", ProbeSpec("shop/client", "inet", 80), "connected", "timeout",
          Expected("POD_SOURCE_NOT_MASQUERADED", "node:node-1"), verdict_after="UNDETERMINED",
          commands=(_node("node-1", "ipset", "flush", "cali40masq-ipam-pools"),)),
    Fault("calico_workload_forwarding_off", "forwarding is off on the client's cali interface: the node does not "
          "route what the pod sends", "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("IP_FORWARD_DISABLED", "node:node-1"),
          commands=(_node("node-1", "sysctl", "-w", "net.ipv4.conf.{veth:shop/client}.forwarding=0"),)),
    Fault("calico_workload_link_down", "the host side of the destination pod's cali veth is down",
          "calico", CALICO_CROSS_NODE, "connected", "timeout", Expected("LINK_DOWN", "node:node-2"),
          commands=(_node("node-2", "ip", "link", "set", "{veth:shop/api-2}", "down"),)),
    Fault("calico_pod_default_route_missing", "the client pod lost its default route via 169.254.1.1",
          "calico", CALICO_CROSS_NODE, "connected", "unreachable", Expected("NO_ROUTE", "pod:shop/client"),
          commands=(_node("shop/client", "ip", "route", "del", "default"),)),
    Fault("calico_same_node_pod_route_missing", "node-1 lost the route to its own pod api-1: same-node traffic "
          "from the client falls to the block's blackhole", "calico", ProbeSpec("shop/client", "pod:shop/api-1", 8080),
          "connected", "timeout", Expected("POD_ROUTE_MISSING", "node:node-1", ("ROUTE_BLACKHOLE",)),
          commands=(_node("node-1", "ip", "route", "del", "{pod:shop/api-1}/32", "dev", "{veth:shop/api-1}"),)),
    Fault("calico_vxlan_fdb_wrong", "node-1's FDB entry for node-2's VTEP on vxlan.calico points at an address "
          "nobody owns", "calico-vxlan", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("INVALID_ROUTE", "node:node-1", ("NEIGHBOR_FAILED",)),
          commands=(_node("node-1", "bridge", "fdb", "replace", "{vtepmac:node-2}", "dev", "vxlan.calico", "dst",
                          "172.30.0.99", "self", "permanent"),)),
    Fault("calico_vxlan_neighbor_missing", "node-1 lost felix's static ARP entry for node-2's VTEP (vxlan.calico "
          "learns nothing): the peer block's next hop is unresolved", "calico-vxlan", CALICO_CROSS_NODE,
          "connected", "timeout", Expected("NEIGHBOR_FAILED", "node:node-1"),
          commands=(_node("node-1", "ip", "neigh", "del", "{vtep:node-2}", "dev", "vxlan.calico"),)),
]

TERWAY_CROSS_NODE = ProbeSpec("shop/client", "pod:shop/api-2", 8080)
CATALOGUE += [  # Terway eniip, veth datapath (examples/lab/terway.yaml)
    Fault("terway_pod_rule_missing", "node-1 lost the client's `from <pod> iif <veth> lookup <ENI table>` rule: its "
          "traffic leaves by the primary NIC, and the VPC drops a source that is not that NIC's address",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("POD_EGRESS_WRONG_ENI", "node:node-1"),
          commands=(_node("node-1", "ip", "rule", "del", "from", "{pod:shop/client}/32", "priority", "2048"),)),
    Fault("terway_pod_route_missing", "node-2 lost its `podIP dev <veth>` route to the destination pod: the main "
          "table sends the pod's address back out to the VPC",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("POD_ROUTE_MISSING", "node:node-2"),
          commands=(_node("node-2", "ip", "route", "del", "{pod:shop/api-2}/32", "dev", "{veth:shop/api-2}"),)),
    Fault("terway_eni_down_destination", "node-2's ENI (eth1) is down: the VPC cannot deliver the pod's address",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("LINK_DOWN", "node:node-2"),
          commands=(_node("node-2", "ip", "link", "set", "eth1", "down"),)),
    Fault("terway_eni_down_source", "node-1's ENI (eth1) is down: its table lost its default route, the client's "
          "traffic falls through to the main table and leaves by the primary NIC, where the VPC drops it",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("LINK_DOWN", "node:node-1"),
          commands=(_node("node-1", "ip", "link", "set", "eth1", "down"),)),
    Fault("terway_pod_veth_down", "the host side of the destination pod's veth is down (its route went with it)",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("LINK_DOWN", "node:node-2"),
          commands=(_node("node-2", "ip", "link", "set", "{veth:shop/api-2}", "down"),)),
    Fault("terway_forward_drop", "an iptables DROP in node-2's FORWARD chain for the destination pod (as a policy "
          "agent's chain would)", "terway", TERWAY_CROSS_NODE, "connected", "timeout",
          Expected("IPTABLES_DROP", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-I", "FORWARD", "1", "-d", "{pod:shop/api-2}/32", "-p", "tcp",
                          "--dport", "8080", "-j", "DROP"),)),
    Fault("terway_pod_gateway_neighbor_wrong", "the client pod's static neighbour for its gateway 169.254.1.1 "
          "holds a MAC nobody has: every frame to the host is discarded", "terway", TERWAY_CROSS_NODE, "connected",
          "timeout", Expected("NEIGHBOR_FAILED", "pod:shop/client"),
          commands=(_node("shop/client", "ip", "neigh", "replace", "169.254.1.1", "lladdr", "02:00:00:00:00:99",
                          "dev", "eth0", "nud", "permanent"),)),
    Fault("terway_ip_forward_off", "net.ipv4.ip_forward=0 on the destination pod's node",
          "terway", TERWAY_CROSS_NODE, "connected", "timeout", Expected("IP_FORWARD_DISABLED", "node:node-2"),
          commands=(_node("node-2", "sysctl", "-w", "net.ipv4.ip_forward=0"),)),
]

# Terway exclusive ENI (examples/lab/terway-eni.yaml): pod↔pod goes ENI → VPC → ENI, never through a node;
# Services go veth1 → host (kube-proxy, terway-masq) → the endpoint's ENI or veth1. kube-dns has one endpoint
# (coredns on node-1), so api-2's DNS query deterministically crosses node-2 and the VPC.
TERWAY_ENI_DNS = ProbeSpec("shop/api-2", "svc:kube-system/kube-dns", 53, "tcp")
CATALOGUE += [
    Fault("terway_eni_masq_missing", "node-2's terway-masq chain is flushed: api-2's DNS query, translated to "
          "coredns on node-1, leaves node-2's primary NIC with the source of api-2's own ENI, and the VPC drops it",
          "terway-eni", TERWAY_ENI_DNS, "connected", "timeout",
          Expected("ENI_POD_SOURCE_NOT_MASQUERADED", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-t", "nat", "-F", "terway-masq"),)),
    Fault("terway_eni_ip_forward_off", "net.ipv4.ip_forward=0 on node-2: the Service traffic its pods send over "
          "veth1 is not forwarded", "terway-eni", TERWAY_ENI_DNS, "connected", "timeout",
          Expected("IP_FORWARD_DISABLED", "node:node-2"),
          commands=(_node("node-2", "sysctl", "-w", "net.ipv4.ip_forward=0"),)),
    Fault("terway_eni_host_neighbor_wrong", "api-2's static neighbour for 169.254.1.1 on veth1 holds a MAC nobody "
          "has: its Service traffic never reaches the host", "terway-eni", TERWAY_ENI_DNS, "connected", "timeout",
          Expected("NEIGHBOR_FAILED", "pod:shop/api-2"),
          commands=(_node("shop/api-2", "ip", "neigh", "replace", "169.254.1.1", "lladdr", "02:00:00:00:00:99",
                          "dev", "veth1", "nud", "permanent"),)),
    Fault("terway_eni_destination_eni_down", "api-2's own ENI (its eth0) is down: the VPC cannot deliver its "
          "address", "terway-eni", TERWAY_CROSS_NODE, "connected", "timeout", Expected("LINK_DOWN", "pod:shop/api-2"),
          commands=(_node("shop/api-2", "ip", "link", "set", "eth0", "down"),)),
    Fault("terway_eni_pod_default_route_missing", "the client lost its default route via the vSwitch gateway on "
          "its ENI", "terway-eni", TERWAY_CROSS_NODE, "connected", "unreachable",
          Expected("NO_ROUTE", "pod:shop/client"),
          commands=(_node("shop/client", "ip", "route", "del", "default"),)),
    Fault("terway_eni_pod_veth_down", "api-1's veth1 (its link to the host) is down: node-1 reaches it no more",
          "terway-eni", ProbeSpec("node-1", "pod:shop/api-1", 8080), "connected", "timeout",
          Expected("LINK_DOWN", "pod:shop/api-1"),
          commands=(_node("shop/api-1", "ip", "link", "set", "veth1", "down"),)),
    Fault("terway_eni_node_forward_drop_bypassed", "an iptables DROP for api-2 in node-2's FORWARD chain (decoy): "
          "pod traffic to an exclusive ENI never crosses its node", "terway-eni", TERWAY_CROSS_NODE, "connected",
          "connected", None, verdict_after="REACHABLE",
          commands=(_node("node-2", "{iptables}", "-I", "FORWARD", "1", "-d", "{pod:shop/api-2}/32", "-j", "DROP"),)),
]


def _policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


_API_INGRESS = {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"]}
CATALOGUE += [  # NetworkPolicy as felix enforces it (lab/felix.py): Calico, and Terway's policy container
    Fault("felix_deny_all_ingress", "a default-deny ingress policy selects the api pods: api-2's cali-tw- chain "
          "ends its tier with felix's DROP", "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("NETWORK_POLICY_DENY", "pod:shop/api-2"),
          add_policy=_policy("api-deny-all", "shop", _API_INGRESS)),
    Fault("felix_egress_drops_dns", "the client's egress policy allows only the api pods on 8080: its DNS query "
          "(DNATed to coredns) dies in the client's cali-fw- chain", "calico",
          ProbeSpec("shop/client", "svc:kube-system/kube-dns", 53, "udp"), "reply", "no_reply",
          Expected("NETWORK_POLICY_DENY", "pod:shop/client"),
          add_policy=_policy("client-egress", "shop", {
              "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                          "ports": [{"protocol": "TCP", "port": 8080}]}]})),
    Fault("felix_namespace_selector_mismatch", "the api pods admit namespaces labelled team=web only: the client's "
          "namespace shop carries no such label, so its cali40s: ipset never holds the client", "calico",
          CALICO_CROSS_NODE, "connected", "timeout", Expected("NETWORK_POLICY_DENY", "pod:shop/api-2"),
          add_policy=_policy("api-from-team-web", "shop", {
              **_API_INGRESS, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}]})),
    Fault("felix_port_range_edge", "the api pods admit tcp 8000-8079 (port + endPort): 8080 is one past the "
          "multiport range", "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("NETWORK_POLICY_DENY", "pod:shop/api-2"),
          add_policy=_policy("api-port-range", "shop", {
              **_API_INGRESS, "ingress": [{"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8079}]}]})),
    Fault("felix_ipblock_except", "the api pods admit the pod network except the client's address (felix's "
          "negated match block on the scratch mark bits)", "calico-vxlan", CALICO_CROSS_NODE, "connected",
          "timeout", Expected("NETWORK_POLICY_DENY", "pod:shop/api-2"),
          add_policy=_policy("api-except-client", "shop", {
              **_API_INGRESS, "ingress": [{"from": [{"ipBlock": {"cidr": "{podcidr:node-1}",
                                                                 "except": ["{pod:shop/client}/32"]}}]}]})),
    Fault("felix_named_port_protocol", "the api pods admit the named port `metrics` as TCP (the default), but "
          "api-2 declares metrics as UDP: the cali40n: (ip,port) set holds no tcp member, UDP 9090 is dropped",
          "terway", ProbeSpec("shop/client", "pod:shop/api-2", 9090, "udp"), "reply", "no_reply",
          Expected("NETWORK_POLICY_DENY", "pod:shop/api-2"),
          add_policy=_policy("api-metrics", "shop", {**_API_INGRESS, "ingress": [{"ports": [{"port": "metrics"}]}]})),
    Fault("felix_egress_deny_all_same_node", "Terway's felix chains: a default-deny egress policy on the client "
          "drops even its same-node traffic (cali-fw- of the client)", "terway",
          ProbeSpec("shop/client", "pod:shop/api-1", 8080), "connected", "timeout",
          Expected("NETWORK_POLICY_DENY", "pod:shop/client"),
          add_policy=_policy("client-deny-egress", "shop", {
              "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]})),
    Fault("felix_workload_not_dispatched", "felix on node-2 lost api-2 from its to-workload dispatch (its "
          "interface's `-g cali-tw-` rule replaced by the chain's \"Unknown interface\" DROP, as when felix has not "
          "synced the endpoint)", "calico", CALICO_CROSS_NODE, "connected", "timeout",
          Expected("IPTABLES_DROP", "node:node-2"),
          commands=(_node("node-2", "{iptables}", "-R", "cali-to-wl-dispatch", "1", "-m", "comment", "--comment",
                          "Unknown interface", "-j", "DROP"),)),
    Fault("felix_mark_mask_clears_masquerade", "FelixConfiguration iptablesMarkMask 0xfc00 puts felix's scratch "
          "bit on kube-proxy's masquerade mark 0x4000: cali-FORWARD clears it on node-2, so NodePort traffic DNATed "
          "to api-1 on node-1 keeps the client's address and api-1's reply leaves node-1 untranslated; flows to "
          "api-2 on node-2 still work", "calico", ProbeSpec("ext", "node:node-2", 30000), "connected", "timeout",
          Expected("REPLY_NOT_TRANSLATED", "node:node-1"), verdict_after="AMBIGUOUS",
          felix={"iptablesMarkMask": "0xfc00"}),
    Fault("felix_named_port_allowed", "decoy: the api pods admit the client on the named port `http` (felix's "
          "selector and named-port ipsets both hold it)", "terway", TERWAY_CROSS_NODE, "connected", "connected",
          None, verdict_after="REACHABLE",
          add_policy=_policy("api-http-from-client", "shop", {
              **_API_INGRESS, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                           "ports": [{"port": "http"}]}]})),
]

BY_NAME = {f.name: f for f in CATALOGUE}
