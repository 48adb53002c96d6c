"""The result of evaluating the cloud hops of a path (CloudResult: outcome, hops, findings, assumptions)
and the small helpers every cloud evaluation shares (the index, the packet of a flow, an unmodelled cloud)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from services.simulator.cloudeval.clb import BackendTarget
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.security_groups import Flow
from shared.cloud import CloudInventory
from shared.schemas import Assumption, Finding, Hop, HopKind, HopStatus, Packet

STAGE = "cloud"
Outcome = Literal["pass", "drop", "abort"]


@dataclass
class CloudResult:
    outcome: Outcome = "pass"
    hops: list[Hop] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)
    flow: Flow | None = None  # the packet the cloud checked (the outer one for tunnels)
    backends: list[BackendTarget] = field(default_factory=list)  # internet → LB: where traffic goes on

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def hop(self, hop_id: str, kind: HopKind, name: str, address: Any = None) -> Hop:
        existing = next((h for h in self.hops if h.id == hop_id), None)
        if existing is not None:
            return existing
        new = Hop(id=hop_id, kind=kind, name=name, address=address)
        self.hops.append(new)
        return new

    def fail(self, hop: Hop, f: Finding, outcome: Outcome = "drop") -> CloudResult:
        self.findings.append(f)
        hop.status = HopStatus.ERROR if outcome == "drop" else HopStatus.UNKNOWN
        self.outcome = outcome
        return self

    def warn(self, hop: Hop, f: Finding) -> None:
        self.findings.append(f)
        if hop.status == HopStatus.OK:
            hop.status = HopStatus.WARNING

    def assume(self, text: str, could_change_outcome: bool = False) -> None:
        new = Assumption(stage=STAGE, text=text, could_change_outcome=could_change_outcome)
        if new not in self.assumptions:
            self.assumptions.append(new)


def index_of(inv: CloudInventory | CloudIndex) -> CloudIndex:
    return inv if isinstance(inv, CloudIndex) else CloudIndex(inv)


def packet_of(flow: Flow, **changes: Any) -> Packet | None:
    values = {"src": flow.src, "dst": flow.dst, "protocol": flow.protocol, "sport": flow.sport,
              "dport": flow.dport, **changes}
    return Packet(**values) if values["protocol"] in ("tcp", "udp", "icmp") else None


def not_modelled(inv: CloudInventory) -> CloudResult | None:
    if inv.modelled:
        return None
    result = CloudResult()
    reason = "; ".join(inv.statements) or "cloud layer not modelled"
    result.assume(f"{reason}: security groups, VPC routes, NAT and load balancers were not checked",
                  could_change_outcome=True)
    return result

