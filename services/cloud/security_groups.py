"""Security-group evaluation with Alibaba Cloud's documented semantics.

* The rules of every group of the NIC apply together, sorted by priority (1 is highest);
  at equal priority a drop rule wins. The first matching rule decides.
* No rule matched: normal (basic) groups deny inbound and allow outbound; enterprise
  (advanced) groups deny both.
* Intra-group access has the lowest priority: inbound from a NIC that shares a *normal*
  group whose InnerAccessPolicy is Accept is allowed when no rule decided; one shared Accept
  group suffices even if another shared group says Drop. Enterprise groups never grant it.
* Group-to-group rules (SourceGroupId / DestGroupId) match addresses owned by an ENI that is
  a member of the referenced group — a routed pod address (host-gw, VPC route) is not.
* Stateful: replies of an allowed connection are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.cloud.index import IP, CloudIndex, contains
from shared.cloud import NetworkInterface, SecurityGroupRule


@dataclass(frozen=True)
class Flow:
    """The packet as the cloud sees it (the outer header for tunnelled traffic)."""

    src: IP
    dst: IP
    protocol: str  # tcp, udp, icmp, ipip, gre
    sport: int | None = None
    dport: int | None = None

    def __str__(self) -> str:
        dp = f":{self.dport}" if self.dport is not None else ""
        return f"{self.protocol} {self.src} → {self.dst}{dp}"


@dataclass
class SgDecision:
    allowed: bool
    direction: str
    nic: str
    groups: list[str]
    group: str | None = None  # the group whose rule (or default) decided
    rule: SecurityGroupRule | None = None
    reason: str = ""
    default: bool = False  # decided by a default (no rule matched)
    shared_groups: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def evidence(self) -> dict[str, object]:
        return {"nic": self.nic, "direction": self.direction, "groups": self.groups, "decided_by": self.group,
                "rule": self.rule.model_dump(exclude_defaults=True) if self.rule else None,
                "reason": self.reason, "shared_groups": self.shared_groups, "notes": self.notes}


def _in_range(value: int | None, low: int, high: int) -> bool | None:
    """None when the value is unknown and the range is restrictive."""
    if low == -1:
        return True
    if value is None:
        return None
    return low <= value <= high


def _protocol_matches(rule: SecurityGroupRule, flow: Flow) -> bool:
    return rule.protocol == "all" or rule.protocol == flow.protocol


def _owned_by_group(index: CloudIndex, group_id: str, ip: IP) -> bool:
    return ip in index.members.get(group_id, ())


def rule_matches(index: CloudIndex, rule: SecurityGroupRule, flow: Flow, notes: list[str]) -> bool:
    if not _protocol_matches(rule, flow):
        return False
    if flow.protocol in ("tcp", "udp"):
        if not _in_range(flow.dport, rule.port_from, rule.port_to):
            return False
        sport_ok = _in_range(flow.sport, rule.source_port_from, rule.source_port_to)
        if sport_ok is None:
            notes.append(f"{rule.describe()} restricts the source port, which is unknown: treated as no match")
            return False
        if not sport_ok:
            return False
    if rule.direction == "ingress":
        peer, local, peer_group, peer_cidr, local_cidr = flow.src, flow.dst, rule.source_group_id, \
            rule.source_cidr, rule.dest_cidr
    else:
        peer, local, peer_group, peer_cidr, local_cidr = flow.dst, flow.src, rule.dest_group_id, \
            rule.dest_cidr, rule.source_cidr
    if local_cidr and not contains(local_cidr, local):
        return False
    if peer_group:
        return _owned_by_group(index, peer_group, peer)
    return not peer_cidr or contains(peer_cidr, peer)


def sorted_rules(index: CloudIndex, group_ids: tuple[str, ...], direction: str
                 ) -> list[tuple[str, SecurityGroupRule]]:
    rules = [(g, r) for g in group_ids if g in index.groups for r in index.groups[g].rules if r.direction == direction]
    # priority first; at equal priority drop before accept (drop wins)
    return sorted(rules, key=lambda gr: (gr[1].priority, gr[1].policy != "drop"))


def evaluate(index: CloudIndex, nic: NetworkInterface, direction: str, flow: Flow) -> SgDecision:
    groups = tuple(nic.security_group_ids)
    decision = SgDecision(allowed=False, direction=direction, nic=nic.id, groups=list(groups))
    missing = [g for g in groups if g not in index.groups]
    if missing:
        decision.notes.append(f"security groups {missing} of {nic.id} were not collected: their rules are unknown")
    if not groups:
        decision.notes.append(f"{nic.id} has no security group")
    for group_id, rule in sorted_rules(index, groups, direction):
        if rule_matches(index, rule, flow, decision.notes):
            decision.allowed, decision.group, decision.rule = rule.policy == "accept", group_id, rule
            decision.reason = rule.describe()
            return decision
    decision.default = True
    known = [index.groups[g] for g in groups if g in index.groups]
    if direction == "egress":
        normal = next((g for g in known if g.type == "normal"), None)
        decision.allowed = normal is not None
        decision.group = normal.id if normal else (known[0].id if known else None)
        decision.reason = ("default: normal security groups allow outbound traffic" if normal else
                           "default: enterprise security groups deny outbound traffic with no matching rule")
        return decision
    peer = index.eni_by_ip.get(flow.src)
    shared = [g for g in known if peer is not None and g.id in peer.security_group_ids]
    decision.shared_groups = [g.id for g in shared]
    accepting = next((g for g in shared if g.type == "normal" and g.inner_access_policy == "Accept"), None)
    if accepting is not None:
        decision.allowed, decision.group = True, accepting.id
        decision.reason = f"intra-group access of {accepting.id} (InnerAccessPolicy Accept)"
        return decision
    decision.group = shared[0].id if shared else (known[0].id if known else None)
    if peer is None:
        decision.notes.append(f"source {flow.src} is not an address of any ENI: intra-group access and "
                              "group-to-group rules cannot apply to it")
    if shared:
        kinds = ", ".join(f"{g.id} ({g.type}, InnerAccessPolicy {g.inner_access_policy})" for g in shared)
        decision.reason = f"default deny: no rule matched and the shared groups grant no intra-group access: {kinds}"
    else:
        decision.reason = "default deny: no inbound rule matched (security groups deny inbound by default)"
    return decision
