"""What one packet branch has seen so far: its hops, steps, findings and the NAT conntrack made."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from services.simulator.dataplane.netfilter import FlowState, RuleHit
from services.simulator.dataplane.routing import RouteDecision
from services.simulator.dataplane.walk.world import IPAddress, NetnsView, Place
from shared.schemas import (
    FinalState,
    Finding,
    Hop,
    HopKind,
    HopStatus,
    Packet,
    Path,
    Severity,
    Step,
    StepAction,
    StepKind,
)
from shared.steps import NatEndpoint
from shared.steps import RuleHit as RuleHitInfo


def packet(st: FlowState, iif: str | None = None, oif: str | None = None) -> Packet:
    proto = st.protocol if st.protocol in ("tcp", "udp", "icmp") else "tcp"
    return Packet(src=st.src, dst=st.dst, protocol=proto, sport=st.sport, dport=st.dport, mark=st.mark,
                  iif=iif, oif=oif)


def rule_hit(hit: RuleHit) -> RuleHitInfo:
    return RuleHitInfo(table=hit.label, chain=hit.chain, position=hit.position, rule=hit.rule,
                       family=hit.family or None)


def route_info(d: RouteDecision) -> dict[str, Any]:
    """A route decision as RouteInfo fields (addresses as they are, not as text)."""
    return dict(type=d.type, table=d.table, route=d.route, dev=d.dev, gateway=d.gateway, src=d.src, onlink=d.onlink,
                probability=d.probability, rules=d.rules)


def endpoint_info(end: Endpoint) -> NatEndpoint:
    return NatEndpoint(address=end[0], port=end[1])


def copy_state(st: FlowState) -> FlowState:
    return FlowState(**{k: getattr(st, k) for k in st.__slots__})


Endpoint = tuple[IPAddress, int | None]  # (address, port)


@dataclass
class NatEntry:
    """A translation conntrack holds for the flow: the reply is translated back where it happened."""

    place: Place
    kind: str  # DNAT, SNAT, MASQUERADE, REDIRECT
    before: str
    after: str
    orig: Endpoint  # the rewritten field before: destination for DNAT/REDIRECT, source for SNAT/MASQUERADE
    new: Endpoint
    foreign: Finding | None = None  # an SNAT to an address someone else owns: where its reply goes instead

    @property
    def rewrites_destination(self) -> bool:
        return self.kind in ("DNAT", "REDIRECT")


@dataclass
class Trail:
    hops: list[Hop] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    assumptions: dict[str, bool] = field(default_factory=dict)  # text → could it change the outcome
    nat: list[NatEntry] = field(default_factory=list)
    bridged_without_nf: set[Place] = field(default_factory=set)
    ipvs_done: set[Place] = field(default_factory=set)  # IPVS took the packet there (it does so once)
    pending_reverse: list[NatEntry] = field(default_factory=list)  # reply: translations still to undo
    tracked: set[Place] = field(default_factory=set)  # namespaces whose conntrack saw the request
    untracked: set[Place] = field(default_factory=set)  # reply: namespaces where a NOTRACK rule matched it
    delivered: tuple[Place, FlowState] | None = None
    left: tuple[Place, FlowState, str] | None = None  # left the cluster: node, packet as sent, uplink device
    probability: float = 1.0
    visits: int = 0
    final: FinalState | None = None
    cause: str | None = None

    def fork(self) -> Trail:
        return copy.deepcopy(self)

    def hop(self, view: NetnsView) -> Hop:
        return self.hop_by_id(view.hop_id, view)

    def hop_by_id(self, hop_id: str, view: NetnsView | None = None, kind: HopKind | None = None,
                  name: str | None = None, node: str | None = None) -> Hop:
        if self.hops and self.hops[-1].id == hop_id:
            return self.hops[-1]
        if view is not None:
            is_pod = hop_id.startswith("pod:")
            kind = HopKind.POD if is_pod else HopKind.NODE
            name = view.dump.pod if is_pod else view.node
        hop = Hop(id=hop_id, kind=kind or HopKind.EXTERNAL, name=name or hop_id, node=view.node if view else node)
        self.hops.append(hop)
        return hop

    def policy_hop(self, policy: Finding, view: NetnsView) -> Hop:
        """The pod hop a policy deny enforced in `view` belongs to. An egress deny is the source pod's,
        which the packet has already left (the node's FORWARD enforces it): its own hop earlier on the
        trail, not a second copy of the pod after the node. An ingress deny is the destination's, the
        next hop (the packet may legitimately come back to its source: a pod reaching itself), on the node
        that enforced the deny: a CNI enforces a pod's policy on the node hosting it."""
        hop_id = policy.hop or view.hop_id
        if policy.evidence.get("direction") == "egress":
            earlier = next((h for h in self.hops if h.id == hop_id), None)
            if earlier is not None:
                return earlier
        return self.hop_by_id(hop_id, kind=HopKind.POD, name=hop_id.removeprefix("pod:"), node=view.node)

    def step(self, hop: Hop, kind: StepKind, action: StepAction, detail: str, before: Packet | None = None,
             after: Packet | None = None, **info: object) -> Step:
        """A step on `hop`; `info` are the fields of `kind`'s detail (shared/steps.py)."""
        step = Step.of(kind, action, detail, before, after, **info)
        hop.steps.append(step)
        return step

    def assume(self, text: str, *, could_change: bool) -> None:
        """State an assumption; `could_change` is decided where it is made, never read back from the text."""
        self.assumptions[text] = self.assumptions.get(text, False) or could_change

    def end(self, final: FinalState, cause: str | None = None, found: Finding | None = None) -> None:
        self.final, self.cause = final, cause
        if found is not None and found not in self.findings:
            self.findings.append(found)

    def to_path(self, path_id: str, description: str, direction: str = "forward") -> Path:
        for hop in self.hops:
            severities = [f.severity for f in self.findings if f.hop == hop.id]
            if Severity.ERROR in severities:
                hop.status = HopStatus.ERROR
            elif severities:
                hop.status = HopStatus.WARNING
        return Path(id=path_id, description=description, direction=direction, hops=self.hops,
                    final=self.final or FinalState.ABORT, cause=self.cause)
