"""Lab scenario files: the YAML schema and its resolution into concrete addresses.

Both the namespace dataplane builder and the lab's Kubernetes API read the *resolved*
scenario, so pod IPs, ClusterIPs, nodePorts and endpoints agree by construction.
Documented in docs/lab.md; examples in examples/lab/.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ContainerPort(_Model):
    name: str | None = None
    container_port: int = Field(alias="containerPort", ge=1, le=65535)
    protocol: Literal["TCP", "UDP"] = "TCP"


class Listen(_Model):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP"] = "TCP"


class Container(_Model):
    name: str
    ready: bool = True
    ports: list[ContainerPort] = Field(default_factory=list)
    listen: list[Listen] | None = Field(
        None, description="sockets really opened; default: every declared container port"
    )

    def listeners(self) -> list[Listen]:
        if self.listen is not None:
            return self.listen
        return [Listen(port=p.container_port, protocol=p.protocol) for p in self.ports]


class PodSpec(_Model):
    name: str
    namespace: str = "default"
    node: str
    labels: dict[str, str] = Field(default_factory=dict)
    host_network: bool = Field(False, alias="hostNetwork")
    ip: str | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] = "Running"
    containers: list[Container] = Field(default_factory=lambda: [Container(name="main")])
    role: str | None = Field(None, description="internal: 'dns' for the cluster DNS pod")
    eip: str | None = Field(None, description=(
        "a Terway lab: an EIP bound to the pod's address on the ENI holding it (lab/cloudstate.py), declared by "
        "ack-extend-network-controller's PodEIP object (lab/objects.py)"))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class NodeSpec(_Model):
    name: str
    ip: str | None = None
    pod_cidr: str | None = Field(None, alias="podCIDR")
    ready: bool = True


class NamespaceSpec(_Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)


class ServicePort(_Model):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = Field(None, alias="targetPort")
    protocol: Literal["TCP", "UDP"] = "TCP"
    node_port: int | None = Field(None, alias="nodePort", ge=30000, le=32767)


class ServiceSpec(_Model):
    name: str
    namespace: str = "default"
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    selector: dict[str, str] | None = None
    cluster_ip: str | None = Field(None, alias="clusterIP", description="'None' for headless")
    ports: list[ServicePort]
    external_traffic_policy: Literal["Cluster", "Local"] = Field("Cluster", alias="externalTrafficPolicy")
    load_balancer_ip: str | None = Field(None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[str] = Field(default_factory=list, alias="loadBalancerSourceRanges")
    external_ips: list[str] = Field(default_factory=list, alias="externalIPs")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class CloudSpec(_Model):
    """An emulated Alibaba Cloud VPC around the nodes (lab/cloudstate.py builds its state; `lab up` serves
    it with the OpenAPI emulator). The emulator is an API, not a dataplane: cloud faults change diagnoses,
    never the namespaces' packets."""

    nat_gateway: bool = Field(True, alias="natGateway", description="a NAT gateway with SNAT for the vSwitch")
    patch: list[dict[str, Any]] = Field(default_factory=list, description=(
        "JSON Patch (RFC 6902 add/replace/remove) applied to the generated emulator state: a cloud fault"))


class CalicoSpec(_Model):
    """The default IPPool of a `cni: calico` lab (ipipMode Never; vxlanMode Never = BGP without encapsulation)."""

    nat_outgoing: bool = Field(True, alias="natOutgoing", description="masquerade pod → outside-the-pools traffic")
    block_size: int = Field(26, alias="blockSize", ge=20, le=30, description="the per-node IPAM block prefix")
    vxlan_mode: Literal["Never", "Always"] = Field("Never", alias="vxlanMode", description=(
        "Always: felix's vxlan.calico overlay (VNI 4096, port 4789) instead of BGP routes via the node IPs"))


class TerwaySpec(_Model):
    """A `cni: terway-eniip` lab (Terway's veth datapath, shared ENI: pods take secondary IPs of one ENI per
    node) or `cni: terway-eni` (exclusive ENI: each pod owns an ENI, its primary IP the pod address), both on a
    pod vSwitch distinct from the nodes' vSwitch (`underlayCIDR`); the scenario's clusterCIDR is ignored and
    the pod vSwitch is the cluster's pod network."""

    pod_vswitch_cidr: str = Field("172.31.0.0/24", alias="podVSwitchCIDR")
    pod_vswitch_id: str = Field("vsw-pod0000000000000001", alias="podVSwitchId")
    security_group_id: str = Field("sg-eni000000000000001", alias="securityGroupId",
                                   description="the ENIs' security group (eni-config security_groups)")


class FelixSpec(_Model):
    """FelixConfiguration `default` of a calico / terway-eniip lab: the settings that change felix's iptables
    layout (lab/felix.py renders them; the lab API serves them)."""

    default_endpoint_to_host_action: Literal["DROP", "RETURN", "ACCEPT"] = Field(
        "ACCEPT", alias="defaultEndpointToHostAction",
        description="workload → its own host after the egress policy (calico.yaml sets ACCEPT; felix's default DROP)")
    iptables_mark_mask: str = Field("0xffff0000", alias="iptablesMarkMask",
                                    description="the mark bits felix may use (accept = the lowest)")
    chain_insert_mode: Literal["insert", "append"] = Field("insert", alias="chainInsertMode")

    @field_validator("iptables_mark_mask")
    @classmethod
    def _mask(cls, value: str) -> str:
        if bin(int(value, 0) & 0xFFFFFFFF).count("1") < 5:
            raise ValueError(f"iptablesMarkMask {value} leaves fewer than the 5 mark bits felix allocates")
        return value


class Scenario(_Model):
    name: str
    cni: Literal["host-gw", "vxlan", "calico", "terway-eniip", "terway-eni"] = "host-gw"
    calico: CalicoSpec = Field(default_factory=CalicoSpec, description="IPPool settings when cni is calico")
    terway: TerwaySpec = Field(default_factory=TerwaySpec, description="ENI settings when cni is terway-*")
    felix: FelixSpec = Field(default_factory=FelixSpec, description="FelixConfiguration (calico, terway-eniip)")
    iptables_backend: Literal["nft", "legacy"] = Field("nft", alias="iptablesBackend")
    kube_proxy_mode: Literal["iptables", "nftables"] = Field(
        "iptables", alias="kubeProxyMode", description="nftables: kube-proxy programs its `ip kube-proxy` table")
    underlay_cidr: str = Field("172.30.0.0/24", alias="underlayCIDR")
    cluster_cidr: str = Field("10.244.0.0/16", alias="clusterCIDR")
    service_cidr: str = Field("10.96.0.0/16", alias="serviceCIDR")
    load_balancer_cidr: str = Field("198.51.100.0/24", alias="loadBalancerCIDR",
                                    description="LoadBalancer ingress IPs for Services that do not set one")
    dns: bool = Field(True, description="add kube-system/coredns pod and the kube-dns Service (.10)")
    internet: bool = Field(True, description="add an internet namespace and an external client")
    network_policy: bool = Field(True, alias="networkPolicy", description="enforce NetworkPolicies")
    nodes: list[NodeSpec]
    namespaces: list[NamespaceSpec] = Field(default_factory=list)
    pods: list[PodSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    network_policies: list[dict[str, Any]] = Field(default_factory=list, alias="networkPolicies")
    cloud: CloudSpec | None = Field(None, description="attach an emulated cloud (default: none)")

    @model_validator(mode="after")
    def _check_refs(self) -> Scenario:
        names = {n.name for n in self.nodes}
        for pod in self.pods:
            if pod.node not in names:
                raise ValueError(f"pod {pod.key}: node {pod.node!r} is not declared in nodes")
        if self.cni == "terway-eni" and self.network_policy:
            # Terway documents that pods on exclusive ENIs support no NetworkPolicy (their traffic bypasses
            # the node): a lab claiming enforcement would lie
            raise ValueError("cni terway-eni enforces no NetworkPolicy: set networkPolicy: false")
        return self

    @property
    def terway_mode(self) -> bool:
        return self.cni in ("terway-eniip", "terway-eni")

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        data = yaml.safe_load(Path(path).read_text())
        return cls.model_validate(data)


# ------------------------------------------------------------------ resolution

DNS_SERVICE_HOST = 10  # kube-dns is the .10 of the service CIDR, as in kubeadm clusters
NODE_PORT_BASE = 30000


class ResolvedNode(BaseModel):
    name: str
    ip: str
    pod_cidr: str
    gateway_ip: str  # the bridge address: first host of the pod CIDR
    vtep_mac: str  # deterministic MAC for the vxlan device
    ready: bool


class ResolvedPod(BaseModel):
    spec: PodSpec
    ip: str


class ResolvedEndpoint(BaseModel):
    pod: str  # namespace/name
    ip: str
    node: str
    ready: bool
    port: int | None  # resolved targetPort, None when a named port does not exist on the pod


class ResolvedServicePort(BaseModel):
    spec: ServicePort
    node_port: int | None
    endpoints: list[ResolvedEndpoint]


class ResolvedService(BaseModel):
    spec: ServiceSpec
    cluster_ip: str | None  # None = headless
    load_balancer_ip: str | None
    ports: list[ResolvedServicePort]


class ResolvedScenario(BaseModel):
    scenario: Scenario
    nodes: list[ResolvedNode]
    pods: list[ResolvedPod]
    services: list[ResolvedService]
    namespaces: list[NamespaceSpec]

    def node(self, name: str) -> ResolvedNode:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, key: str) -> ResolvedPod:
        return next(p for p in self.pods if p.spec.key == key or p.spec.name == key)


def _pod_ready(pod: PodSpec) -> bool:
    return pod.phase == "Running" and all(c.ready for c in pod.containers)


def _target_port(pod: PodSpec, port: ServicePort) -> int | None:
    target = port.target_port if port.target_port is not None else port.port
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for c in pod.containers:
        for cp in c.ports:
            if cp.name == target and cp.protocol == port.protocol:
                return cp.container_port
    return None


def _with_dns(sc: Scenario) -> Scenario:
    if not sc.dns or any(p.role == "dns" for p in sc.pods):
        return sc
    dns_pod = PodSpec(
        name="coredns", namespace="kube-system", node=sc.nodes[0].name, role="dns",
        labels={"k8s-app": "kube-dns"},
        containers=[Container(name="coredns", ports=[
            ContainerPort(name="dns", container_port=53, protocol="UDP"),
            ContainerPort(name="dns-tcp", container_port=53, protocol="TCP"),
        ])],
    )
    svc_net = ipaddress.ip_network(sc.service_cidr)
    dns_svc = ServiceSpec(
        name="kube-dns", namespace="kube-system", selector={"k8s-app": "kube-dns"},
        cluster_ip=str(svc_net.network_address + DNS_SERVICE_HOST),
        ports=[ServicePort(name="dns", port=53, target_port="dns", protocol="UDP"),
               ServicePort(name="dns-tcp", port=53, target_port="dns-tcp", protocol="TCP")],
    )
    return sc.model_copy(update={"pods": [*sc.pods, dns_pod], "services": [*sc.services, dns_svc]})


def resolve(sc: Scenario) -> ResolvedScenario:
    sc = _with_dns(sc)
    if sc.terway_mode:  # the pod vSwitch is the pod network (kube-proxy's clusterCIDR)
        sc = sc.model_copy(update={"cluster_cidr": sc.terway.pod_vswitch_cidr})
    underlay = ipaddress.ip_network(sc.underlay_cidr)
    cluster = ipaddress.ip_network(sc.cluster_cidr)
    # flannel leases a /24 per node; Calico's IPAM affines a block (default /26) of the IPPool to each node,
    # and the lab serves that block as the node's podCIDR (real clusters may carry an unrelated podCIDR)
    pod_subnets: Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network] = cluster.subnets(
        new_prefix=sc.calico.block_size if sc.cni == "calico" else 24)
    next(pod_subnets)  # the first subnet stays unused, like flannel's first lease
    nodes: list[ResolvedNode] = []
    for i, n in enumerate(sc.nodes):
        # Terway: no per-node pod CIDR, every node's ENIs draw from the pod vSwitch
        cidr = cluster if sc.terway_mode else ipaddress.ip_network(n.pod_cidr) if n.pod_cidr else next(pod_subnets)
        nodes.append(ResolvedNode(
            name=n.name, ip=n.ip or str(underlay.network_address + 11 + i), pod_cidr=str(cidr),
            gateway_ip=str(cidr.network_address + 1), vtep_mac=f"0a:58:00:00:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}",
            ready=n.ready,
        ))
    by_node = {n.name: n for n in nodes}
    next_host: dict[str, int] = {n.name: 2 for n in nodes}
    eni_ips = ipaddress.ip_network(sc.terway.pod_vswitch_cidr).hosts()
    for _ in range(99):  # the pod vSwitch's first addresses stay free, as the ENIs' own primaries would take them
        next(eni_ips)
    pods: list[ResolvedPod] = []
    for p in sc.pods:
        if p.host_network:
            ip = by_node[p.node].ip
        elif p.ip:
            ip = p.ip
        elif sc.terway_mode:  # an ENI address from the pod vSwitch (a secondary IP, or an exclusive ENI's own)
            ip = str(next(eni_ips))
        else:
            net = ipaddress.ip_network(by_node[p.node].pod_cidr)
            ip = str(net.network_address + next_host[p.node])
            next_host[p.node] += 1
        pods.append(ResolvedPod(spec=p, ip=ip))

    svc_net = ipaddress.ip_network(sc.service_cidr)
    used = {s.cluster_ip for s in sc.services if s.cluster_ip}
    next_vip, next_node_port = 100, NODE_PORT_BASE
    lb_pool = (str(ip) for ip in list(ipaddress.ip_network(sc.load_balancer_cidr).hosts())[9:]
               if str(ip) not in {s.load_balancer_ip for s in sc.services})
    services: list[ResolvedService] = []
    for s in sc.services:
        if s.cluster_ip == "None":
            vip = None
        elif s.cluster_ip:
            vip = s.cluster_ip
        else:
            while str(svc_net.network_address + next_vip) in used:
                next_vip += 1
            vip = str(svc_net.network_address + next_vip)
            used.add(vip)
        selected = [
            rp for rp in pods
            if s.selector and rp.spec.namespace == s.namespace
            and all(rp.spec.labels.get(k) == v for k, v in s.selector.items())
            and rp.spec.phase not in ("Succeeded", "Failed")
        ]
        ports = []
        for sp in s.ports:
            node_port = sp.node_port
            if s.type in ("NodePort", "LoadBalancer") and node_port is None:
                node_port = next_node_port
                next_node_port += 1
            ports.append(ResolvedServicePort(spec=sp, node_port=node_port, endpoints=[
                ResolvedEndpoint(pod=rp.spec.key, ip=rp.ip, node=rp.spec.node,
                                 ready=_pod_ready(rp.spec), port=_target_port(rp.spec, sp))
                for rp in selected
            ]))
        lb_ip = s.load_balancer_ip or (next(lb_pool) if s.type == "LoadBalancer" else None)
        services.append(ResolvedService(spec=s, cluster_ip=vip, load_balancer_ip=lb_ip,
                                        ports=ports))

    declared = {ns.name: ns for ns in sc.namespaces}
    for name in ["default", "kube-system", *(p.namespace for p in sc.pods), *(s.namespace for s in sc.services)]:
        declared.setdefault(name, NamespaceSpec(name=name))
    return ResolvedScenario(scenario=sc, nodes=nodes, pods=pods, services=services,
                            namespaces=list(declared.values()))
