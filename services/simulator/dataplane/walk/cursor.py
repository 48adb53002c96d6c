"""The packet at the door of a namespace, and what the model expects of it.

A `Cursor` is one branch of the walk in flight: where the packet is, its header state and the trail
it has left. `Expectation` holds the Kubernetes model's findings, used to name the cause of a drop.
`Walk` is what every handler (crossing, delivery, IPVS, reply, device hooks) may do to the walk:
read the model and end a branch. A handler that needs more (route the packet in a namespace, run a
hook) declares it as its own Protocol extending `Walk`; the walker satisfies them all, and no
handler imports the walker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.walk.trail import Trail, copy_state
from services.simulator.dataplane.walk.world import IPAddress, NetnsView, Place, World
from shared.schemas import DiagnosisRequest, FinalState, Finding, Severity, StepKind
from shared.topology import TopologyReport


@dataclass
class Cursor:
    """The packet at the door of a namespace: `iif=None` means generated there."""

    place: Place
    st: FlowState
    iif: str | None
    trail: Trail
    port_in: str | None = None  # bridge port the packet entered this namespace's bridge through
    l2_dst: IPAddress | None = None  # next-hop address the frame is addressed to (set by the sender)

    def fork(self) -> Cursor:
        return Cursor(self.place, copy_state(self.st), self.iif, self.trail.fork(), self.port_in, self.l2_dst)


@dataclass
class Expectation:
    """What the Kubernetes model says, used to name causes (topology + model findings)."""

    findings: list[Finding] = field(default_factory=list)

    def policy_deny(self, rule_text: str) -> Finding | None:
        for f in self.findings:
            if f.code != "NETWORK_POLICY_DENY" or f.severity != Severity.ERROR:
                continue
            names = [p.strip() for p in str(f.evidence.get("policies", "")).split(",") if p.strip()]
            if any(n in rule_text or n.split("/")[-1] in rule_text for n in names):
                return f
        return None

    def code_at(self, code: str, hop: str | None = None) -> Finding | None:
        return next((f for f in self.findings if f.code == code and hop in (None, f.hop)), None)


class Walk(Protocol):
    """What every handler may do to the walk: read the model it walks, end a branch."""

    @property
    def world(self) -> World: ...

    @property
    def report(self) -> TopologyReport: ...

    @property
    def request(self) -> DiagnosisRequest: ...

    @property
    def reply(self) -> bool:
        """Walking a reply: conntrack ESTABLISHED, translations undone where they happened."""

    def finish(self, c: Cursor, final: FinalState, cause: str | None = None, found: Finding | None = None) -> list:
        """The branch ends in `final` (its trail is recorded)."""

    def drop(self, c: Cursor, found: Finding, view: NetnsView | None = None, detail: str | None = None,
             kind: StepKind = StepKind.LINK, **info: Any) -> list:
        """The branch ends in a DROP `found` decided, with a `kind` step saying where."""

    def blind(self, c: Cursor, view: NetnsView, parts: tuple[str, ...], what: str) -> bool:
        """The next decision needs a part of the dump the agent could not read: the branch ended ABORT."""
