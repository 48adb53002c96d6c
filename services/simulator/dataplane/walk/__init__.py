"""The dataplane walk: follow the packet hop by hop through the collected node dumps.

`walk(report, request, dumps, expected)` returns the forward paths (one per branch: Service
endpoints, ECMP) and, when asked, the reply paths, with the findings and assumptions the walk made.
The Kubernetes model's findings (`expected`) name causes: a drop in a NetworkPolicy chain the
policy evaluator denies is NETWORK_POLICY_DENY, a kube-proxy no-endpoint REJECT is
SERVICE_NO_ENDPOINT.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from services.simulator.dataplane.walk.cursor import Expectation
from services.simulator.dataplane.walk.trail import Trail
from services.simulator.dataplane.walk.walker import Walker
from services.simulator.dataplane.walk.world import NodeView, World
from shared.cloud import CloudInventory
from shared.netstack import NodeDump
from shared.schemas import Assumption, DiagnosisRequest, FinalState, Finding, Path
from shared.topology import TopologyReport

STAGE = "simulator"

__all__ = ["NodeView", "WalkResult", "World", "walk"]


@dataclass
class WalkResult:
    paths: list[Path] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)
    wanted: list[str] = field(default_factory=list)  # uncollected nodes the packet reaches (collect on demand)


def walk(report: TopologyReport, request: DiagnosisRequest, dumps: dict[str, NodeDump],
         expected: list[Finding] | None = None, reply: bool = True,
         views: dict[str, NodeView] | None = None, cloud: CloudInventory | None = None) -> WalkResult:
    world = World(dumps, views)
    walker = Walker(world, report, request, Expectation(list(expected or [])), cloud=cloud)
    trails = walker.run()
    out = WalkResult()
    used: set[str] = set()
    replies: list[tuple[str, Trail]] = []
    for i, trail in enumerate(trails):
        path_id, description = _name(report, trail, i, used)
        if reply and (trail.final == FinalState.DELIVER or (trail.final == FinalState.FORWARD and trail.left)):
            backs = walker.replies(trail)
            replies.extend((path_id, back) for back in backs)
            _reply_outcome(trail, backs)
        elif not reply and trail.final in (FinalState.DELIVER, FinalState.FORWARD):  # unchecked is no success
            trail.assume("the reply path was not checked (check_reply is off): the connection completes only if "
                         "the reply comes back through every translation the request met", could_change=True)
        out.paths.append(trail.to_path(path_id, description))
        _collect(out, trail)
    numbered: dict[str, int] = {}  # reply ids follow their forward path: p1.reply0, p1.reply1, …
    for path_id, back in replies:
        n = numbered[path_id] = numbered.get(path_id, -1) + 1
        out.paths.append(back.to_path(f"{path_id}.reply{n}", f"reply of {path_id}", "reply"))
        _collect(out, back)
    out.wanted = sorted(world.wanted)
    return out


def _reply_outcome(forward: Trail, backs: list[Trail]) -> None:
    """A request that is delivered (or leaves the cluster) but whose reply is dropped does not connect:
    the forward path ends in the reply's cause (its hop marked), so the verdict follows the kernel.
    Replies that only drop on some branches (an unmodelled rule) leave the outcome open, which is stated."""
    finals = {b.final for b in backs}
    if finals == {FinalState.DROP}:
        forward.final, forward.cause = FinalState.DROP, backs[0].cause
        forward.findings.extend(f for b in backs for f in b.findings if f not in forward.findings)
        _show_reply_drop(forward, backs[0])
    elif FinalState.DROP in finals:
        forward.assume("UNSUPPORTED_RULE: the reply is dropped on some of its branches (see the reply paths)",
                       could_change=True)
    elif FinalState.ABORT in finals:
        forward.assume("the reply path could not be followed to the client", could_change=True)


def _show_reply_drop(forward: Trail, back: Trail) -> None:
    """The reply died on a hop the request never crossed (it was routed around the request's path):
    that hop ends the forward path too, so the path shows where the connection failed."""
    cause = next((f for f in back.findings if f.code == back.cause), None)
    if cause is None or cause.hop is None or any(h.id == cause.hop for h in forward.hops):
        return
    hop = next((h for h in back.hops if h.id == cause.hop), None)
    if hop is not None:
        forward.hops.append(copy.deepcopy(hop))


def _collect(out: WalkResult, trail: Trail) -> None:
    for f in trail.findings:
        if f not in out.findings:
            out.findings.append(f)
    for text, could_change in trail.assumptions.items():
        known = next((i for i, a in enumerate(out.assumptions) if a.text == text), None)
        if known is None:
            out.assumptions.append(Assumption(stage=STAGE, text=text, could_change_outcome=could_change))
        elif could_change:
            out.assumptions[known].could_change_outcome = True


def _name(report: TopologyReport, trail: Trail, i: int, used: set[str]) -> tuple[str, str]:
    """Name a walked path after the candidate path (backend) it reached, so model and walk line up."""
    dst = next((s.packet_in for h in reversed(trail.hops) for s in reversed(h.steps) if s.packet_in), None)
    cp = next((p for p in report.paths if dst is not None and p.dst_address == dst.dst and
               (p.dst_port is None or p.dst_port == dst.dport)), None)
    base = cp.id if cp else f"walk{i}"
    path_id, n = base, 1
    while path_id in used:
        n += 1
        path_id = f"{base}.{n}"
    used.add(path_id)
    share = f" (probability {trail.probability:.2f})" if trail.probability < 0.999 else ""
    return path_id, (cp.description if cp else "dataplane walk") + share
