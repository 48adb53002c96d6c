"""NetworkPolicy v1 engine: compile once (`PolicyIndex.build`), evaluate packets, explain denies."""

from services.simulator.policy.evaluator import (
    DirectionVerdict,
    PacketKey,
    PolicyIndex,
    PolicyMiss,
    PolicyVerdict,
    RuleMatch,
)
from services.simulator.policy.findings import deny_finding, deny_findings, policy_step
from services.simulator.policy.model import PolicyRef

__all__ = [
    "DirectionVerdict",
    "PacketKey",
    "PolicyIndex",
    "PolicyMiss",
    "PolicyRef",
    "PolicyVerdict",
    "RuleMatch",
    "deny_finding",
    "deny_findings",
    "policy_step",
]
