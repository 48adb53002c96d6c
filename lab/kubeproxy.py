"""kube-proxy, iptables mode: the rules a node's kube-proxy would program for the resolved scenario.

A pure function of the scenario (and the node, for externalTrafficPolicy: Local), modelled on upstream
pkg/proxy/iptables/proxier.go: chain names (KUBE-SVC/SEP/EXT/SVL/FW-<base32(sha256)>), comments,
`statistic --mode random` endpoint selection, KUBE-MARK-MASQ / KUBE-POSTROUTING (mark 0x4000), NodePorts,
LoadBalancer ingress IPs with loadBalancerSourceRanges, externalIPs, and REJECT/DROP for Services
without (local) endpoints in filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES. Only ready endpoints count.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.iptables import Ruleset, chain_hash, comment
from lab.scenario import ResolvedScenario, ResolvedService, ResolvedServicePort

MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class _Endpoint:
    ip: str
    port: int
    node: str

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def base_rules() -> Ruleset:
    rs = Ruleset()
    for chain in ("KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                  "KUBE-SERVICES", "KUBE-PROXY-CANARY"):
        rs.chain("filter", chain)
    new = "-m conntrack --ctstate NEW"
    rs.add("filter", "INPUT", f'{new} {comment("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL')
    rs.add("filter", "INPUT", f'{comment("kubernetes health check service ports")} -j KUBE-NODEPORTS')
    rs.add("filter", "INPUT",
           f'{new} {comment("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES')
    rs.add("filter", "FORWARD", f'{new} {comment("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL')
    rs.add("filter", "FORWARD", f'{comment("kubernetes forwarding rules")} -j KUBE-FORWARD')
    rs.add("filter", "FORWARD", f'{new} {comment("kubernetes service portals")} -j KUBE-SERVICES')
    rs.add("filter", "FORWARD",
           f'{new} {comment("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES')
    rs.add("filter", "OUTPUT", f'{new} {comment("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL')
    rs.add("filter", "OUTPUT", f'{new} {comment("kubernetes service portals")} -j KUBE-SERVICES')
    rs.add("filter", "KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    rs.add("filter", "KUBE-FORWARD",
           f'{comment("kubernetes forwarding rules")} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT')
    rs.add("filter", "KUBE-FORWARD", f'{comment("kubernetes forwarding conntrack rule")} '
           "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

    for chain in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY"):
        rs.chain("nat", chain)
    rs.add("nat", "PREROUTING", f'{comment("kubernetes service portals")} -j KUBE-SERVICES')
    rs.add("nat", "OUTPUT", f'{comment("kubernetes service portals")} -j KUBE-SERVICES')
    rs.add("nat", "POSTROUTING", f'{comment("kubernetes postrouting rules")} -j KUBE-POSTROUTING')
    rs.add("nat", "KUBE-MARK-MASQ", f"-j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}")
    rs.add("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    rs.add("nat", "KUBE-POSTROUTING", f"-j MARK --set-xmark {MASQ_MARK}/0x0")
    rs.add("nat", "KUBE-POSTROUTING",
           f'{comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully')
    return rs


def port_name(svc: ResolvedService, port: ResolvedServicePort) -> str:
    """Upstream ServicePortName.String(): "ns/name" plus ":portname" when the port is named."""
    return svc.spec.key + (f":{port.spec.name}" if port.spec.name else "")


def _probability(index: int, count: int) -> str:
    return f"-m statistic --mode random --probability {1.0 / (count - index):0.10f} "


def _endpoint_jumps(rs: Ruleset, chain: str, name: str, proto: str, endpoints: list[_Endpoint]) -> None:
    for i, ep in enumerate(endpoints):
        sep = chain_hash("KUBE-SEP-", name, proto, ep.address)
        stat = _probability(i, len(endpoints)) if i < len(endpoints) - 1 else ""
        rs.add("nat", chain, f'{comment(f"{name} -> {ep.address}")} {stat}-j {sep}')


def _service_port_rules(rs: Ruleset, sc: ResolvedScenario, svc: ResolvedService, port: ResolvedServicePort,
                        node: str) -> None:
    name = port_name(svc, port)
    proto = port.spec.protocol.lower()
    match_port = f"-p {proto} -m {proto} --dport"
    endpoints = [_Endpoint(e.ip, e.port, e.node) for e in port.endpoints if e.ready and e.port is not None]
    local = svc.spec.external_traffic_policy == "Local"
    external_endpoints = [e for e in endpoints if e.node == node] if local else endpoints
    svc_chain = chain_hash("KUBE-SVC-", name, proto)
    ext_chain = chain_hash("KUBE-EXT-", name, proto)
    cluster_cidr = sc.scenario.cluster_cidr

    if endpoints:
        for ep in endpoints:
            sep = rs.chain("nat", chain_hash("KUBE-SEP-", name, proto, ep.address))
            rs.add("nat", sep, f'-s {ep.ip}/32 {comment(name)} -j KUBE-MARK-MASQ')
            rs.add("nat", sep, f"-p {proto} {comment(name)} -m {proto} -j DNAT --to-destination {ep.address}")
        rs.chain("nat", svc_chain)
        if svc.cluster_ip:
            rs.add("nat", svc_chain, f'! -s {cluster_cidr} -d {svc.cluster_ip}/32 '
                   f'{comment(f"{name} cluster IP")} {match_port} {port.spec.port} -j KUBE-MARK-MASQ')
        _endpoint_jumps(rs, svc_chain, name, proto, endpoints)

    if svc.cluster_ip:
        if endpoints:
            rs.add("nat", "KUBE-SERVICES", f'-d {svc.cluster_ip}/32 {comment(f"{name} cluster IP")} '
                   f"{match_port} {port.spec.port} -j {svc_chain}")
        else:
            rs.add("filter", "KUBE-SERVICES", f'-d {svc.cluster_ip}/32 {comment(f"{name} has no endpoints")} '
                   f"{match_port} {port.spec.port} -j REJECT --reject-with icmp-port-unreachable")

    externals: list[tuple[str, str]] = [(ip, "external IP") for ip in svc.spec.external_ips]
    if svc.spec.type == "LoadBalancer" and svc.load_balancer_ip:
        externals.append((svc.load_balancer_ip, "loadbalancer IP"))
    has_external = bool(externals) or port.node_port is not None
    if not has_external:
        return
    if not external_endpoints:
        reason, target = (("has no local endpoints", "DROP") if endpoints
                          else ("has no endpoints", "REJECT --reject-with icmp-port-unreachable"))
        for ip, _ in externals:
            rs.add("filter", "KUBE-EXTERNAL-SERVICES", f'-d {ip}/32 {comment(f"{name} {reason}")} '
                   f"{match_port} {port.spec.port} -j {target}")
        if port.node_port is not None:
            rs.add("filter", "KUBE-EXTERNAL-SERVICES", f'{comment(f"{name} {reason}")} '
                   f"-m addrtype --dst-type LOCAL {match_port} {port.node_port} -j {target}")
        return

    rs.chain("nat", ext_chain)
    if local:
        svl_chain = rs.chain("nat", chain_hash("KUBE-SVL-", name, proto))
        rs.add("nat", ext_chain, f'-s {cluster_cidr} {comment(f"pod traffic for {name} external destinations")} '
               f"-j {svc_chain}")
        rs.add("nat", ext_chain, f'{comment(f"masquerade LOCAL traffic for {name} external destinations")} '
               "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
        rs.add("nat", ext_chain, f'{comment(f"route LOCAL traffic for {name} external destinations")} '
               f"-m addrtype --src-type LOCAL -j {svc_chain}")
        rs.add("nat", ext_chain, f"-j {svl_chain}")
        _endpoint_jumps(rs, svl_chain, name, proto, external_endpoints)
    else:
        rs.add("nat", ext_chain, f'{comment(f"masquerade traffic for {name} external destinations")} '
               "-j KUBE-MARK-MASQ")
        rs.add("nat", ext_chain, f"-j {svc_chain}")

    for ip, kind in externals:
        target = ext_chain
        ranges = svc.spec.load_balancer_source_ranges if kind == "loadbalancer IP" else []
        if ranges:
            target = rs.chain("nat", chain_hash("KUBE-FW-", name, proto))
            for cidr in ranges:
                rs.add("nat", target, f'-s {cidr} {comment(f"{name} loadbalancer IP")} -j {ext_chain}')
            rs.add("filter", "KUBE-PROXY-FIREWALL", f'-d {ip}/32 '
                   f'{comment(f"{name} traffic not accepted by {target}")} {match_port} {port.spec.port} -j DROP')
        rs.add("nat", "KUBE-SERVICES", f'-d {ip}/32 {comment(f"{name} {kind}")} '
               f"{match_port} {port.spec.port} -j {target}")
    if port.node_port is not None:
        rs.add("nat", "KUBE-NODEPORTS", f'{comment(name)} {match_port} {port.node_port} -j {ext_chain}')


def rules(sc: ResolvedScenario, node: str) -> Ruleset:
    """Everything kube-proxy programs on `node` (filter + nat)."""
    rs = base_rules()
    for svc in sorted(sc.services, key=lambda s: s.spec.key):
        if svc.cluster_ip is None:  # headless: DNS only, no proxying
            continue
        for port in svc.ports:
            _service_port_rules(rs, sc, svc, port, node)
    last = comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    rs.add("nat", "KUBE-SERVICES", f"{last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    return rs


def restore_text(sc: ResolvedScenario, node: str) -> str:
    return rules(sc, node).render()
