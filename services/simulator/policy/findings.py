"""Turn a policy deny into the NETWORK_POLICY_DENY finding (and a simulator Step)."""

from __future__ import annotations

from services.simulator.policy.evaluator import DirectionVerdict, PolicyVerdict
from shared.codes import finding
from shared.schemas import Finding, Severity, Step, StepAction, StepKind


def deny_finding(verdict: PolicyVerdict, direction: DirectionVerdict, hop_id: str | None) -> Finding:
    """One finding per denying direction; WARNING when the CNI is known not to enforce policy."""
    policies = ", ".join(str(p) for p in direction.isolating)
    details = "; ".join(f"{d.policy}: {d.reason}" for d in direction.denials)
    reason = f"{direction.explanation} — {details}" if details else direction.explanation
    return finding(
        "NETWORK_POLICY_DENY",
        hop_id,
        severity=Severity.WARNING if verdict.enforced is False else None,
        policies=policies,
        src=verdict.packet.src,
        dst=f"{verdict.packet.dst}:{verdict.packet.port}",
        reason=reason,
        direction=direction.direction,
        change=direction.change,
        evidence={
            "policy_verdict": direction.evidence(),
            "protocol": verdict.packet.protocol,
            "port": verdict.packet.port,
            "enforced": verdict.enforced,
        },
    )


def deny_findings(verdict: PolicyVerdict, egress_hop: str | None, ingress_hop: str | None) -> list[Finding]:
    """Findings for every direction that denies (egress at the source hop, ingress at the destination)."""
    hops = {"egress": egress_hop, "ingress": ingress_hop}
    return [deny_finding(verdict, d, hops[d.direction]) for d in (verdict.egress, verdict.ingress) if not d.allowed]


def policy_step(verdict: PolicyVerdict, direction: DirectionVerdict) -> Step:
    """A `policy` step for a hop: ALLOW, DROP, or INFO when the CNI does not enforce the deny."""
    if direction.allowed:
        action = StepAction.ALLOW
    else:
        action = StepAction.INFO if verdict.enforced is False else StepAction.DROP
    # the explanation is the detail's sentence; the rest is the step's typed PolicyInfo
    info = {k: v for k, v in direction.evidence().items() if k != "explanation"}
    return Step.of(StepKind.POLICY, action, f"NetworkPolicy {direction.direction}: {direction.explanation}", **info)
