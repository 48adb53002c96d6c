"""The lab dataplane: a resolved scenario materialised as network namespaces (`Lab`).

Layout for a lab with prefix P (every name below is a network namespace; nothing is created in the root one):
  P-underlay  the VPC router: bridge br0 (underlay gateway .1) with one veth `n<i>` per node uplink, bridge
              br1 (203.0.113.1/24) for the internet segment, ip_forward=1, /32 routes for LoadBalancer and
              external IPs to a node (like a cloud LB / MetalLB BGP announcing them)
  P-<node>    a node: uplink eth0 (node IP, default route via the underlay), bridge cni0 (pod gateway), one
              veth<hash> per pod (hairpin on), host-gw routes or a flannel.1 vxlan device with static neighbour
              and FDB entries, ip_forward=1, kube-proxy + policy-agent + flannel-masq iptables rules
  P-<ns>-<pod> a pod: eth0 (pod IP), default route via the node's cni0 address; its listener process
  P-inet      an internet host 203.0.113.10 (listens on tcp 80/443, udp 53/123)
  P-ext       an external client 203.0.113.20 for inbound NodePort / LoadBalancer traffic
Pod traffic leaving the cluster CIDR is masqueraded at the node (flannel ip-masq), so the internet answers
the node IP, which the router knows.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import felix, kubeproxy, kubeproxy_nft, netns, netpol, workloads
from lab import state as lab_state
from lab.bpf import compiled
from lab.iptables import CLI, RESTORE, Ruleset, comment
from lab.probe import ProbeResult, probe_in
from lab.scenario import ResolvedNode, ResolvedPod, ResolvedScenario, Scenario, resolve
from lab.state import ApiInfo, CloudInfo, LabState, NodeState, PodState

INET_NET = ipaddress.ip_network("203.0.113.0/24")
INET_GW, INET_IP, EXT_IP = "203.0.113.1", "203.0.113.10", "203.0.113.20"
INET_LISTEN: list[tuple[int, str]] = [(80, "TCP"), (443, "TCP"), (53, "UDP"), (123, "UDP")]
VXLAN_MTU = 1450
# Calico: the pod's default gateway (answered by proxy ARP on the host's cali interface), the host side's
# fixed MAC, BIRD's route protocol number, and felix's IPAM-pool ipsets
CALICO_GATEWAY = "169.254.1.1"
CALICO_HOST_MAC = "ee:ee:ee:ee:ee:ee"
CALICO_ALL_POOLS, CALICO_MASQ_POOLS = "cali40all-ipam-pools", "cali40masq-ipam-pools"
CALICO_VXLAN_DEVICE, CALICO_VXLAN_VNI, CALICO_VXLAN_PORT = "vxlan.calico", 4096, 4789  # felix's defaults
# Terway (eniip, veth datapath): the pod's gateway (a static neighbour at the host veth's MAC), the rule
# priorities of terway's EnsurePolicyRule, the ENI route table (1000 + the ENI's ifindex) and the MAC an
# Alibaba Cloud vSwitch answers with
TERWAY_GATEWAY = "169.254.1.1"
TERWAY_TO_POD_PRIORITY, TERWAY_FROM_POD_PRIORITY = 512, 2048
TERWAY_TABLE_BASE = 1000
VSWITCH_MAC = "ee:ff:ff:ff:ff:ff"
ENI_DEVICE = "eth1"
TERWAY_ENI_VETH = "veth1"  # exclusive ENI: the pod's veth to the host (terway's defaultVethForENI)
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_PARALLEL = 8


def new_prefix() -> str:
    return "ndt" + secrets.token_hex(3)


def veth_name(pod_key: str, cni: str = "host-gw") -> str:
    # Calico's VethNameForWorkload (Terway's too): "cali" + sha1("<namespace>.<pod>")[:11]
    if cni in ("calico", "terway-eniip", "terway-eni"):
        return "cali" + hashlib.sha1(pod_key.replace("/", ".", 1).encode()).hexdigest()[:11]
    return "veth" + hashlib.sha1(pod_key.encode()).hexdigest()[:8]


def _parallel(fn: Callable[[Any], None], items: Iterable[Any]) -> None:
    with ThreadPoolExecutor(_PARALLEL) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


def flannel_rules(sc: ResolvedScenario, node: str) -> Ruleset:
    """flanneld's masquerade and forward rules (v0.2x), so pod → outside leaves with the node IP."""
    cluster, pod_cidr = sc.scenario.cluster_cidr, sc.node(node).pod_cidr
    note = comment("flanneld masq")
    rs = Ruleset()
    rs.add("nat", "POSTROUTING", f"{note} -j FLANNEL-POSTRTG")
    rs.add("nat", "FLANNEL-POSTRTG", f"-m mark --mark 0x4000/0x4000 {note} -j RETURN")
    rs.add("nat", "FLANNEL-POSTRTG", f"-s {pod_cidr} -d {cluster} {note} -j RETURN")
    rs.add("nat", "FLANNEL-POSTRTG", f"-s {cluster} -d {pod_cidr} {note} -j RETURN")
    rs.add("nat", "FLANNEL-POSTRTG", f"! -s {cluster} -d {pod_cidr} {note} -j RETURN")
    rs.add("nat", "FLANNEL-POSTRTG", f"-s {cluster} ! -d 224.0.0.0/4 {note} -j MASQUERADE --random-fully")
    rs.add("nat", "FLANNEL-POSTRTG", f"! -s {cluster} -d {cluster} {note} -j MASQUERADE --random-fully")
    fwd = comment("flanneld forward")
    rs.add("filter", "FORWARD", f"{fwd} -j FLANNEL-FWD")
    rs.add("filter", "FLANNEL-FWD", f"-s {cluster} {fwd} -j ACCEPT")
    rs.add("filter", "FLANNEL-FWD", f"-d {cluster} {fwd} -j ACCEPT")
    return rs


def calico_ipsets(sc: ResolvedScenario) -> str:
    """felix's IPAM-pool ipsets (`ipset restore` input): every pool, and the natOutgoing ones."""
    lines = [f"create {s} hash:net family inet -exist" for s in (CALICO_ALL_POOLS, CALICO_MASQ_POOLS)]
    lines += [f"flush {CALICO_ALL_POOLS}", f"flush {CALICO_MASQ_POOLS}",
              f"add {CALICO_ALL_POOLS} {sc.scenario.cluster_cidr}"]
    if sc.scenario.calico.nat_outgoing:
        lines.append(f"add {CALICO_MASQ_POOLS} {sc.scenario.cluster_cidr}")
    return "\n".join(lines) + "\n"


def calico_rules(sc: ResolvedScenario) -> Ruleset:
    """felix's natOutgoing chain (iptables dataplane): pod → outside every IPPool leaves masqueraded."""
    rs = Ruleset()
    rs.add("nat", "POSTROUTING", f"{comment('cali:O3lYWMrLQYEMJtB5')} -j cali-POSTROUTING")
    rs.add("nat", "cali-POSTROUTING", f"{comment('cali:Z-c7XtVd2Bq7s_hA')} -j cali-nat-outgoing")
    rs.add("nat", "cali-nat-outgoing", f"{comment('cali:flqWnvo8yq4ULQLa')} -m set --match-set {CALICO_MASQ_POOLS} "
           f"src -m set ! --match-set {CALICO_ALL_POOLS} dst -j MASQUERADE --random-fully")
    return rs


def node_ruleset(sc: ResolvedScenario, node: str) -> str:
    """The whole iptables-restore input for a node: policy agent first in FORWARD, like kube-router (felix:
    its own chains, see lab/felix.py)."""
    tail = Ruleset()
    if felix.enforces(sc):
        rs, tail = felix.node(sc, node, lambda key: veth_name(key, sc.scenario.cni)).rulesets()
    else:
        rs = netpol.rules(sc, node)
    if sc.scenario.kube_proxy_mode == "iptables":  # nftables mode: its own table, see program_rules
        rs.extend(kubeproxy.rules(sc, node))
    if sc.scenario.cni == "calico":
        rs.extend(calico_rules(sc))
    elif sc.scenario.cni == "terway-eni":
        rs.extend(terway_eni_masq_rules())
    elif sc.scenario.cni != "terway-eniip":  # Terway: pod addresses are VPC addresses, nothing masquerades
        rs.extend(flannel_rules(sc, node))
    rs.extend(tail)
    return rs.render()


def terway_eni_masq_rules() -> Ruleset:
    """Terway's exclusive-ENI node (policy/uninstall_policy.sh `masq_eni_only`): everything the node forwards
    or sends out of any device but lo is masqueraded — a pod reaches Services through its veth1 to the host,
    and the endpoint's reply must come back to the node that translated it."""
    rs = Ruleset()
    rs.add("nat", "POSTROUTING", f"{comment('terway:masq-outgoing')} ! -o lo -j terway-masq")
    rs.add("nat", "terway-masq", "-j MASQUERADE")
    return rs


def calico_vtep_ip(block: str) -> str:
    """The node's IPv4VXLANTunnelAddr: Calico's IPAM gives the tunnel the block's first address."""
    return str(ipaddress.ip_network(block).network_address)


def vxlan_vtep(device: str, vni: int, port: int, node: ResolvedNode, peers: Sequence[ResolvedNode],
               route_proto: str = "") -> tuple[list[str], list[str]]:
    """A VXLAN VTEP as flannel's vxlan backend and felix's VXLAN manager both program it (no learning): the
    device holding the block's first address, and per peer `<block> via <peer VTEP> onlink` with a permanent
    neighbour and FDB entry. Returns (`ip` batch lines, `bridge` batch lines)."""
    lines = [f"link add {device} address {node.vtep_mac} mtu {VXLAN_MTU} type vxlan id {vni} local {node.ip} "
             f"dev eth0 dstport {port} nolearning",
             f"addr add {calico_vtep_ip(node.pod_cidr)}/32 dev {device}", f"link set {device} up"]
    fdb = []
    for peer in peers:
        vtep = calico_vtep_ip(peer.pod_cidr)
        lines += [f"route add {peer.pod_cidr} via {vtep} dev {device} onlink{route_proto}",
                  f"neigh add {vtep} lladdr {peer.vtep_mac} dev {device} nud permanent"]
        fdb.append(f"fdb append {peer.vtep_mac} dev {device} dst {peer.ip} self permanent")
    return lines, fdb


def eni_mac(node_index: int) -> str:
    return f"00:16:3e:00:{(node_index >> 8) & 0xff:02x}:{node_index & 0xff:02x}"  # Alibaba Cloud's OUI


def pod_eni_mac(pod_index: int) -> str:
    """An exclusive ENI's MAC (Alibaba Cloud's OUI, apart from the node ENIs' range)."""
    return f"00:16:3e:01:{(pod_index >> 8) & 0xff:02x}:{pod_index & 0xff:02x}"


def host_veth_mac(veth: str) -> str:
    digest = hashlib.sha1(veth.encode()).hexdigest()
    return "02:" + ":".join(digest[i:i + 2] for i in range(0, 10, 2))


def dns_records(sc: ResolvedScenario) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for svc in sc.services:
        name = f"{svc.spec.name}.{svc.spec.namespace}.svc.{workloads.CLUSTER_DOMAIN}"
        if svc.cluster_ip:
            records[name] = [svc.cluster_ip]
        else:  # headless: the ready endpoints' pod IPs
            records[name] = sorted({e.ip for p in svc.ports for e in p.endpoints if e.ready})
    return records


class Lab:
    """A running lab. Build with `Lab.up(resolved)`, reattach with `Lab.attach(prefix)`, remove with `down()`."""

    def __init__(self, resolved: ResolvedScenario, state: LabState):
        self.resolved = resolved
        self.state = state

    @property
    def prefix(self) -> str:
        return self.state.prefix

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def up(cls, resolved: ResolvedScenario, prefix: str | None = None,
           scenario_path: str | Path | None = None) -> Lab:
        prefix = prefix or new_prefix()
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"lab prefix {prefix!r} must match {PREFIX_RE.pattern}")
        if lab_state.state_path(prefix).exists() or netns.list_with_prefix(prefix):
            raise RuntimeError(f"a lab named {prefix!r} already exists: run `lab down --name {prefix}` first")
        lab = cls(resolved, _plan(resolved, prefix, scenario_path))
        try:
            lab._build()
        except BaseException:
            cls.sweep(prefix)
            raise
        return lab

    @classmethod
    def attach(cls, prefix: str) -> Lab:
        st = lab_state.load(prefix)
        return cls(resolve(Scenario.model_validate(st.scenario)), st)

    def down(self) -> None:
        self.sweep(self.prefix)

    @staticmethod
    def sweep(prefix: str) -> list[str]:
        """Remove everything of lab `prefix`, also after a crash: processes first (by PID), then namespaces."""
        names = set(netns.list_with_prefix(prefix))
        try:
            st = lab_state.load(prefix)
        except (FileNotFoundError, ValueError):
            st = None
        if st is not None:
            names.update(n for n in st.all_netns() if netns.exists(n))
        # The state's listener PIDs are among these; one that left the lab's namespaces is not ours any more.
        pids = set(netns.pids_in(names))
        if st is not None and st.api is not None and st.api.pid and _is_api_daemon(st.api.pid, prefix):
            pids.add(st.api.pid)  # the lab's Kubernetes API runs in the root namespace
        if st is not None and st.cloud is not None and st.cloud.pid and _is_daemon(st.cloud.pid, b"lab.cloudemu",
                                                                                   st.cloud.state_file):
            pids.add(st.cloud.pid)  # so does its cloud emulator
        netns.kill_pids(pids)
        netns.delete_all(sorted(names))
        shutil.rmtree(lab_state.state_dir(prefix), ignore_errors=True)
        return sorted(names)

    def _build(self) -> None:
        sc, st = self.resolved, self.state
        netns.add_all(st.all_netns())
        netns.ip_batch(self._underlay_batch(), st.underlay_netns)
        _parallel(lambda n: self._configure_node(n.name), sc.nodes)
        batches = [(p.netns, self._pod_batch(key)) for key, p in st.pods.items() if not p.host_network]
        if st.inet_netns and st.ext_netns:
            batches += [(st.inet_netns, _host_batch(INET_IP)), (st.ext_netns, _host_batch(EXT_IP))]
        _parallel(lambda b: netns.ip_batch(b[1], b[0]), batches)
        netns.ip_batch(self._external_routes(), st.underlay_netns)
        if sc.scenario.terway_mode:
            # the VPC's source check: a pod address is forwarded only from the ENI owning it, never from a
            # node's primary NIC (the underlay bridge br0)
            netns.run(netns.in_ns(st.underlay_netns, [CLI[sc.scenario.iptables_backend], "-A", "FORWARD", "-i",
                                                      "br0", "-s", sc.scenario.terway.pod_vswitch_cidr, "-j", "DROP"]))
            for pod in sc.pods:
                if pod.spec.eip:  # a pod's EIP: the VPC's 1:1 translation to the pod address (its PodEIP)
                    netns.run(netns.in_ns(st.underlay_netns, [
                        CLI[sc.scenario.iptables_backend], "-t", "nat", "-A", "PREROUTING", "-d", pod.spec.eip,
                        "-j", "DNAT", "--to-destination", pod.ip]))
        self.program_rules()
        self._start_workloads()
        lab_state.save(st)

    # ------------------------------------------------------------ building blocks

    def _underlay_batch(self) -> list[str]:
        sc, st = self.resolved, self.state
        gw = _underlay_gateway(sc)
        prefixlen = ipaddress.ip_network(sc.scenario.underlay_cidr).prefixlen
        lines = ["link set lo up", "link add br0 type bridge", f"addr add {gw}/{prefixlen} dev br0",
                 "link set br0 up"]
        for i, node in enumerate(sc.nodes):
            lines += [f"link add n{i} type veth peer name eth0 netns {st.nodes[node.name].netns}",
                      f"link set n{i} master br0", f"link set n{i} up"]
        if st.inet_netns and st.ext_netns:
            lines += ["link add br1 type bridge", f"addr add {INET_GW}/{INET_NET.prefixlen} dev br1",
                      "link set br1 up"]
            for name, ns in (("inet", st.inet_netns), ("ext", st.ext_netns)):
                lines += [f"link add {name} type veth peer name eth0 netns {ns}",
                          f"link set {name} master br1", f"link set {name} up"]
        if sc.scenario.cni == "terway-eniip":
            lines += self._vpc_eni_batch()
        elif sc.scenario.cni == "terway-eni":
            lines += self._vpc_pod_eni_batch()
        netns_sysctls: dict[str, str | int] = {"net.ipv4.ip_forward": 1}
        netns.write_sysctls(st.underlay_netns, netns_sysctls)
        return lines

    def _vpc_eni_batch(self) -> list[str]:
        """The VPC side of each node's ENI: a point-to-point link `e<i>` answering as the pod vSwitch's
        gateway (its MAC ee:ff:ff:ff:ff:ff), and the VPC's delivery of each secondary IP to the ENI owning it."""
        sc, st = self.resolved, self.state
        gateway = _pod_vswitch_gateway(sc)
        lines = []
        for i, node in enumerate(sc.nodes):
            lines += [f"link add e{i} address {VSWITCH_MAC} type veth peer name {ENI_DEVICE} address {eni_mac(i)} "
                      f"netns {st.nodes[node.name].netns}", f"addr add {gateway}/32 dev e{i}", f"link set e{i} up"]
            for pod in st.pods.values():
                if pod.node == node.name and not pod.host_network:
                    lines += [f"route add {pod.ip}/32 dev e{i}",
                              f"neigh add {pod.ip} lladdr {eni_mac(i)} dev e{i} nud permanent"]
        return lines

    def _exclusive_pods(self) -> list[PodState]:
        """The pods owning an exclusive ENI, in a stable order (their ENI's index)."""
        return [p for _, p in sorted(self.state.pods.items()) if not p.host_network]

    def _vpc_pod_eni_batch(self) -> list[str]:
        """Exclusive ENIs (terway-eni): each pod's eth0 is its own ENI on the pod vSwitch. A real ENI is a NIC,
        not a veth to the node; its stand-in is a macvlan (this kernel has no ipvlan) in the pod on a VPC-side
        veth `xl<j>` whose peer `x<j>` answers as the vSwitch gateway (MAC ee:ff:ff:ff:ff:ff, the gateway /32),
        and the VPC delivers the pod address (the ENI's primary IP) to that ENI."""
        gateway = _pod_vswitch_gateway(self.resolved)
        lines = []
        for j, pod in enumerate(self._exclusive_pods()):
            lines += [f"link add x{j} address {VSWITCH_MAC} type veth peer name xl{j}", f"link set xl{j} up",
                      f"addr add {gateway}/32 dev x{j}", f"link set x{j} up",
                      f"link add link xl{j} name eth0 address {pod_eni_mac(j)} netns {pod.netns} type macvlan "
                      "mode private",
                      f"route add {pod.ip}/32 dev x{j}",
                      f"neigh add {pod.ip} lladdr {pod_eni_mac(j)} dev x{j} nud permanent"]
        return lines

    def _external_routes(self) -> list[str]:
        """Router /32 routes for LoadBalancer and external IPs (to a node with a local endpoint if Local)."""
        sc = self.resolved
        lines = []
        for svc in sc.services:
            ips = [*svc.spec.external_ips, *([svc.load_balancer_ip] if svc.spec.type == "LoadBalancer"
                                            and svc.load_balancer_ip else [])]
            ready_nodes = {e.node for p in svc.ports for e in p.endpoints if e.ready}
            local = svc.spec.external_traffic_policy == "Local"
            target = next((n for n in sc.nodes if not local or n.name in ready_nodes), sc.nodes[0])
            lines += [f"route replace {ip}/32 via {target.ip}" for ip in ips]
        return lines

    def _configure_node(self, name: str) -> None:
        sc, st = self.resolved, self.state
        node = sc.node(name)
        ns = st.nodes[name].netns
        underlay_len = ipaddress.ip_network(sc.scenario.underlay_cidr).prefixlen
        pod_len = ipaddress.ip_network(node.pod_cidr).prefixlen
        vxlan = sc.scenario.cni == "vxlan"
        mtu = f" mtu {VXLAN_MTU}" if vxlan else ""
        lines = ["link set lo up", f"addr add {node.ip}/{underlay_len} dev eth0", "link set eth0 up",
                 f"route add default via {_underlay_gateway(sc)} dev eth0"]
        if sc.scenario.cni == "calico":
            self._configure_calico_node(name, lines)
            return
        if sc.scenario.cni == "terway-eniip":
            self._configure_terway_node(name, lines)
            return
        if sc.scenario.cni == "terway-eni":
            self._configure_terway_eni_node(name, lines)
            return
        lines += ["link add cni0 type bridge", f"addr add {node.gateway_ip}/{pod_len} dev cni0", "link set cni0 up"]
        for pod in st.pods.values():
            if pod.node != name or pod.host_network:
                continue
            lines += [f"link add {pod.veth}{mtu} type veth peer name eth0{mtu} netns {pod.netns}",
                      f"link set {pod.veth} master cni0", f"link set {pod.veth} up",
                      f"link set {pod.veth} type bridge_slave hairpin on"]
        fdb: list[str] = []
        others = [n for n in sc.nodes if n.name != name]
        if vxlan:  # flannel's vxlan backend: VNI 1, port 8472, the VTEP at the subnet's .0
            vtep_lines, fdb = vxlan_vtep("flannel.1", 1, 8472, node, others)
            lines += vtep_lines
        else:
            lines += [f"route add {other.pod_cidr} via {other.ip} dev eth0" for other in others]
        netns.ip_batch(lines, ns)
        netns.ip_batch(fdb, ns, tool="bridge")
        netns.write_sysctls(ns, {"net.ipv4.ip_forward": 1})

    def _configure_calico_node(self, name: str, lines: list[str]) -> None:
        """Calico BGP mode without encapsulation, as the CNI plug-in, felix and BIRD program a node: a veth
        `cali<hash>` per pod (no bridge, MAC ee:ee:ee:ee:ee:ee, proxy_arp=1 so it answers the pod's
        169.254.1.1), `podIP dev cali<hash> scope link`, a blackhole for the node's own block, and each peer's
        block `via <peer node IP>` as BIRD learns it over BGP."""
        sc, st = self.resolved, self.state
        node = sc.node(name)
        ns = st.nodes[name].netns
        mtu = f" mtu {VXLAN_MTU}" if sc.scenario.calico.vxlan_mode == "Always" else ""
        sysctls: dict[str, str | int] = {"net.ipv4.ip_forward": 1}
        for pod in st.pods.values():
            if pod.node != name or pod.host_network:
                continue
            lines += [f"link add {pod.veth} address {CALICO_HOST_MAC}{mtu} type veth peer name eth0{mtu} netns "
                      f"{pod.netns}",
                      f"link set {pod.veth} up", f"route add {pod.ip}/32 dev {pod.veth} scope link"]
            # felix's configureInterface for a workload interface
            sysctls |= {f"net.ipv4.conf.{pod.veth}.proxy_arp": 1, f"net.ipv4.neigh.{pod.veth}.proxy_delay": 0,
                        f"net.ipv4.conf.{pod.veth}.forwarding": 1, f"net.ipv4.conf.{pod.veth}.rp_filter": 1}
        lines.append(f"route add blackhole {node.pod_cidr} proto bird")
        others = [other for other in sc.nodes if other.name != name]
        fdb: list[str] = []
        if sc.scenario.calico.vxlan_mode == "Always":
            # felix's VXLAN manager: the VTEP holds the tunnel address (the block's first), each peer block
            # `via <peer VTEP> dev vxlan.calico onlink` with a permanent ARP and FDB entry (felix, not BIRD)
            vtep_lines, fdb = vxlan_vtep(CALICO_VXLAN_DEVICE, CALICO_VXLAN_VNI, CALICO_VXLAN_PORT, node, others,
                                         route_proto=" proto 80")
            lines += vtep_lines
        else:
            lines += [f"route add {other.pod_cidr} via {other.ip} dev eth0 proto bird" for other in others]
        netns.ip_batch(lines, ns)
        netns.ip_batch(fdb, ns, tool="bridge")
        netns.write_sysctls(ns, sysctls)

    def _configure_terway_node(self, name: str, lines: list[str]) -> None:
        """Terway eniip with the veth datapath, as terway's CNI (plugin/driver/veth.go) programs a node: the ENI
        (eth1, on the pod vSwitch through the VPC router) up with the node IP /32 and table 1000+ifindex whose
        default route is the vSwitch gateway onlink; per pod a veth `cali<hash>` (no bridge), `podIP dev
        cali<hash> scope link`, `to podIP lookup main` (512) and `from podIP iif cali<hash> lookup <ENI table>`
        (2048); forwarding=1 and rp_filter=0 on every link."""
        sc, st = self.resolved, self.state
        node = sc.node(name)
        ns = st.nodes[name].netns
        lines += [f"addr add {node.ip}/32 dev {ENI_DEVICE}", f"link set {ENI_DEVICE} up"]
        pods = [p for p in st.pods.values() if p.node == name and not p.host_network]
        for pod in pods:
            lines += [f"link add {pod.veth} address {host_veth_mac(pod.veth or '')} type veth peer name eth0 netns "
                      f"{pod.netns}", f"link set {pod.veth} up", f"route add {pod.ip}/32 dev {pod.veth} scope link"]
        netns.ip_batch(lines, ns)
        table = TERWAY_TABLE_BASE + netns.ifindex(ns, ENI_DEVICE)
        gateway = _pod_vswitch_gateway(sc)
        rules = [f"route add default via {gateway} dev {ENI_DEVICE} onlink table {table}"]
        for pod in pods:
            rules += [f"rule add to {pod.ip}/32 lookup main priority {TERWAY_TO_POD_PRIORITY}",
                      f"rule add from {pod.ip}/32 iif {pod.veth} lookup {table} priority {TERWAY_FROM_POD_PRIORITY}"]
        netns.ip_batch(rules, ns)
        devices = ["all", "eth0", ENI_DEVICE, *(p.veth for p in pods if p.veth)]
        sysctls: dict[str, str | int] = {"net.ipv4.ip_forward": 1}
        for dev in devices:
            sysctls |= {f"net.ipv4.conf.{dev}.forwarding": 1, f"net.ipv4.conf.{dev}.rp_filter": 0}
        netns.write_sysctls(ns, sysctls)

    def _configure_terway_eni_node(self, name: str, lines: list[str]) -> None:
        """Terway exclusive ENI (plugin/datapath/exclusive_eni_linux.go): the ENI itself is in the pod; the node
        keeps a veth per pod (`cali<hash>` ↔ the pod's `veth1`) for Services and the node, and routes
        `podIP dev cali<hash> scope link` (generateHostSlaveCfg)."""
        st = self.state
        ns = st.nodes[name].netns
        for pod in st.pods.values():
            if pod.node != name or pod.host_network:
                continue
            lines += [f"link add {pod.veth} address {host_veth_mac(pod.veth or '')} type veth peer name "
                      f"{TERWAY_ENI_VETH} netns {pod.netns}", f"link set {pod.veth} up",
                      f"route add {pod.ip}/32 dev {pod.veth} scope link"]
        netns.ip_batch(lines, ns)
        netns.write_sysctls(ns, {"net.ipv4.ip_forward": 1})

    def _terway_eni_pod_batch(self, pod: PodState) -> list[str]:
        """The pod side of an exclusive ENI (generateContCfgForExclusiveENI, generateVeth1Cfg): eth0 (the ENI)
        holds podIP/32 with `default via <vSwitch gateway> onlink`; veth1 holds podIP/32 too and carries
        169.254.1.1 (a permanent neighbour at the host veth's MAC), the service CIDR and the node's own IP
        (HostIPSet) to the host."""
        node_ip = self.resolved.node(pod.node).ip
        svc = self.resolved.scenario.service_cidr
        dev = TERWAY_ENI_VETH
        return ["link set lo up", f"addr add {pod.ip}/32 dev eth0", "link set eth0 up",
                f"route add default via {_pod_vswitch_gateway(self.resolved)} dev eth0 onlink",
                f"addr add {pod.ip}/32 dev {dev}", f"link set {dev} up",
                f"route add {TERWAY_GATEWAY}/32 dev {dev} scope link",
                f"route add {svc} via {TERWAY_GATEWAY} dev {dev} onlink",
                f"route add {node_ip}/32 via {TERWAY_GATEWAY} dev {dev}",
                f"neigh add {TERWAY_GATEWAY} lladdr {host_veth_mac(pod.veth or '')} dev {dev} nud permanent"]

    def _pod_batch(self, key: str) -> list[str]:
        pod = self.state.pods[key]
        node = self.resolved.node(pod.node)
        if self.resolved.scenario.cni == "terway-eni":
            return self._terway_eni_pod_batch(pod)
        if self.resolved.scenario.cni == "terway-eniip":  # terway's container side: a static gateway neighbour
            return ["link set lo up", f"addr add {pod.ip}/32 dev eth0", "link set eth0 up",
                    f"route add default via {TERWAY_GATEWAY} dev eth0 onlink",
                    f"neigh add {TERWAY_GATEWAY} lladdr {host_veth_mac(pod.veth or '')} dev eth0 nud permanent"]
        if self.resolved.scenario.cni == "calico":  # the Calico CNI plug-in's container side
            return ["link set lo up", f"addr add {pod.ip}/32 dev eth0", "link set eth0 up",
                    f"route add {CALICO_GATEWAY} dev eth0 scope link",
                    f"route add default via {CALICO_GATEWAY} dev eth0"]
        pod_len = ipaddress.ip_network(node.pod_cidr).prefixlen
        return ["link set lo up", f"addr add {pod.ip}/{pod_len} dev eth0", "link set eth0 up",
                f"route add default via {node.gateway_ip} dev eth0"]

    def program_rules(self) -> None:
        """(Re)program every node like kube-proxy + the policy agent would after a resync."""
        restore = RESTORE[self.resolved.scenario.iptables_backend]

        def load(node: str) -> None:
            sets = calico_ipsets(self.resolved) if self.resolved.scenario.cni == "calico" else ""
            if felix.enforces(self.resolved):  # felix's policy ipsets
                sets += felix.node(self.resolved, node, lambda key: veth_name(key, self.resolved.scenario.cni)) \
                    .ipset_restore()
            if sets:  # felix's ipsets before the rules that name them
                netns.run(netns.in_ns(self.state.nodes[node].netns, ["ipset", "restore"]), stdin=sets)
            netns.run(netns.in_ns(self.state.nodes[node].netns, [restore]),
                      stdin=node_ruleset(self.resolved, node))
            if self.resolved.scenario.kube_proxy_mode == "nftables":
                netns.run(netns.in_ns(self.state.nodes[node].netns, ["nft", "-f", "-"]),
                          stdin=kubeproxy_nft.nft_script(self.resolved, node))

        _parallel(load, [n.name for n in self.resolved.nodes])

    def _start_workloads(self) -> None:
        sc, st = self.resolved, self.state
        records = dns_records(sc)
        specs = []
        for rp in sc.pods:
            listen: list[tuple[int, str]] = sorted({(lst.port, lst.protocol) for c in rp.spec.containers
                                                    for lst in c.listeners()})
            if listen and rp.spec.phase == "Running":
                specs.append(workloads.Workload(key=rp.spec.key, netns=st.pods[rp.spec.key].netns, listen=listen,
                                                dns=records if rp.spec.role == "dns" else None))
        if st.inet_netns:
            specs.append(workloads.Workload(key="inet", netns=st.inet_netns, listen=INET_LISTEN))
        for key, pid in workloads.spawn(specs).items():
            if key in st.pods:
                st.pods[key].pid = pid
            else:
                st.extra_pids[key] = pid

    def start_api(self) -> ApiInfo:
        """Start the lab's Kubernetes API server (lab/kubeapi.py) for this lab; it records itself in `api`
        of the state file and follows scenario changes there. `down()` stops it."""
        from lab.kubeapi import spawn_daemon  # only labs that serve the API pay for its imports

        self.state.api = spawn_daemon(state_file=lab_state.state_path(self.prefix))
        return self.state.api

    def start_cloud(self) -> CloudInfo:
        """Start the cloud OpenAPI emulator serving this lab's cloud (lab/cloudstate.py); `down()` stops it."""
        from lab.cloudstate import cloud_state, spawn_emulator

        self.state.cloud = spawn_emulator(cloud_state(self.resolved), lab_state.state_dir(self.prefix))
        lab_state.save(self.state)
        return self.state.cloud

    def set_cloud_state(self, state: dict[str, Any]) -> None:
        """Replace what the emulated cloud serves (a cloud fault: `lab.cloudstate.with_fault`)."""
        from lab.cloudstate import push_state

        if self.state.cloud is None:
            raise RuntimeError(f"lab {self.prefix} has no emulated cloud (scenario without `cloud:`)")
        push_state(self.state.cloud, state)

    # ------------------------------------------------------------ changes made while the lab runs

    def update_scenario(self, scenario: Scenario) -> None:
        """Apply a changed scenario's Kubernetes-level state (readiness, policies, Services) and resync rules.

        Addresses and the set of pods must stay the same; this is what controllers would reprogram.
        """
        self.resolved = resolve(scenario)
        self.state.scenario = scenario.model_dump(by_alias=True, exclude_none=True)
        self.program_rules()
        lab_state.save(self.state)

    def set_ready(self, pod_keys: Sequence[str], ready: bool) -> None:
        sc = self.resolved.scenario
        pods = [p.model_copy(update={"containers": [c.model_copy(update={"ready": ready}) for c in p.containers]})
                if p.key in pod_keys else p for p in sc.pods]
        self.update_scenario(sc.model_copy(update={"pods": pods}))

    def add_network_policy(self, policy: dict[str, Any]) -> None:
        netpol.parse([policy])  # validate before touching the nodes
        sc = self.resolved.scenario
        self.update_scenario(sc.model_copy(update={"network_policies": [*sc.network_policies, policy]}))

    # ------------------------------------------------------------ lookups

    def netns_of(self, name: str) -> str:
        """Namespace of a node name, a pod ("ns/pod" or a unique pod name), or ext / inet / underlay."""
        st = self.state
        special = {"ext": st.ext_netns, "inet": st.inet_netns, "underlay": st.underlay_netns}
        if found := special.get(name):
            return found
        if name in st.nodes:
            return st.nodes[name].netns
        return st.pods[self.pod(name).spec.key].netns

    def source_address(self, name: str) -> str:
        """The IP a probe from `name` (a probe `src`: node, pod, ext, inet) carries: a diagnosis' source."""
        if name == "ext":
            return EXT_IP
        if name == "inet":
            return INET_IP
        if name in self.state.nodes:
            return self.state.nodes[name].ip
        return self.pod(name).ip

    def pod(self, name: str) -> ResolvedPod:
        matches = [p for p in self.resolved.pods if name in (p.spec.key, p.spec.name)]
        if len(matches) != 1:
            raise KeyError(f"{name!r} names {len(matches)} pods in lab {self.prefix}")
        return matches[0]

    def address(self, ref: str) -> str:
        """Resolve a reference: pod:ns/name, node:name, svc:ns/name (ClusterIP), lb:ns/name, inet, ext, or an IP."""
        kind, _, arg = ref.partition(":")
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(ref))
        if kind == "pod":
            return self.pod(arg).ip
        if kind == "node":
            return self.resolved.node(arg).ip
        if kind in ("svc", "lb"):
            svc = next(s for s in self.resolved.services if s.spec.key == arg)
            ip = svc.cluster_ip if kind == "svc" else svc.load_balancer_ip
            if ip is None:
                raise KeyError(f"service {arg} has no {'ClusterIP' if kind == 'svc' else 'LoadBalancer IP'}")
            return ip
        if ref == "inet":
            return INET_IP
        if ref == "ext":
            return EXT_IP
        raise KeyError(f"cannot resolve address reference {ref!r}")

    def expand(self, template: str) -> str:
        """Fill {kind:arg} placeholders used by fault commands: addresses plus iptables, veth, pid,
        podcidr, vtepmac, netns and bpf (a compiled lab/bpf/<name>.c object)."""

        def one(match: re.Match[str]) -> str:
            kind, _, arg = match.group(1).partition(":")
            if kind == "iptables":
                return CLI[self.resolved.scenario.iptables_backend]
            if kind == "veth":
                return self.state.pods[self.pod(arg).spec.key].veth or ""
            if kind == "pid":
                pid = self.state.pods[self.pod(arg).spec.key].pid
                if pid is None:
                    raise KeyError(f"pod {arg} has no listener process")
                return str(pid)
            if kind == "podcidr":
                return self.resolved.node(arg).pod_cidr
            if kind == "vtepmac":
                return self.resolved.node(arg).vtep_mac
            if kind == "vtep":
                return calico_vtep_ip(self.resolved.node(arg).pod_cidr)
            if kind == "netns":
                return self.netns_of(arg)
            if kind == "bpf":
                return str(compiled(arg))
            return self.address(match.group(1))

        return re.sub(r"\{([a-z]+(?::[^{}]*)?)\}", one, template)

    # ------------------------------------------------------------ acting in the lab

    def exec(self, where: str | None, argv: Sequence[str], check: bool = True) -> str:
        """Run argv inside the namespace of `where` (a node, pod, ext, inet, underlay; None = root)."""
        target = None if where is None else self.netns_of(where)
        return netns.run(netns.in_ns(target, argv), check=check).stdout

    def probe(self, src: str, dst: str, port: int, protocol: str = "tcp", timeout: float = 1.0,
              dns_name: str | None = None) -> ProbeResult:
        return probe_in(self.netns_of(src), self.address(dst), port, protocol, timeout, dns_name)


def _is_api_daemon(pid: int, prefix: str) -> bool:
    return _is_daemon(pid, b"lab.kubeapi", str(lab_state.state_path(prefix)))


def _is_daemon(pid: int, module: bytes, state_file: str) -> bool:
    """Guard against PID reuse before killing a root-namespace process named in the state file."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return module in argv and state_file.encode() in argv


def _underlay_gateway(sc: ResolvedScenario) -> str:
    return str(ipaddress.ip_network(sc.scenario.underlay_cidr).network_address + 1)


def _pod_vswitch_gateway(sc: ResolvedScenario) -> str:
    """An Alibaba Cloud vSwitch reserves its first and last three addresses; the gateway is the .253 of a /24
    (the third-last address: VPC CreateVSwitch documentation)."""
    return str(ipaddress.ip_network(sc.scenario.terway.pod_vswitch_cidr).broadcast_address - 2)


def _host_batch(ip: str) -> list[str]:
    return ["link set lo up", f"addr add {ip}/{INET_NET.prefixlen} dev eth0", "link set eth0 up",
            f"route add default via {INET_GW} dev eth0"]


def _plan(sc: ResolvedScenario, prefix: str, scenario_path: str | Path | None) -> LabState:
    internet = sc.scenario.internet
    st = LabState(
        prefix=prefix, scenario_path=str(scenario_path) if scenario_path else None, scenario_name=sc.scenario.name,
        scenario=sc.scenario.model_dump(by_alias=True, exclude_none=True), cni=sc.scenario.cni,
        iptables_backend=sc.scenario.iptables_backend, underlay_netns=f"{prefix}-underlay",
        inet_netns=f"{prefix}-inet" if internet else None, ext_netns=f"{prefix}-ext" if internet else None,
        inet_ip=INET_IP if internet else None, ext_ip=EXT_IP if internet else None,
    )
    for node in sc.nodes:
        st.nodes[node.name] = NodeState(netns=f"{prefix}-{node.name}", ip=node.ip, pod_cidr=node.pod_cidr,
                                        gateway_ip=node.gateway_ip)
    for rp in sc.pods:
        host = rp.spec.host_network
        st.pods[rp.spec.key] = PodState(
            netns=st.nodes[rp.spec.node].netns if host else f"{prefix}-{rp.spec.namespace}-{rp.spec.name}",
            node=rp.spec.node, ip=rp.ip, host_network=host,
            veth=None if host else veth_name(rp.spec.key, sc.scenario.cni))
    names = [st.underlay_netns, st.inet_netns, st.ext_netns, *(n.netns for n in st.nodes.values()),
             *(p.netns for p in st.pods.values() if not p.host_network)]
    dupes = {n for n in names if n and names.count(n) > 1}
    if dupes:
        raise ValueError(f"namespace names collide in scenario {sc.scenario.name}: {sorted(dupes)}")
    return st
