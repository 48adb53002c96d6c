"""The typed detail of a trace step: one model per `StepKind`, discriminated by `kind`.

A `Step` (shared/schemas.py) says what happened in one sentence (`detail`) and carries the
facts behind it here, in `Step.info`, so API clients, the UI and the OpenAPI document know what
each kind of step holds (Batfish's per-step details, Hubble's per-field "when it applies").
Every field is optional: a step states what its producer knew, nothing is invented to fill a
field. docs/steps.md lists the kinds and how to add a field or a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    model_serializer,
)

from shared.addresses import parsed_once

# addresses are ipaddress objects; the union (not pydantic's IPvAnyAddress) takes one as it is; a
# result's thousands of address strings are parsed once each (shared/addresses.py)
IPAddress = Annotated[IPv4Address | IPv6Address, WrapValidator(parsed_once())]


class StepKind(StrEnum):
    CLASSIFY = "classify"
    ROUTE = "route"
    NETFILTER = "netfilter"
    NAT = "nat"
    POLICY = "policy"
    SERVICE = "service"
    LINK = "link"
    BRIDGE = "bridge"
    NEIGHBOR = "neighbor"
    ENCAP = "encap"
    DECAP = "decap"
    SYSCTL = "sysctl"
    SECURITY_GROUP = "security_group"
    VPC_ROUTE = "vpc_route"
    LOAD_BALANCER = "load_balancer"
    DELIVERY = "delivery"
    ASSUMPTION = "assumption"


class StepAction(StrEnum):
    ALLOW = "ALLOW"  # passes this check
    FORWARD = "FORWARD"  # sent on to the next hop
    REWRITE = "REWRITE"  # packet changed (NAT, mark)
    DELIVER = "DELIVER"
    DROP = "DROP"
    INFO = "INFO"
    ABORT = "ABORT"


class Hook(StrEnum):
    """A netfilter hook, as iptables names its built-in chains."""

    PREROUTING = "PREROUTING"
    INPUT = "INPUT"
    FORWARD = "FORWARD"
    OUTPUT = "OUTPUT"
    POSTROUTING = "POSTROUTING"


class _Part(BaseModel):
    """A value inside a step detail; unknown fields are an error so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")

    # a field that does not apply is left out, not written as null (the schema says it may be absent);
    # no return annotation on purpose: pydantic would document that type instead of the model's fields
    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler):
        return {k: v for k, v in handler(self).items() if v is not None}


def _kind_required(schema: dict[str, Any]) -> None:
    # always written (and the union's discriminator): required, though a model fills it in itself
    schema["required"] = ["kind", *schema.get("required", [])]


class _Info(_Part):
    """Fields every step detail has."""

    model_config = ConfigDict(json_schema_extra=_kind_required)

    kind: StepKind = Field(description="equals the step's kind")
    finding: str | None = Field(None, description="code of the finding this step raised (a drop or an abort "
                                                   "the walk stopped at); see GET /api/v1/codes")
    legacy_evidence: dict[str, Any] | None = Field(
        None, description="only on results stored before step details were typed: the old `evidence` keys "
                          "that have no typed field here. New results never carry it.")


# ---------------------------------------------------------------- parts


class NatEndpoint(_Part):
    address: IPAddress = Field(description="the address before or after the rewrite")
    port: int | None = Field(None, ge=0, le=65535, description="absent when the rewrite keeps the port")

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return host if self.port is None else f"{host}:{self.port}"


class RuleHit(_Part):
    """A netfilter rule a packet matched (or a chain's policy, position 0)."""

    table: str = Field(description="`nat`, `filter` … for iptables; `<family> <table>` for native nftables")
    chain: str = Field(description="the chain holding the rule")
    position: int = Field(ge=0, description="1-based rule position in the chain; 0 = the chain's policy")
    rule: str = Field(description="the rule as `iptables-save` / `nft list ruleset` prints it")
    family: str | None = Field(None, description="a native nftables rule's family (inet, ip, bridge …); "
                                                 "absent for iptables")


class PolicyRuleRef(_Part):
    """The NetworkPolicy rule that admitted a packet (indices into the policy's spec lists)."""

    policy: str = Field(description="namespace/name")
    rule: int = Field(description="index in spec.ingress / spec.egress")
    peer: int | None = Field(None, description="index in the rule's from/to (None: every peer)")
    port: int | None = Field(None, description="index in the rule's ports (None: every port)")


class PolicyDenial(_Part):
    policy: str = Field(description="namespace/name of an isolating policy that did not admit the packet")
    reason: str = Field(description="why none of its rules admits the packet")


class SecurityGroupRuleRef(_Part):
    """The security-group rule that decided (provider vocabulary: Alibaba Cloud ECS)."""

    id: str = Field("", description="the rule's id (empty when the provider gives none)")
    policy: Literal["accept", "drop"] = Field(description="what the rule does to a matching packet")
    priority: int = Field(description="1 is the highest")
    protocol: str = Field(description="tcp, udp, icmp, all …")
    port_range: str = Field(description="`from/to`, `-1/-1` for every port")
    source: str | None = Field(None, description="source CIDR or security group")
    destination: str | None = Field(None, description="destination CIDR or security group")
    description: str = Field("", description="the rule's description, as its owner wrote it")


class VpcRouteEntry(_Part):
    id: str = Field("", description="the route entry's id (empty for a system route)")
    destination: str = Field(description="destination CIDR")
    type: str = Field("Custom", description="System, Custom …")
    next_hop_type: str | None = Field(None, description="Instance, NetworkInterface, NatGateway …")
    next_hop: str | None = Field(None, description="id of the next hop")


class LbBackend(_Part):
    server_id: str = Field(description="the backend server (ECS instance or ENI id)")
    type: str = Field(description="ecs (a node's NodePort) or eni (a pod address)")
    ip: IPAddress | None = Field(None, description="the server's address")
    port: int | None = Field(None, description="the port the load balancer sends to")
    health: str = Field(description="normal, abnormal, unavailable, unknown")
    node: str | None = Field(None, description="the Kubernetes node, when the server is a node's instance")
    weight: int | None = Field(None, description="0: the load balancer forwards it no request")
    server_type: Literal["Master", "Slave"] | None = Field(None, description="in a primary/secondary group")


class SocketMatch(_Part):
    protocol: str = Field(description="tcp, udp")
    address: str = Field(description="bound address; 0.0.0.0 / :: for the wildcard")
    port: int = Field(description="the bound port")
    state: str = Field(description="LISTEN for TCP; UNCONN/ESTAB for UDP")


# ---------------------------------------------------------------- one model per kind


class ClassifyInfo(_Info):
    """Where the packet comes from (the first step of a path)."""

    kind: Literal[StepKind.CLASSIFY] = StepKind.CLASSIFY
    endpoint: str | None = Field(None, description="what the source is: pod, node, external …")
    entry_node: str | None = Field(None, description="an outside packet: the node it enters the cluster at")
    device: str | None = Field(None, description="the device it enters through")


class RouteInfo(_Info):
    """A kernel FIB lookup (`ip route get`): policy rules walked, then the matched route."""

    kind: Literal[StepKind.ROUTE] = StepKind.ROUTE
    destination: IPAddress | None = Field(None, description="the address looked up")
    type: str | None = Field(None, description="route type: unicast, local, broadcast, multicast, blackhole, "
                                               "unreachable, prohibit; no_route when nothing matched")
    table: int | None = Field(None, description="routing table of the matched route (254 = main, 255 = local)")
    route: str | None = Field(None, description="the matched route as `ip route` prints it")
    dev: str | None = Field(None, description="output device")
    gateway: IPAddress | None = Field(None, description="next-hop router (`via`); absent: on-link destination")
    src: IPAddress | None = Field(None, description="preferred source address of the route")
    onlink: bool = Field(False, description="the route's `onlink` flag (gateway reachable without a covering "
                                            "route)")
    probability: float = Field(1.0, ge=0, le=1, description="this next hop's share under ECMP")
    rules: list[str] = Field(default_factory=list, description="policy rules walked (`ip rule` form)")


class NetfilterInfo(_Info):
    """One netfilter hook traversed (iptables legacy/nft and native nftables rules together)."""

    kind: Literal[StepKind.NETFILTER] = StepKind.NETFILTER
    hook: Hook | None = Field(None, description="the hook traversed (bridged frames with br_netfilter too)")
    verdict: Literal["ACCEPT", "DROP", "REJECT"] | None = Field(None, description="the hook's outcome for the "
                                                                                   "packet")
    decided_by: RuleHit | None = Field(None, description="the rule (or chain policy) that gave a DROP/REJECT")
    reject_with: str | None = Field(None, description="REJECT's --reject-with")
    rules: list[RuleHit] = Field(default_factory=list, description="every rule matched, in traversal order")


class NatInfo(_Info):
    """An address/port rewrite: netfilter NAT, IPVS, conntrack undoing it on the reply, cloud NAT."""

    kind: Literal[StepKind.NAT] = StepKind.NAT
    type: Literal["DNAT", "SNAT", "MASQUERADE", "REDIRECT"] | None = Field(
        None, description="the translation; DNAT/REDIRECT rewrite the destination, SNAT/MASQUERADE the source")
    original: NatEndpoint | None = Field(None, description="the rewritten side before")
    translated: NatEndpoint | None = Field(None, description="the rewritten side after (absent: no translation)")
    reverse: bool = Field(False, description="conntrack translating a reply back")
    rule: RuleHit | None = Field(None, description="the netfilter rule that did it")
    virtual_server: str | None = Field(None, description="IPVS: the virtual server")
    backend_pod: str | None = Field(None, description="Service DNAT: the endpoint's pod (namespace/name)")
    nat_gateway: str | None = Field(None, description="cloud: the NAT gateway")
    snat_entry: str | None = Field(None, description="cloud: the SNAT entry used")
    snat_entries: list[str] = Field(default_factory=list, description="cloud: the gateway's SNAT entries "
                                                                      "(`id source → ip`) when none covers it")
    nic: str | None = Field(None, description="cloud: the network interface whose public address is used")


class PolicyInfo(_Info):
    """A NetworkPolicy verdict for one direction, or the netfilter rule a CNI enforces it with."""

    kind: Literal[StepKind.POLICY] = StepKind.POLICY
    direction: Literal["ingress", "egress"] | None = Field(None, description="ingress at the destination pod, "
                                                                              "egress at the source pod")
    pod: str | None = Field(None, description="the pod the direction is about (namespace/name)")
    allowed: bool | None = Field(None, description="the policies admit the packet in this direction")
    isolated: bool | None = Field(None, description="some policy selects the pod for this direction")
    isolating_policies: list[str] = Field(default_factory=list, description="policies selecting the pod for this "
                                                                            "direction (namespace/name)")
    allowed_by: PolicyRuleRef | None = Field(None, description="the policy rule that admitted it")
    denials: list[PolicyDenial] = Field(default_factory=list, description="why each isolating policy refused")
    enforced_by: RuleHit | None = Field(None, description="the node rule that enforced a deny")
    acl: str | None = Field(None, description="cloud: the load balancer access-control list(s)")
    acl_type: Literal["white", "black"] | None = Field(None, description="cloud: allow-list or deny-list")
    network_acl: str | None = Field(None, description="cloud: the vSwitch network ACL (stateless)")
    vswitch: str | None = Field(None, description="cloud: the vSwitch the network ACL is bound to")
    entry: str | None = Field(None, description="cloud: the network ACL entry that decided, or why none did")
    undecided: list[str] | None = Field(None, description="cloud: entries ahead whose match is unknown")


class ServiceInfo(_Info):
    """A Kubernetes Service as kube-proxy implements it (or fails to)."""

    kind: Literal[StepKind.SERVICE] = StepKind.SERVICE
    service: str | None = Field(None, description="namespace/name")
    rules: list[str] = Field(default_factory=list, description="the KUBE-SVC/KUBE-SEP rules that chose the "
                                                               "endpoint")
    probability: float | None = Field(None, ge=0, le=1, description="share of the chosen endpoint")
    virtual_server: str | None = Field(None, description="IPVS virtual server")
    real_server: str | None = Field(None, description="IPVS real server chosen")
    forwarding: str | None = Field(None, description="IPVS forwarding method (masq, droute, tunnel)")


class LinkInfo(_Info):
    """A packet crossing (or failing to cross) a device: veth, the underlay, the uplink."""

    kind: Literal[StepKind.LINK] = StepKind.LINK
    device: str | None = Field(None, description="the device the packet leaves by (or the one that is down)")
    peer: str | None = Field(None, description="the device on the far side (veth peer, the other node's NIC)")
    peer_where: str | None = Field(None, description="where the peer is: `pod ns/name`, `node n`")
    next_hop: IPAddress | None = Field(None, description="the route's gateway, or the destination itself")
    state: str | None = Field(None, description="operstate when the link is the problem")
    admin_up: bool | None = Field(None, description="administratively up (`ip link set up`), when the link is "
                                                    "the problem")


class BridgeInfo(_Info):
    """A Linux bridge forwarding a frame between ports (the FDB decides the port)."""

    kind: Literal[StepKind.BRIDGE] = StepKind.BRIDGE
    bridge: str | None = Field(None, description="the bridge device")
    port_in: str | None = Field(None, description="the port the frame came in through")
    port_out: str | None = Field(None, description="the port the FDB (or a local veth peer) sends it out of")
    next_hop: IPAddress | None = Field(None, description="the address whose port is looked for")
    bridge_nf_call_iptables: bool | None = Field(None, description="whether iptables sees bridged frames")
    hairpin: bool | None = Field(None, description="port_out's hairpin flag, when the frame goes back out")


class NeighborInfo(_Info):
    """A neighbour (ARP/NDP) entry the next hop needs."""

    kind: Literal[StepKind.NEIGHBOR] = StepKind.NEIGHBOR
    address: IPAddress | None = Field(None, description="the neighbour's IP address (the next hop)")
    device: str | None = Field(None, description="the device the entry is on")
    lladdr: str | None = Field(None, description="MAC address of the entry")
    state: str | None = Field(None, description="NUD state (REACHABLE, STALE, FAILED, PERMANENT …) or what is "
                                                "wrong with it")


class SysctlInfo(_Info):
    """A kernel setting that decided: forwarding, route_localnet, rp_filter."""

    kind: Literal[StepKind.SYSCTL] = StepKind.SYSCTL
    name: str | None = Field(None, description="e.g. net.ipv4.conf.eth0.rp_filter")
    value: int | None = Field(None, description="the effective value (rp_filter: the maximum of conf.all and "
                                                "the device's)")
    device: str | None = Field(None, description="the device the setting applies to")
    reverse_device: str | None = Field(None, description="rp_filter: the device the route back leaves by")


class TunnelInfo(_Info):
    """Encapsulation (`encap`) or decapsulation (`decap`): vxlan, ipip, the cloud's view of an overlay."""

    kind: Literal[StepKind.ENCAP, StepKind.DECAP] = StepKind.ENCAP
    encapsulation: Literal["vxlan", "ipip"] | None = Field(None, description="the overlay's encapsulation")
    device: str | None = Field(None, description="the tunnel device")
    vni: int | None = Field(None, description="vxlan network identifier")
    outer_src: IPAddress | None = Field(None, description="outer header source (the local tunnel endpoint)")
    outer_dst: IPAddress | None = Field(None, description="outer header destination (the remote endpoint)")
    outer_dport: int | None = Field(None, description="outer UDP destination port (vxlan)")


class SecurityGroupInfo(_Info):
    """Cloud security groups of a network interface, one direction."""

    kind: Literal[StepKind.SECURITY_GROUP] = StepKind.SECURITY_GROUP
    direction: Literal["ingress", "egress"] | None = Field(None, description="egress of the source's interface, "
                                                                              "ingress of the destination's")
    instance: str | None = Field(None, description="the ECS instance")
    nic: str | None = Field(None, description="the network interface (ENI) whose groups apply")
    groups: list[str] = Field(default_factory=list, description="every group of the interface")
    group: str | None = Field(None, description="the group whose rule (or default) decided")
    rule: SecurityGroupRuleRef | None = Field(None, description="the deciding rule; absent when a default "
                                                                "decided")
    reason: str | None = Field(None, description="what decided, in words (rule or default)")
    stateful_reply: bool = Field(False, description="the reply of an allowed connection (not evaluated)")
    shared_groups: list[str] = Field(default_factory=list, description="groups both ends are in (intra-group "
                                                                       "access)")
    notes: list[str] = Field(default_factory=list, description="caveats of the evaluation")
    undecided: list[str] | None = Field(None, description="rules ahead of the decision whose match is unknown (a "
                                                          "list or group not collected)")


class VpcRouteInfo(_Info):
    """A VPC route-table lookup."""

    kind: Literal[StepKind.VPC_ROUTE] = StepKind.VPC_ROUTE
    route_table: str | None = Field(None, description="the route table of the source vSwitch")
    route_table_type: str | None = Field(None, description="System or Custom")
    entry: VpcRouteEntry | None = Field(None, description="the matched entry")
    local_vswitch: str | None = Field(None, description="delivered inside the VPC through this vSwitch")
    notes: list[str] = Field(default_factory=list, description="caveats of the lookup")


class LoadBalancerInfo(_Info):
    """A cloud load balancer: lookup, listener, backends."""

    kind: Literal[StepKind.LOAD_BALANCER] = StepKind.LOAD_BALANCER
    lb: str | None = Field(None, description="load balancer id")
    status: str | None = Field(None, description="the load balancer's or listener's status when it decides")
    address: IPAddress | None = Field(None, description="the load balancer's address")
    listener_port: int | None = Field(None, description="the listener the packet's port selects")
    listeners: list[str] = Field(default_factory=list, description="`port/protocol` of each listener")
    backends: list[LbBackend] = Field(default_factory=list, description="the listener's backend servers and "
                                                                        "their health")
    scheduler: str | None = Field(None, description="wrr, rr, sch, tch …")
    health_check: Literal["on", "off"] | None = Field(None, description="the listener's health check")
    serving: list[str] | None = Field(None, description="the backends that take traffic")


class DeliveryInfo(_Info):
    """The end of the path: a socket (or the kernel) takes the packet, or it leaves the cluster."""

    kind: Literal[StepKind.DELIVERY] = StepKind.DELIVERY
    socket: SocketMatch | None = Field(None, description="the socket lookup's match")
    reply: bool = Field(False, description="the reply reaching the client's connection")


class AssumptionInfo(_Info):
    """The walk could not see something it needed."""

    kind: Literal[StepKind.ASSUMPTION] = StepKind.ASSUMPTION
    missing: str | None = Field(None, description="what could not be read")
    reason: str | None = Field(None, description="why it could not be read")


# Adding a kind: a StepKind member, its model above, and one entry here.
StepInfo = Annotated[
    ClassifyInfo | RouteInfo | NetfilterInfo | NatInfo | PolicyInfo | ServiceInfo | LinkInfo | BridgeInfo
    | NeighborInfo | SysctlInfo | TunnelInfo | SecurityGroupInfo | VpcRouteInfo | LoadBalancerInfo
    | DeliveryInfo | AssumptionInfo,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(StepInfo)


def step_info(kind: StepKind, **fields: Any) -> _Info:
    """The detail model of `kind` from keyword fields (None values are left out)."""
    if "legacy_evidence" in fields:  # only loading a stored result may fill it (Step's validator)
        raise TypeError("legacy_evidence is for results stored before typed steps; give the typed fields")
    info: _Info = _ADAPTER.validate_python({"kind": kind, **{k: v for k, v in fields.items() if v is not None}})
    return info


# ---------------------------------------------------------------- results stored before typed steps

def _legacy_netfilter(evidence: dict[str, Any]) -> dict[str, Any]:
    # each matched rule repeated the step's hook
    rules = evidence.get("rules")
    if not isinstance(rules, list):
        return evidence
    return {**evidence, "rules": [{k: v for k, v in r.items() if k != "hook"} if isinstance(r, dict) else r
                                  for r in rules]}


def _legacy_route(evidence: dict[str, Any]) -> dict[str, Any]:
    # the walk nested the route decision under a second `evidence` key
    inner = evidence.get("evidence")
    return {**inner, **{k: v for k, v in evidence.items() if k != "evidence"}} if isinstance(inner, dict) else evidence


_LEGACY: dict[StepKind, Callable[[dict[str, Any]], dict[str, Any]]] = {
    StepKind.NETFILTER: _legacy_netfilter, StepKind.ROUTE: _legacy_route}


def from_evidence(kind: StepKind | str, evidence: dict[str, Any]) -> dict[str, Any]:
    """A detail for a step stored with the old untyped `evidence` dict: keys that fit a typed field
    become it; the rest (and all of it, if the fitting part does not validate) is kept in
    `legacy_evidence`, so an old result loads without losing anything."""
    kind = StepKind(kind)
    adjusted = _LEGACY.get(kind, lambda e: e)(evidence)
    fields = type(step_info(kind)).model_fields
    reserved = ("kind", "finding", "legacy_evidence")
    typed = {k: v for k, v in adjusted.items() if k in fields and k not in reserved}
    try:
        step_info(kind, **typed)
    except ValidationError:
        typed = {}
    rest = {k: v for k, v in adjusted.items() if k not in typed} if typed else dict(evidence)
    return {"kind": kind, **typed, **({"legacy_evidence": rest} if rest else {})}
