"""kube-proxy's own unit tests as data: their Services and EndpointSlices, their expected restore
payloads (fixtures/upstream/, verbatim) and upstream's normalisation (`sortIPTablesRules`).

Source: kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go (see fixtures/upstream/README.md for
the revision). Every input below is transcribed from the named test's `makeTestService` /
`makeTestEndpointSlice` calls; `FAKE` is `NewFakeProxier`'s configuration (pod CIDR 10.0.0.0/8,
node "test-node" at 192.168.0.2, localhost NodePorts on, both nfacct counters present, no
--random-fully).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from lab.kubeproxy import Config, Endpoint, ServicePort

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"
NODE = "test-node"
FAKE = Config(node=NODE, node_ip="192.168.0.2")
NODE_IPS = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]  # testNodeIPs, IPv4 part
EXTERNAL_CLIENT, EXTERNAL_CLIENT_BLOCKED = "203.0.113.2", "203.0.113.130"


def _port(ns: str, name: str, port_name: str, port: int, *eps: Endpoint, **kw: Any) -> ServicePort:
    return ServicePort(namespace=ns, name=name, port_name=port_name, port=port, endpoints=eps, **kw)


# TestOverallIPTablesRules
OVERALL = [
    _port("ns1", "svc1", "p80", 80, Endpoint("10.180.0.1", 80), cluster_ip="172.30.0.41"),
    # Local policy; the endpoint has no NodeName, so it is not local
    _port("ns2", "svc2", "p80", 80, Endpoint("10.180.0.2", 80), cluster_ip="172.30.0.42", load_balancer=True,
          etp_local=True, node_port=3001, lb_ips=("1.2.3.4",), external_ips=("192.168.99.22",),
          health_check_node_port=30000),
    _port("ns3", "svc3", "p80", 80, Endpoint("10.180.0.3", 80), cluster_ip="172.30.0.43", node_port=3003),
    _port("ns4", "svc4", "p80", 80, Endpoint("10.180.0.4", 80), Endpoint("10.180.0.5", 80, NODE),
          cluster_ip="172.30.0.44", external_ips=("192.168.99.33",)),
    # Cluster policy: its HealthCheckNodePort is ignored; the source range keeps upstream's stray space
    _port("ns5", "svc5", "p80", 80, Endpoint("10.180.0.3", 80), cluster_ip="172.30.0.45", load_balancer=True,
          node_port=3002, lb_ips=("5.6.7.8",), health_check_node_port=30000, source_ranges=(" 203.0.113.0/25",),
          affinity_timeout=10800),
    _port("ns6", "svc6", "p80", 80, cluster_ip="172.30.0.46"),
]

# TestSyncProxyRulesRepeated, the first (full) sync
REPEATED_INITIAL = [
    _port("ns1", "svc1", "p80", 80, Endpoint("10.0.1.1", 80), cluster_ip="172.30.0.41"),
    _port("ns2", "svc2", "p8080", 8080, Endpoint("10.0.2.1", 8080), cluster_ip="172.30.0.42"),
]

# nftables mode: pkg/proxy/nftables/proxier_test.go's NewFakeProxier only accepts NodePorts on the node IP
NFT_FAKE = replace(FAKE, nodeport_addresses=("192.168.0.2/32", "2001:db8::1/128"))
NFT_PAYLOADS = [("TestOverallNFTablesRules", OVERALL, "nftables_TestOverallNFTablesRules.nft")]

# whole payloads: (upstream test, inputs, fixture)
PAYLOADS = [
    ("TestOverallIPTablesRules", OVERALL, "iptables_TestOverallIPTablesRules.restore"),
    ("TestSyncProxyRulesRepeated/initial", REPEATED_INITIAL, "iptables_TestSyncProxyRulesRepeated_initial.restore"),
]

_FORWARD_TAIL = [
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
    "RELATED,ESTABLISHED -j ACCEPT",
]
_POSTROUTING = [
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE',
]
_LOCALNET = ['-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
             "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"]
_NODEPORT_SVC = [_port("ns1", "svc1", "p80", 80, Endpoint("10.180.0.1", 80), Endpoint("10.180.2.1", 80, NODE),
                       cluster_ip="172.30.0.41", node_port=3001)]

# one chain's expected rules: (upstream test/case, config, inputs, table, chain, expected lines)
CHAINS = [
    ("TestDropInvalidRule/tcpLiberal is false and nfacctEnsured is false", replace(FAKE, nfacct=False), [],
     "filter", "KUBE-FORWARD", ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", *_FORWARD_TAIL]),
    ("TestDropInvalidRule/tcpLiberal is false and nfacctEnsured is true", FAKE, [], "filter", "KUBE-FORWARD",
     ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
      *_FORWARD_TAIL]),
    ("TestDropInvalidRule/tcpLiberal is true and nfacctEnsured is false", replace(FAKE, nfacct=False,
     tcp_liberal=True), [], "filter", "KUBE-FORWARD", _FORWARD_TAIL),
    ("TestMasqueradeRule/randomFully false", FAKE, [], "nat", "KUBE-POSTROUTING", _POSTROUTING),
    ("TestMasqueradeRule/randomFully true", replace(FAKE, random_fully=True), [], "nat", "KUBE-POSTROUTING",
     [*_POSTROUTING[:2], _POSTROUTING[2] + " --random-fully"]),
    ("TestNodePorts/ipv4, localhost-nodeports enabled", FAKE, _NODEPORT_SVC, "filter", "KUBE-FIREWALL", _LOCALNET),
    ("TestNodePorts/ipv4, localhost-nodeports disabled", replace(FAKE, localhost_nodeports=False), _NODEPORT_SVC,
     "filter", "KUBE-FIREWALL", []),
    ("TestNodePorts/ipv4, localhost-nodeports disabled, localhost in nodeport-addresses",
     replace(FAKE, localhost_nodeports=False, nodeport_addresses=("192.168.0.0/24", "127.0.0.1/32")),
     _NODEPORT_SVC, "filter", "KUBE-FIREWALL", []),
    ("TestNodePorts/ipv4, localhost-nodeports enabled, multiple nodeport-addresses",
     replace(FAKE, localhost_nodeports=False, nodeport_addresses=("192.168.0.0/24", "192.168.1.0/24",
                                                                  "2001:db8::/64")),
     _NODEPORT_SVC, "filter", "KUBE-FIREWALL", []),
    ("TestNodePorts/ipv6, localhost-nodeports enabled", replace(FAKE, ipv6=True, node_ip="2001:db8::1",
     pod_cidr="fd00:10::/64"), [], "filter", "KUBE-FIREWALL", []),
    ("TestNodePorts/ipv6, localhost-nodeports disabled", replace(FAKE, ipv6=True, node_ip="2001:db8::1",
     pod_cidr="fd00:10::/64", localhost_nodeports=False), [], "filter", "KUBE-FIREWALL", []),
    ("TestNodePorts/ipv6, localhost-nodeports disabled, multiple nodeport-addresses",
     replace(FAKE, ipv6=True, node_ip="2001:db8::1", pod_cidr="fd00:10::/64", localhost_nodeports=False,
             nodeport_addresses=("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64")),
     [], "filter", "KUBE-FIREWALL", []),
]


def _service_name(rule: str) -> str | None:
    """orderByCommentServiceName's key: the comment up to its first space or colon."""
    m = re.search(r'--comment ("[^"]*"|\S+)', rule)
    if m is None:
        return None
    return re.split(r"[ :]", shlex.split(m.group(1))[0], maxsplit=1)[0]


def _by_service(rules: list[str], last: str | None = None) -> list[str]:
    """A stable sort by service name; rules without a comment keep their place relative to each other
    and sort first (Go's comparator says neither is less), `last` stays last."""
    tail = [r for r in rules if last and last in r]
    rest = [r for r in rules if r not in tail]
    return sorted(rest, key=lambda r: _service_name(r) or "") + tail


def sort_restore(text: str) -> str:
    """Upstream's sortIPTablesRules: tables by name; chains KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-*
    alphabetically, then the rest; rules grouped by chain in their own order, except KUBE-NODEPORTS and
    KUBE-SERVICES, sorted by the service their comment names."""
    tables: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = ([], {})
        elif line.startswith(":"):
            name = line[1:].split()[0]
            tables[current][0].append(name)
            tables[current][1].setdefault(name, [])
        elif line.startswith("-A "):
            tables[current][1].setdefault(line.split()[1], []).append(line)
    out: list[str] = []
    for name in sorted(tables):
        chains, rules = tables[name]
        order = sorted(chains, key=lambda c: (c != "KUBE-NODEPORTS", c != "KUBE-SERVICES", not c.startswith("KUBE-"),
                                              c))
        out.append(f"*{name}")
        out.extend(f":{c} - [0:0]" for c in order)
        for chain in order:
            lines = rules.get(chain, [])
            if chain == "KUBE-NODEPORTS" or (chain == "KUBE-SERVICES" and name == "filter"):
                lines = _by_service(lines)
            elif chain == "KUBE-SERVICES":
                lines = _by_service(lines, last="must be the last rule")
            out.extend(lines)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def chain_rules(text: str, table: str, chain: str) -> list[str]:
    section = text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in section.splitlines() if line.startswith(f"-A {chain} ")]


_NFT_OBJECTS = {"table": 0, "chain": 1, "set": 2, "map": 3, "element": 4, "rule": 5}


def sort_nft(text: str) -> str:
    """Upstream's sortNFTablesTransaction: blank and comment lines dropped, lines ordered by object type,
    then object name, rules kept in the order added, any other lines of one object by their text."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    def key(line: str) -> tuple[int, str, str]:
        words = line.split()
        kind, name = words[1], words[4] if len(words) > 4 else ""
        return _NFT_OBJECTS.get(kind, 9), name, "" if kind == "rule" else line
    return "\n".join(sorted(lines, key=key)) + "\n"
