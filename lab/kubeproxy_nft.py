"""kube-proxy, nftables mode: the `ip kube-proxy` table a node's kube-proxy programs, as upstream writes it.

A port of upstream pkg/proxy/nftables/proxier.go (IPv4) for the features the lab uses, checked against
upstream's `TestOverallNFTablesRules` (tests/lab/test_kubeproxy_upstream.py): `payload(ports, config)` is
the transaction of one full sync in knftables' dump syntax (`add table/set/map/chain/rule/element ...`),
which `nft -f` reads as is. The services / service-ips / service-nodeports verdict maps dispatch to
`service-<hash>-ns/name/proto/port` chains, whose `numgen random mod N vmap` picks an `endpoint-…` chain
that DNATs; `external-…` chains mark for masquerade (or short-circuit pod and local traffic under
externalTrafficPolicy Local); `firewall-…` chains enforce loadBalancerSourceRanges; ClientIP affinity
uses `affinity-…` dynamic sets; no-endpoint Services are rejected (goto reject-chain) and Services
without local endpoints dropped through the no-endpoint-* maps; unallocated ClusterIPs are dropped.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from lab.kubeproxy import MASQ_MARK, Config, Endpoint, ServicePort, categorize, scenario_ports
from lab.scenario import ResolvedScenario

TABLE = "kube-proxy"
CHAIN_NAME_MAX = 256 - 1
_T = f"ip {TABLE}"
_KEY = "ipv4_addr . inet_proto . inet_service"


def _hash_and_truncate(name: str) -> str:
    """Upstream hashAndTruncate: 8 chars of base32(sha256(name)), a dash, the readable name."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    full = f"{digest[:8]}-{name}"
    return full if len(full) <= CHAIN_NAME_MAX else full[: CHAIN_NAME_MAX - 3] + "..."


def _base(sp: ServicePort) -> str:
    return f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}"


def _ep_base(sp: ServicePort, ep: Endpoint) -> str:
    return f"{_base(sp)}__{ep.ip}/{ep.port}"


class _Tx:
    """The lines of one transaction, in the order a full sync adds them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, kind: str, rest: str) -> None:
        self.lines.append(f"add {kind} {_T} {rest}")

    def rule(self, chain: str, rule: str) -> None:
        self.add("rule", f"{chain} {rule}")


def _base_rules(tx: _Tx, config: Config) -> None:
    tx.lines.append(f'add table {_T} {{ comment "rules for kube-proxy" ; }}')
    tx.add("set", 'cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }')
    tx.add("set", 'nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }')
    for name, key, comment in (
            ("firewall-ips", _KEY, "destinations that are subject to LoadBalancerSourceRanges"),
            ("no-endpoint-nodeports", "inet_proto . inet_service",
             "vmap to drop or reject packets to service nodeports with no endpoints"),
            ("no-endpoint-services", _KEY, "vmap to drop or reject packets to services with no endpoints"),
            ("service-ips", _KEY, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
            ("service-nodeports", "inet_proto . inet_service", "NodePort traffic")):
        tx.add("map", f'{name} {{ type {key} : verdict ; comment "{comment}" ; }}')
    for name, hook in (
            ("cluster-ips-check", None), ("filter-prerouting-pre-dnat", "filter hook prerouting priority -110"),
            ("filter-output-pre-dnat", "filter hook output priority -110"),
            ("filter-forward", "filter hook forward priority 0"), ("filter-input", "filter hook input priority 0"),
            ("filter-output", "filter hook output priority 0"), ("firewall-check", None),
            ("mark-for-masquerade", None), ("masquerading", None), ("nat-output", "nat hook output priority -100"),
            ("nat-postrouting", "nat hook postrouting priority 100"),
            ("nat-prerouting", "nat hook prerouting priority -100"), ("nodeport-endpoints-check", None),
            ("reject-chain", None), ("services", None), ("service-endpoints-check", None)):
        head = (f" {{ type {hook} ; }}" if hook else
                ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'
                if name == "reject-chain" else "")
        tx.add("chain", name + head)
    new = "ct state new"
    tx.rule("cluster-ips-check", 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"')
    tx.rule("cluster-ips-check",
            f'ip daddr {{ {config.service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"')
    tx.rule("filter-prerouting-pre-dnat", f"{new} jump firewall-check")
    tx.rule("filter-forward", f"{new} jump service-endpoints-check")
    tx.rule("filter-forward", f"{new} jump cluster-ips-check")
    tx.rule("filter-input", f"{new} jump nodeport-endpoints-check")
    tx.rule("filter-input", f"{new} jump service-endpoints-check")
    tx.rule("filter-output", f"{new} jump service-endpoints-check")
    tx.rule("filter-output-pre-dnat", f"{new} jump firewall-check")
    tx.rule("filter-output", f"{new} jump cluster-ips-check")
    tx.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")
    tx.rule("mark-for-masquerade", f"mark set mark or {MASQ_MARK}")
    tx.rule("masquerading", f"mark and {MASQ_MARK} == 0 return")
    tx.rule("masquerading", f"mark set mark xor {MASQ_MARK}")
    tx.rule("masquerading", "masquerade fully-random")
    tx.rule("nat-output", "jump services")
    tx.rule("nat-postrouting", "jump masquerading")
    tx.rule("nat-prerouting", "jump services")
    tx.rule("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
    tx.rule("reject-chain", "reject")
    tx.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
    tx.rule("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
    node_ip = ipaddress.ip_address(config.node_ip)
    if any(n.version == 4 and node_ip in n for n in map(ipaddress.ip_network, config.nodeport_addresses)):
        tx.add("element", f"nodeport-ips {{ {config.node_ip} }}")
    tx.rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services")


def _service(tx: _Tx, sp: ServicePort, config: Config) -> None:
    if not sp.cluster_ip or sp.cluster_ip == "None":
        return
    proto, base, key = sp.protocol.lower(), _base(sp), sp.key
    h = _hash_and_truncate(base)
    svc_chain, ext_chain, local_chain, fw_chain = (f"service-{h}", f"external-{h}", f"local-{h}",
                                                   f"firewall-{h}")
    eps = categorize(sp, config.node)
    cluster_eps, local_eps, reachable = eps.cluster, eps.local, eps.reachable
    has_endpoints, has_internal, has_external = eps.has_endpoints, eps.has_internal, eps.has_external
    uses_ext, uses_fw = eps.uses_external_chain, eps.uses_firewall
    internal_chain = local_chain if sp.itp_local else svc_chain
    external_policy_chain = local_chain if sp.etp_local else svc_chain
    verdict = "goto reject-chain" if not has_endpoints else "drop"
    ep_chain = {ep: f"endpoint-{_hash_and_truncate(_ep_base(sp, ep))}" for ep in reachable}
    affinity = {ep: f"affinity-{_hash_and_truncate(_ep_base(sp, ep))}" for ep in reachable}

    def to_endpoints(chain: str, endpoints: list[Endpoint]) -> None:
        tx.add("chain", chain)
        if chain == internal_chain and has_internal:  # off-cluster traffic to the ClusterIP is masqueraded
            masq = f"ip daddr {sp.cluster_ip}" + ("" if config.masquerade_all else f" ip saddr != {config.pod_cidr}")
            if config.masquerade_all or config.pod_cidr:
                tx.rule(chain, f"{masq} jump mark-for-masquerade")
        if sp.affinity_timeout:
            for ep in endpoints:
                tx.rule(chain, f"ip saddr @{affinity[ep]} goto {ep_chain[ep]}")
        arms = " , ".join(f"{i} : goto {ep_chain[ep]}" for i, ep in enumerate(endpoints))
        tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {arms} }}")

    if sp.affinity_timeout:
        for ep in reachable:
            tx.add("set", f"{affinity[ep]} {{ type ipv4_addr ; flags dynamic,timeout ; "
                          f"timeout {sp.affinity_timeout}s ; }}")
    if cluster_eps:
        to_endpoints(svc_chain, cluster_eps)
    if local_eps:
        to_endpoints(local_chain, local_eps)
    if uses_ext:
        tx.add("chain", ext_chain)
        if not sp.etp_local:
            tx.rule(ext_chain, "jump mark-for-masquerade")
        else:
            if config.pod_cidr:
                tx.rule(ext_chain, f'ip saddr {config.pod_cidr} goto {svc_chain} comment "short-circuit pod traffic"')
            tx.rule(ext_chain, 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
            tx.rule(ext_chain, f'fib saddr type local goto {svc_chain} comment "short-circuit local traffic"')
        if has_external:
            tx.rule(ext_chain, f"goto {external_policy_chain}")
    for ep in reachable:
        chain = ep_chain[ep]
        tx.add("chain", chain)
        tx.rule(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")
        if sp.affinity_timeout:
            tx.rule(chain, f"update @{affinity[ep]} {{ ip saddr }}")
        tx.rule(chain, f"meta l4proto {proto} dnat to {ep}")
    if uses_fw:
        allowed = [str(ipaddress.ip_network(r.strip(), strict=False)) for r in sp.source_ranges]
        node_ip = ipaddress.ip_address(config.node_ip)
        if any(node_ip in ipaddress.ip_network(r) for r in allowed):  # a node reaching its VIP comes from it
            allowed += list(sp.lb_ips)
        tx.add("chain", fw_chain)
        tx.rule(fw_chain, f"ip saddr != {{ {', '.join(allowed)} }} drop")

    def element(name: str, entry: str) -> None:
        tx.add("element", f"{name} {{ {entry} }}")

    def no_endpoint(name: str, match: str) -> None:
        element(name, f'{match} comment "{key}" : {verdict}')

    element("cluster-ips", sp.cluster_ip)
    if has_internal:
        element("service-ips", f"{sp.cluster_ip} . {proto} . {sp.port} : goto {internal_chain}")
    else:
        no_endpoint("no-endpoint-services", f"{sp.cluster_ip} . {proto} . {sp.port}")
    for ip in (*sp.external_ips, *sp.lb_ips):
        if has_endpoints:
            element("service-ips", f"{ip} . {proto} . {sp.port} : goto {ext_chain}")
        if not has_external:
            no_endpoint("no-endpoint-services", f"{ip} . {proto} . {sp.port}")
    if sp.node_port:
        if has_endpoints:
            element("service-nodeports", f"{proto} . {sp.node_port} : goto {ext_chain}")
        if not has_external:
            no_endpoint("no-endpoint-nodeports", f"{proto} . {sp.node_port}")
    if uses_fw:
        for ip in sp.lb_ips:
            element("firewall-ips", f"{ip} . {proto} . {sp.port} : goto {fw_chain}")


def payload(ports: list[ServicePort], config: Config) -> str:
    """One full sync's transaction, as upstream's knftables fake dumps it."""
    tx = _Tx()
    _base_rules(tx, config)
    for sp in ports:
        _service(tx, sp, config)
    return "\n".join(tx.lines) + "\n"


def nft_script(sc: ResolvedScenario, node: str) -> str:
    """`nft -f` input replacing the node's whole table atomically, as kube-proxy's full resync does."""
    n = sc.node(node)
    config = Config(node=node, node_ip=n.ip, pod_cidr=sc.scenario.cluster_cidr,
                    service_cidr=sc.scenario.service_cidr, nodeport_addresses=(f"{n.ip}/32",))
    lines = payload(scenario_ports(sc), config).splitlines()
    # `nft -f` resolves a goto when it reads the rule: declare every object before the rules and
    # elements that name them (the same transaction, reordered)
    declared = [line for line in lines if line.split()[1] in ("table", "set", "map", "chain")]
    rest = [line for line in lines if line.split()[1] not in ("table", "set", "map", "chain")]
    return "\n".join([f"add table {_T}", f"delete table {_T}", *declared, *rest]) + "\n"
