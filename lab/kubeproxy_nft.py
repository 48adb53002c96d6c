"""kube-proxy, nftables mode: the `ip kube-proxy` table a node's kube-proxy would program, as `nft -f` input.

A pure function of the resolved scenario (and the node, for externalTrafficPolicy: Local), modelled on
upstream pkg/proxy/nftables/proxier.go (IPv4 only): the services / service-ips / service-nodeports verdict
maps dispatch to `service-<hash>-ns/name/proto/port` chains, whose `numgen random mod N vmap` picks an
`endpoint-…` chain that DNATs; `external-…` chains mark for masquerade; `masquerading` SNATs marked
packets; no-endpoint Services are rejected (goto reject-chain) through the no-endpoint-* maps in
filter chains, Services with no local endpoints dropped; unallocated ClusterIPs dropped.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from lab.scenario import ResolvedScenario, ResolvedService, ResolvedServicePort

TABLE = "kube-proxy"
MASQ_MARK = "0x4000"
CHAIN_NAME_MAX = 256 - 1


@dataclass
class NftTable:
    """Chains, sets/maps and elements of one table, rendered as a `nft -f` script."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)  # base-chain headers
    sets: list[str] = field(default_factory=list)
    elements: dict[str, list[str]] = field(default_factory=dict)

    def chain(self, name: str, head: str | None = None) -> str:
        self.chains.setdefault(name, [])
        if head:
            self.heads[name] = head
        return name

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(rule)

    def element(self, set_name: str, element: str) -> None:
        self.elements.setdefault(set_name, []).append(element)

    def render(self) -> str:
        # replace the whole table atomically, as kube-proxy's full resync does
        out = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{",
               '\tcomment "rules for kube-proxy"']
        out.extend(f"\t{s}" for s in self.sets)
        for name, rules in self.chains.items():
            out.append(f"\tchain {name} {{")
            if name in self.heads:
                out.append(f"\t\t{self.heads[name]}")
            out.extend(f"\t\t{r}" for r in rules)
            out.append("\t}")
        out.append("}")
        for set_name, elements in self.elements.items():
            out.append(f"add element ip {TABLE} {set_name} {{ {', '.join(elements)} }}")
        return "\n".join(out) + "\n"


def _hash_and_truncate(name: str) -> str:
    """Upstream hashAndTruncate: 8 chars of base32(sha256(name)), a dash, the readable name."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    full = f"{digest[:8]}-{name}"
    return full if len(full) <= CHAIN_NAME_MAX else full[: CHAIN_NAME_MAX - 3] + "..."


def _base_name(svc: ResolvedService, port: ResolvedServicePort) -> str:
    return f"{svc.spec.namespace}/{svc.spec.name}/{port.spec.protocol.lower()}/{port.spec.name or ''}"


def _display(svc: ResolvedService, port: ResolvedServicePort) -> str:
    return svc.spec.key + (f":{port.spec.name}" if port.spec.name else "")


def base_table(sc: ResolvedScenario, node: str) -> NftTable:
    t = NftTable()
    t.sets = [
        'set cluster-ips { type ipv4_addr; comment "Active ClusterIPs"; }',
        'set nodeport-ips { type ipv4_addr; comment "IPs that accept NodePort traffic"; }',
        "map firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict; "
        'comment "destinations that are subject to LoadBalancerSourceRanges"; }',
        "map no-endpoint-nodeports { type inet_proto . inet_service : verdict; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints"; }',
        "map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; "
        'comment "vmap to drop or reject packets to services with no endpoints"; }',
        "map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"; }',
        'map service-nodeports { type inet_proto . inet_service : verdict; comment "NodePort traffic"; }',
    ]
    new = "ct state new"
    t.add("cluster-ips-check", 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"')
    t.add("cluster-ips-check",
          f'ip daddr {{ {sc.scenario.service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"')
    t.chain("filter-prerouting-pre-dnat", "type filter hook prerouting priority -110; policy accept;")
    t.add("filter-prerouting-pre-dnat", f"{new} jump firewall-check")
    t.chain("filter-output-pre-dnat", "type filter hook output priority -110; policy accept;")
    t.add("filter-output-pre-dnat", f"{new} jump firewall-check")
    t.chain("filter-forward", "type filter hook forward priority 0; policy accept;")
    t.add("filter-forward", f"{new} jump service-endpoints-check")
    t.add("filter-forward", f"{new} jump cluster-ips-check")
    t.chain("filter-input", "type filter hook input priority 0; policy accept;")
    t.add("filter-input", f"{new} jump nodeport-endpoints-check")
    t.add("filter-input", f"{new} jump service-endpoints-check")
    t.chain("filter-output", "type filter hook output priority 0; policy accept;")
    t.add("filter-output", f"{new} jump service-endpoints-check")
    t.add("filter-output", f"{new} jump cluster-ips-check")
    t.add("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")
    t.add("mark-for-masquerade", f"meta mark set meta mark or {MASQ_MARK}")
    t.add("masquerading", f"meta mark & {MASQ_MARK} == 0 return")
    t.add("masquerading", f"meta mark set meta mark xor {MASQ_MARK}")
    t.add("masquerading", "masquerade fully-random")
    t.chain("nat-output", "type nat hook output priority -100; policy accept;")
    t.add("nat-output", "jump services")
    t.chain("nat-postrouting", "type nat hook postrouting priority 100; policy accept;")
    t.add("nat-postrouting", "jump masquerading")
    t.chain("nat-prerouting", "type nat hook prerouting priority -100; policy accept;")
    t.add("nat-prerouting", "jump services")
    t.add("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
    t.add("reject-chain", "reject")
    t.add("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
    t.add("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
    t.add("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
    t.element("nodeport-ips", sc.node(node).ip)
    return t


def _numgen(chains: list[str]) -> str:
    arms = " , ".join(f"{i} : goto {c}" for i, c in enumerate(chains))
    return f"numgen random mod {len(chains)} vmap {{ {arms} }}"


def _service_port(t: NftTable, sc: ResolvedScenario, svc: ResolvedService, port: ResolvedServicePort,
                  node: str) -> None:
    base, name = _base_name(svc, port), _display(svc, port)
    proto = port.spec.protocol.lower()
    endpoints = [e for e in port.endpoints if e.ready and e.port is not None]
    local = svc.spec.external_traffic_policy == "Local"
    external_endpoints = [e for e in endpoints if e.node == node] if local else endpoints
    cluster_cidr = sc.scenario.cluster_cidr
    svc_chain = f"service-{_hash_and_truncate(base)}"
    ext_chain = f"external-{_hash_and_truncate(base)}"

    ep_chains = {}
    for ep in endpoints:
        chain = t.chain(f"endpoint-{_hash_and_truncate(f'{base}__{ep.ip}/{ep.port}')}")
        t.add(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")
        t.add(chain, f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
        ep_chains[ep.ip, ep.port] = chain
    if endpoints:
        if svc.cluster_ip:
            t.add(svc_chain, f"ip daddr {svc.cluster_ip} ip saddr != {cluster_cidr} jump mark-for-masquerade")
        t.add(svc_chain, _numgen([ep_chains[e.ip, e.port] for e in endpoints]))

    def to(ip: str, p: int, chain: str) -> str:
        return f"{ip} . {proto} . {p} : goto {chain}"

    def no_endpoint(ip: str | None, p: int, verdict: str) -> None:
        key = f"{ip} . {proto} . {p}" if ip else f"{proto} . {p}"
        t.element("no-endpoint-services" if ip else "no-endpoint-nodeports", f'{key} comment "{name}" : {verdict}')

    if svc.cluster_ip:
        t.element("cluster-ips", svc.cluster_ip)
        if endpoints:
            t.element("service-ips", to(svc.cluster_ip, port.spec.port, svc_chain))
        else:
            no_endpoint(svc.cluster_ip, port.spec.port, "goto reject-chain")

    externals = list(svc.spec.external_ips)
    if svc.spec.type == "LoadBalancer" and svc.load_balancer_ip:
        externals.append(svc.load_balancer_ip)
    if not externals and port.node_port is None:
        return
    if not external_endpoints:
        verdict = "drop" if endpoints else "goto reject-chain"
        for ip in externals:
            no_endpoint(ip, port.spec.port, verdict)
        if port.node_port is not None:
            no_endpoint(None, port.node_port, verdict)
        return
    if local:
        local_chain = f"local-{_hash_and_truncate(base)}"
        t.add(ext_chain, f'ip saddr {cluster_cidr} goto {svc_chain} comment "short-circuit pod traffic"')
        t.add(ext_chain, 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
        t.add(ext_chain, f'fib saddr type local goto {svc_chain} comment "short-circuit local traffic"')
        t.add(ext_chain, f"goto {local_chain}")
        t.add(local_chain, _numgen([ep_chains[e.ip, e.port] for e in external_endpoints]))
    else:
        t.add(ext_chain, "jump mark-for-masquerade")
        t.add(ext_chain, f"goto {svc_chain}")
    ranges = svc.spec.load_balancer_source_ranges
    for ip in externals:
        t.element("service-ips", to(ip, port.spec.port, ext_chain))
        if ranges and ip == svc.load_balancer_ip:
            fw_chain = f"firewall-{_hash_and_truncate(base)}"
            t.add(fw_chain, f"ip saddr != {{ {', '.join(ranges)} }} drop")
            t.element("firewall-ips", to(ip, port.spec.port, fw_chain))
    if port.node_port is not None:
        t.element("service-nodeports", f"{proto} . {port.node_port} : goto {ext_chain}")


def table(sc: ResolvedScenario, node: str) -> NftTable:
    t = base_table(sc, node)
    for svc in sorted(sc.services, key=lambda s: s.spec.key):
        if svc.cluster_ip is None:  # headless: DNS only, no proxying
            continue
        for port in svc.ports:
            _service_port(t, sc, svc, port, node)
    return t


def nft_script(sc: ResolvedScenario, node: str) -> str:
    return table(sc, node).render()
