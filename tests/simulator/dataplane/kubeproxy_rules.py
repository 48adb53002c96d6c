"""A small generator of kube-proxy (iptables mode) rulesets, in the exact shape syncProxyRules writes.

The shapes follow the expected dumps of kube-proxy's TestOverallIPTablesRules (pkg/proxy/iptables/
proxier_test.go); the cases built from them (tests/simulator/dataplane/test_kubeproxy_flows.py) are
transcribed from that file with their expected outputs. Also used by bench/dataplane.py.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field

POD_CIDR = "10.0.0.0/8"
MASQ_MARK = "0x4000"


@dataclass
class Endpoint:
    ip: str
    port: int
    local: bool = False


@dataclass
class Service:
    name: str  # "ns1/svc1:p80"
    cluster_ip: str
    port: int
    protocol: str = "tcp"
    endpoints: list[Endpoint] = field(default_factory=list)
    node_port: int | None = None
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    etp_local: bool = False
    health_check_node_port: int | None = None


def _hash(prefix: str, text: str) -> str:
    return prefix + base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _c(text: str) -> str:
    return f'"{text}"' if " " in text else text


def kube_proxy_save(services: list[Service], node_ip: str = "192.168.0.2", localhost_nodeports: bool = True) -> str:
    """iptables-save text for `services` on a node whose primary address is node_ip."""
    f_chains = ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
                "KUBE-PROXY-FIREWALL"]
    f: list[str] = [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A INPUT -j KUBE-FIREWALL",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
        "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
    ]
    n_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    n: list[str] = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    svc_rules: list[str] = []
    nodeport_rules: list[str] = []
    for s in services:
        p, proto = s.port, s.protocol
        pm = f"-m {proto} -p {proto}"
        key = f"{s.name}/{proto}"
        svc, ext, fw, svl = (_hash(x, key) for x in ("KUBE-SVC-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-"))
        externals = s.node_port is not None or s.external_ips or s.lb_ips
        if s.health_check_node_port:
            f.append(f'-A KUBE-NODEPORTS -m comment --comment "{s.name} health check node port" -m tcp -p tcp '
                     f"--dport {s.health_check_node_port} -j ACCEPT")
        if not s.endpoints:
            f.append(f'-A KUBE-SERVICES -m comment --comment "{s.name} has no endpoints" {pm} -d {s.cluster_ip} '
                     f"--dport {p} -j REJECT")
            for ip in s.external_ips + s.lb_ips:
                f.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{s.name} has no endpoints" {pm} -d {ip} '
                         f"--dport {p} -j REJECT")
            if s.node_port:
                f.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{s.name} has no endpoints" -m addrtype '
                         f"--dst-type LOCAL {pm} --dport {s.node_port} -j REJECT")
            continue
        local_eps = [e for e in s.endpoints if e.local]
        if s.etp_local and not local_eps:
            for ip in s.external_ips + s.lb_ips:
                f.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{s.name} has no local endpoints" {pm} '
                         f"-d {ip} --dport {p} -j DROP")
            if s.node_port:
                f.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{s.name} has no local endpoints" '
                         f"-m addrtype --dst-type LOCAL {pm} --dport {s.node_port} -j DROP")
        n_chains.append(svc)
        svc_rules.append(f'-A KUBE-SERVICES -m comment --comment "{s.name} cluster IP" {pm} -d {s.cluster_ip} '
                         f"--dport {p} -j {svc}")
        for ip in s.external_ips:
            svc_rules.append(f'-A KUBE-SERVICES -m comment --comment "{s.name} external IP" {pm} -d {ip} '
                             f"--dport {p} -j {ext}")
        for ip in s.lb_ips:
            svc_rules.append(f'-A KUBE-SERVICES -m comment --comment "{s.name} loadbalancer IP" {pm} -d {ip} '
                             f"--dport {p} -j {fw if s.source_ranges else ext}")
        if s.node_port:
            if localhost_nodeports:
                nodeport_rules.append(f"-A KUBE-NODEPORTS -m comment --comment {_c(s.name)} {pm} -d 127.0.0.0/8 "
                                      f"--dport {s.node_port} -m nfacct --nfacct-name localhost_nps_accepted_pkts "
                                      f"-j {ext}")
            nodeport_rules.append(f"-A KUBE-NODEPORTS -m comment --comment {_c(s.name)} {pm} --dport {s.node_port} "
                                  f"-j {ext}")
        if externals:
            n_chains.append(ext)
            if s.etp_local:
                n += [f'-A {ext} -m comment --comment "pod traffic for {s.name} external destinations" '
                      f"-s {POD_CIDR} -j {svc}",
                      f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {s.name} external destinations" '
                      f"-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                      f'-A {ext} -m comment --comment "route LOCAL traffic for {s.name} external destinations" '
                      f"-m addrtype --src-type LOCAL -j {svc}"]
                if local_eps:
                    n.append(f"-A {ext} -j {svl}")
            else:
                n += [f'-A {ext} -m comment --comment "masquerade traffic for {s.name} external destinations" '
                      "-j KUBE-MARK-MASQ", f"-A {ext} -j {svc}"]
        if s.source_ranges and s.lb_ips:
            n_chains.append(fw)
            for r in s.source_ranges:
                n.append(f'-A {fw} -m comment --comment "{s.name} loadbalancer IP" -s {r} -j {ext}')
            if any(_in(node_ip, r) for r in s.source_ranges):
                for ip in s.lb_ips:
                    n.append(f'-A {fw} -m comment --comment "{s.name} loadbalancer IP" -s {ip} -j {ext}')
            n.append(f'-A {fw} -m comment --comment "other traffic to {s.name} will be dropped by '
                     'KUBE-PROXY-FIREWALL"')
            for ip in s.lb_ips:
                f.append(f'-A KUBE-PROXY-FIREWALL -m comment --comment "{s.name} traffic not accepted by {fw}" {pm} '
                         f"-d {ip} --dport {p} -j DROP")
        n.append(f'-A {svc} -m comment --comment "{s.name} cluster IP" {pm} -d {s.cluster_ip} --dport {p} '
                 f"! -s {POD_CIDR} -j KUBE-MARK-MASQ")
        n += _balance(svc, s, s.endpoints, n_chains)
        if s.etp_local and local_eps:
            n_chains.append(svl)
            n += _balance(svl, s, local_eps, n_chains)
    last = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
            'in this chain" -m addrtype --dst-type LOCAL')
    svc_rules.append(last + (" -j KUBE-NODEPORTS" if localhost_nodeports else " ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"))
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    out += [f":{c} - [0:0]" for c in f_chains] + f + ["COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]",
                                                       ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                                                       ":POSTROUTING ACCEPT [0:0]"]
    out += [f":{c} - [0:0]" for c in dict.fromkeys(n_chains)] + svc_rules + nodeport_rules + n + ["COMMIT", ""]
    return "\n".join(out)


def _balance(chain: str, s: Service, eps: list[Endpoint], n_chains: list[str]) -> list[str]:
    rules = []
    for i, e in enumerate(eps):
        sep = _hash("KUBE-SEP-", f"{s.name}/{s.protocol}/{e.ip}:{e.port}")
        left = len(eps) - i
        stat = f" -m statistic --mode random --probability {1 / left:.10f}" if left > 1 else ""
        rules.append(f'-A {chain} -m comment --comment "{s.name} -> {e.ip}:{e.port}"{stat} -j {sep}')
        if sep not in n_chains:
            n_chains.append(sep)
            rules += [f"-A {sep} -m comment --comment {_c(s.name)} -s {e.ip} -j KUBE-MARK-MASQ",
                      f"-A {sep} -m comment --comment {_c(s.name)} -m {s.protocol} -p {s.protocol} -j DNAT "
                      f"--to-destination {e.ip}:{e.port}"]
    return rules


def _in(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr.strip(), strict=False)
