"""kube-proxy, iptables mode: the rules a node's kube-proxy programs, as upstream writes them.

A port of upstream pkg/proxy/iptables/proxier.go `syncProxyRules` for the features the lab uses, checked
line for line against upstream's own unit tests (tests/lab/test_kubeproxy_upstream.py replays
`TestOverallIPTablesRules` and friends on the same Services and EndpointSlices):

* `payload(ports, config)` is the `iptables-restore` input of one full sync (filter + nat, KUBE-* chains
  only), with upstream's argument order, comments and chain names (KUBE-SVC/SVL/EXT/FW/SEP-<base32(sha256)>);
* `ensured(config)` is what kube-proxy adds with `EnsureChain`/`EnsureRule` outside the payload: the jumps
  from the built-in chains (each prepended, so the last one ensured is first) and the canary chains;
* `rules(sc, node)` turns a lab scenario into both, for the node's single `iptables-restore`.

Covered: ClusterIP, NodePort (with localhost NodePorts), externalIPs, LoadBalancer ingress with
loadBalancerSourceRanges, external/internal traffic policy Local, ClientIP session affinity, health-check
NodePorts, REJECT/DROP for Services without (local) endpoints, nfacct counters when the kernel has them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from lab.iptables import Ruleset, chain_hash
from lab.scenario import ResolvedScenario

MASQ_MARK = "0x4000"
LOCALHOST_NODEPORTS_COUNTER = "localhost_nps_accepted_pkts"
INVALID_DROPPED_COUNTER = "ct_state_invalid_dropped_pkts"
LAST_RULE = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'

# (table, chain, jumped-from chain, comment, extra match) in upstream's iptablesJumpChains order, then
# iptablesKubeletJumpChains (KUBE-FIREWALL, only with localhost NodePorts).
JUMPS = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", True),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", True),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", False),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", True),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", True),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", False),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", True),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", True),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", True),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", False),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", False),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", False),
)
KUBELET_JUMPS = (("filter", "KUBE-FIREWALL", "INPUT"), ("filter", "KUBE-FIREWALL", "OUTPUT"))


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    node: str | None = None  # EndpointSlice nodeName; None is never local
    ready: bool = True

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service with its endpoints: upstream's ServicePortName plus serviceInfo."""

    namespace: str
    name: str
    port_name: str
    port: int
    protocol: str = "TCP"
    cluster_ip: str | None = None
    load_balancer: bool = False  # type LoadBalancer
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    source_ranges: tuple[str, ...] = ()
    etp_local: bool = False
    itp_local: bool = False
    health_check_node_port: int | None = None  # kept only for LoadBalancer + externalTrafficPolicy Local
    affinity_timeout: int | None = None  # ClientIP session affinity (seconds)
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        """ServicePortName.String(): "ns/name" plus ":port" when the port is named."""
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_ips or self.external_ips)


@dataclass(frozen=True)
class Categorized:
    """Upstream `proxy.CategorizeEndpoints` for one Service port on one node, and what both proxiers
    (iptables and nftables) decide from it before writing a rule."""

    cluster: list[Endpoint]  # what the cluster-wide policy chain load-balances over
    local: list[Endpoint]  # this node's, for a Local traffic policy
    reachable: list[Endpoint]  # every endpoint some chain DNATs to
    has_internal: bool  # ClusterIP traffic has somewhere to go under internalTrafficPolicy
    has_external: bool  # external traffic (NodePort, externalIPs, LB) has somewhere to go under its policy
    uses_external_chain: bool
    uses_firewall: bool  # loadBalancerSourceRanges on a LoadBalancer IP

    @property
    def has_endpoints(self) -> bool:
        return bool(self.reachable)


def categorize(sp: ServicePort, node: str) -> Categorized:
    ready = sorted((e for e in sp.endpoints if e.ready), key=lambda e: (e.ip, e.port))
    uses_cluster = not sp.itp_local or (sp.externally_accessible and not sp.etp_local)
    uses_local = sp.itp_local or (sp.externally_accessible and sp.etp_local)
    cluster = ready if uses_cluster else []
    local = [e for e in ready if e.node == node] if uses_local else []
    reachable = [e for e in ready if e in cluster or e in local]
    has_endpoints = bool(reachable)
    return Categorized(
        cluster=cluster, local=local, reachable=reachable,
        has_internal=has_endpoints and (bool(local) if sp.itp_local else True),
        has_external=has_endpoints and (bool(local) if sp.etp_local else True),
        uses_external_chain=has_endpoints and sp.externally_accessible,
        uses_firewall=has_endpoints and bool(sp.lb_ips) and bool(sp.source_ranges))


@dataclass(frozen=True)
class Config:
    """What NewProxier is given: the node, the local-traffic detector's pod CIDR, and what the host has."""

    node: str
    node_ip: str
    pod_cidr: str | None = "10.0.0.0/8"  # None: no LocalTrafficDetector
    service_cidr: str = "172.30.0.0/16"  # nftables mode drops traffic to unallocated ClusterIPs in it
    masquerade_all: bool = False
    localhost_nodeports: bool = True
    nodeport_addresses: tuple[str, ...] = ()  # empty: every local address
    nfacct: bool = True  # the nfacct counters could be created (xt_nfacct in the kernel)
    random_fully: bool = False  # iptables supports MASQUERADE --random-fully
    tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal: no INVALID drop
    ipv6: bool = False  # the IPv6 proxier: localhost NodePorts never work there


@dataclass
class _Table:
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain(self, name: str) -> str:
        if name not in self.chains:
            self.chains.append(name)
        return name

    def add(self, *parts: str) -> None:
        self.rules.append(" ".join(p for p in parts if p))


class _Sync:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.filter, self.nat = _Table(), _Table()
        for name in ("KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
                     "KUBE-PROXY-FIREWALL"):
            self.filter.chain(name)
        for name in ("KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"):
            self.nat.chain(name)

    # ------------------------------------------------------------ what every sync writes

    def static(self) -> None:
        cfg = self.cfg
        if self._localhost_nodeports():
            self.filter.add('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"',
                            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
        if not cfg.tcp_liberal:
            count = f"-m nfacct --nfacct-name {INVALID_DROPPED_COUNTER}" if cfg.nfacct else ""
            self.filter.add("-A KUBE-FORWARD -m conntrack --ctstate INVALID", count, "-j DROP")
        self.filter.add('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"',
                        f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT")
        self.filter.add('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"',
                        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        self.nat.add(f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
        self.nat.add(f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}")
        self.nat.add('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"',
                     "-j MASQUERADE", "--random-fully" if cfg.random_fully else "")
        self.nat.add(f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}")

    def nodeports_jump(self) -> None:
        """The tail call to KUBE-NODEPORTS: last in KUBE-SERVICES."""
        cfg = self.cfg
        if not cfg.nodeport_addresses:
            block = "! -d ::1/128" if cfg.ipv6 else "" if cfg.localhost_nodeports else "! -d 127.0.0.0/8"
            self.nat.add(f"-A KUBE-SERVICES -m comment --comment {LAST_RULE} -m addrtype --dst-type LOCAL", block,
                         "-j KUBE-NODEPORTS")
            return
        for ip in self._nodeport_ips():
            self.nat.add(f"-A KUBE-SERVICES -m comment --comment {LAST_RULE} -d {ip} -j KUBE-NODEPORTS")

    def _nodeport_ips(self) -> list[str]:
        nets = [ipaddress.ip_network(c.strip(), strict=False) for c in self.cfg.nodeport_addresses]
        node = ipaddress.ip_address(self.cfg.node_ip)
        found = [str(node)] if any(node.version == n.version and node in n for n in nets) else []
        if not self.cfg.ipv6 and any(ipaddress.ip_address("127.0.0.1") in n for n in nets):
            found.append("127.0.0.1")
        return found

    def _localhost_nodeports(self) -> bool:
        cfg = self.cfg
        if not cfg.localhost_nodeports or cfg.ipv6:
            return False
        nets = [ipaddress.ip_network(c.strip(), strict=False) for c in cfg.nodeport_addresses]
        return not nets or any(n.version == 4 and ipaddress.ip_address("127.0.0.1") in n for n in nets)

    # ------------------------------------------------------------ one Service port

    def service(self, sp: ServicePort) -> None:
        cfg, key, proto = self.cfg, sp.key, sp.protocol.lower()
        if not sp.cluster_ip or sp.cluster_ip == "None":
            return
        svc_chain = chain_hash("KUBE-SVC-", key, proto)
        svl_chain = chain_hash("KUBE-SVL-", key, proto)
        ext_chain = chain_hash("KUBE-EXT-", key, proto)
        fw_chain = chain_hash("KUBE-FW-", key, proto)
        eps = categorize(sp, cfg.node)
        cluster_eps, local_eps, reachable = eps.cluster, eps.local, eps.reachable
        has_endpoints, has_internal, has_external = eps.has_endpoints, eps.has_internal, eps.has_external
        uses_ext_chain, uses_fw = eps.uses_external_chain, eps.uses_firewall
        uses_cluster_chain, uses_local_chain = bool(cluster_eps), bool(local_eps)
        internal_chain = svl_chain if sp.itp_local else svc_chain
        external_policy_chain = svl_chain if sp.etp_local else svc_chain
        lb_chain = fw_chain if uses_fw else ext_chain
        if not has_endpoints:
            int_target, int_comment = "REJECT", f'"{key} has no endpoints"'
            ext_target, ext_comment = int_target, int_comment
        else:
            int_target, int_comment = "DROP", f'"{key} has no local endpoints"'
            ext_target, ext_comment = int_target, int_comment
        for used, name in ((uses_cluster_chain, svc_chain), (uses_local_chain, svl_chain),
                           (uses_ext_chain, ext_chain), (uses_fw, fw_chain)):
            if used:
                self.nat.chain(name)
        for ep in reachable:
            self.nat.chain(chain_hash("KUBE-SEP-", key, proto, str(ep)))

        match, dport = f"-m {proto} -p {proto}", f"--dport {sp.port}"
        # ClusterIP
        if has_internal:
            self.nat.add(f'-A KUBE-SERVICES -m comment --comment "{key} cluster IP"', match, f"-d {sp.cluster_ip}",
                         dport, f"-j {internal_chain}")
        else:
            self.filter.add(f"-A KUBE-SERVICES -m comment --comment {int_comment}", match, f"-d {sp.cluster_ip}",
                            dport, f"-j {int_target}")
        # externalIPs
        for ip in sp.external_ips:
            if has_endpoints:
                self.nat.add(f'-A KUBE-SERVICES -m comment --comment "{key} external IP"', match, f"-d {ip}", dport,
                             f"-j {ext_chain}")
            if not has_external:
                self.filter.add(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}", match, f"-d {ip}",
                                dport, f"-j {ext_target}")
        # LoadBalancer ingress
        for ip in sp.lb_ips:
            if has_endpoints:
                self.nat.add(f'-A KUBE-SERVICES -m comment --comment "{key} loadbalancer IP"', match, f"-d {ip}",
                             dport, f"-j {lb_chain}")
            if uses_fw:
                self.filter.add(f'-A KUBE-PROXY-FIREWALL -m comment --comment "{key} traffic not accepted by '
                                f'{fw_chain}"', match, f"-d {ip}", dport, "-j DROP")
        if not has_external:
            for ip in sp.lb_ips:
                self.filter.add(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}", match, f"-d {ip}",
                                dport, f"-j {ext_target}")
        # NodePort
        if sp.node_port:
            if has_endpoints:
                if self._localhost_nodeports() and cfg.nfacct:
                    self.nat.add(f"-A KUBE-NODEPORTS -m comment --comment {key}", match, "-d 127.0.0.0/8",
                                 f"--dport {sp.node_port} -m nfacct --nfacct-name {LOCALHOST_NODEPORTS_COUNTER}",
                                 f"-j {ext_chain}")
                self.nat.add(f"-A KUBE-NODEPORTS -m comment --comment {key}", match, f"--dport {sp.node_port}",
                             f"-j {ext_chain}")
            if not has_external:
                self.filter.add(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}",
                                "-m addrtype --dst-type LOCAL", match, f"--dport {sp.node_port}", f"-j {ext_target}")
        if sp.health_check_node_port and sp.load_balancer and sp.etp_local:  # upstream NeedsHealthCheck
            self.filter.add(f'-A KUBE-NODEPORTS -m comment --comment "{key} health check node port"',
                            f"-m tcp -p tcp --dport {sp.health_check_node_port} -j ACCEPT")
        if not has_endpoints:
            return

        if has_internal:  # off-cluster traffic to the ClusterIP is masqueraded
            masq = f'-A {internal_chain} -m comment --comment "{key} cluster IP" {match} -d {sp.cluster_ip} {dport}'
            if cfg.masquerade_all:
                self.nat.add(masq, "-j KUBE-MARK-MASQ")
            elif cfg.pod_cidr:
                self.nat.add(masq, f"! -s {cfg.pod_cidr} -j KUBE-MARK-MASQ")
        if uses_ext_chain:
            if not sp.etp_local:
                self.nat.add(f'-A {ext_chain} -m comment --comment "masquerade traffic for {key} external '
                             'destinations" -j KUBE-MARK-MASQ')
            else:
                if cfg.pod_cidr:  # pods reaching an external IP short-circuit to the cluster chain
                    self.nat.add(f'-A {ext_chain} -m comment --comment "pod traffic for {key} external '
                                 f'destinations" -s {cfg.pod_cidr} -j {svc_chain}')
                self.nat.add(f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {key} external '
                             'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
                self.nat.add(f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {key} external '
                             f'destinations" -m addrtype --src-type LOCAL -j {svc_chain}')
            if has_external:
                self.nat.add(f"-A {ext_chain} -j {external_policy_chain}")
        if uses_fw:
            head = f'-A {fw_chain} -m comment --comment "{key} loadbalancer IP"'
            node_ip = ipaddress.ip_address(cfg.node_ip)
            ranges = [ipaddress.ip_network(r.strip(), strict=False) for r in sp.source_ranges]
            for net in ranges:
                self.nat.add(head, f"-s {net}", f"-j {ext_chain}")
            if any(node_ip in net for net in ranges):  # a node reaching its own VIP arrives from the VIP
                for ip in sp.lb_ips:
                    self.nat.add(head, f"-s {ip}", f"-j {ext_chain}")
            self.nat.add(f'-A {fw_chain} -m comment --comment "other traffic to {key} will be dropped by '
                         'KUBE-PROXY-FIREWALL"')
        if uses_cluster_chain:
            self._to_endpoints(sp, svc_chain, cluster_eps)
        if uses_local_chain:
            self._to_endpoints(sp, svl_chain, local_eps)
        for ep in reachable:
            sep = chain_hash("KUBE-SEP-", key, proto, str(ep))
            self.nat.add(f"-A {sep} -m comment --comment {key} -s {ep.ip} -j KUBE-MARK-MASQ")
            sticky = f"-m recent --name {sep} --set" if sp.affinity_timeout else ""
            self.nat.add(f"-A {sep} -m comment --comment {key}", sticky, match, f"-j DNAT --to-destination {ep}")

    def _to_endpoints(self, sp: ServicePort, chain: str, endpoints: list[Endpoint]) -> None:
        key, proto = sp.key, sp.protocol.lower()
        seps = [(ep, chain_hash("KUBE-SEP-", key, proto, str(ep))) for ep in endpoints]
        if sp.affinity_timeout:
            for ep, sep in seps:
                self.nat.add(f'-A {chain} -m comment --comment "{key} -> {ep}" -m recent --name {sep} --rcheck '
                             f"--seconds {sp.affinity_timeout} --reap -j {sep}")
        for i, (ep, sep) in enumerate(seps):
            stat = (f"-m statistic --mode random --probability {1.0 / (len(seps) - i):0.10f}"
                    if i < len(seps) - 1 else "")
            self.nat.add(f'-A {chain} -m comment --comment "{key} -> {ep}"', stat, f"-j {sep}")

    def render(self) -> str:
        out: list[str] = []
        for name, table in (("filter", self.filter), ("nat", self.nat)):
            out.append(f"*{name}")
            out.extend(f":{c} - [0:0]" for c in table.chains)
            out.extend(table.rules)
            out.append("COMMIT")
        return "\n".join(out) + "\n"


def _sync(ports: list[ServicePort], config: Config) -> _Sync:
    sync = _Sync(config)
    sync.static()
    for sp in ports:
        sync.service(sp)
    sync.nodeports_jump()
    return sync


def payload(ports: list[ServicePort], config: Config) -> str:
    """The `iptables-restore` input of a full sync, as upstream's fake iptables records it."""
    return _sync(ports, config).render()


def ensured(config: Config) -> Ruleset:
    """The chains and jump rules kube-proxy ensures outside the payload. EnsureRule prepends, so the
    jump ensured last is the first rule of its chain."""
    rs = Ruleset()
    jumps = [(t, dst, src, f'-m comment --comment "{text}"', "-m conntrack --ctstate NEW" if new else "")
             for t, dst, src, text, new in JUMPS]
    if config.localhost_nodeports:
        jumps += [(t, dst, src, "", "") for t, dst, src in KUBELET_JUMPS]
    by_chain: dict[tuple[str, str], list[str]] = {}
    for table, dst, src, note, extra in jumps:
        rs.chain(table, dst)
        by_chain.setdefault((table, src), []).insert(0, " ".join(p for p in (extra, note, f"-j {dst}") if p))
    for (table, src), rules in by_chain.items():
        for rule in rules:
            rs.add(table, src, rule)
    for table in ("filter", "nat"):
        rs.chain(table, "KUBE-PROXY-CANARY")  # the monitor's canary: its loss triggers a full resync
    return rs


def scenario_ports(sc: ResolvedScenario) -> list[ServicePort]:
    """The scenario's Services as kube-proxy sees them (ready endpoints whose target port resolved)."""
    out: list[ServicePort] = []
    for svc in sorted(sc.services, key=lambda s: s.spec.key):
        spec = svc.spec
        lb_ips = (svc.load_balancer_ip,) if spec.type == "LoadBalancer" and svc.load_balancer_ip else ()
        for port in svc.ports:
            out.append(ServicePort(
                namespace=spec.namespace, name=spec.name, port_name=port.spec.name or "", port=port.spec.port,
                protocol=port.spec.protocol, cluster_ip=svc.cluster_ip, load_balancer=spec.type == "LoadBalancer",
                node_port=port.node_port,
                external_ips=tuple(spec.external_ips), lb_ips=lb_ips,
                source_ranges=tuple(spec.load_balancer_source_ranges),
                etp_local=spec.external_traffic_policy == "Local",
                endpoints=tuple(Endpoint(e.ip, e.port, e.node, e.ready) for e in port.endpoints
                                if e.port is not None)))
    return out


def lab_config(sc: ResolvedScenario, node: str) -> Config:
    # The lab's kernel has no xt_nfacct (kube-proxy then creates no counters) and its iptables has
    # --random-fully; localhost NodePorts stay on, kube-proxy's default.
    return Config(node=node, node_ip=sc.node(node).ip, pod_cidr=sc.scenario.cluster_cidr, nfacct=False,
                  random_fully=True)


def rules(sc: ResolvedScenario, node: str) -> Ruleset:
    """Everything kube-proxy programs on `node` (filter + nat): the ensured jumps, then the payload."""
    config = lab_config(sc, node)
    rs = ensured(config)
    sync = _sync(scenario_ports(sc), config)
    for table_name, table in (("filter", sync.filter), ("nat", sync.nat)):
        for chain in table.chains:
            rs.chain(table_name, chain)
        for line in table.rules:
            chain, _, rest = line.removeprefix("-A ").partition(" ")
            rs.add(table_name, chain, rest)
    return rs


def restore_text(sc: ResolvedScenario, node: str) -> str:
    return rules(sc, node).render()
