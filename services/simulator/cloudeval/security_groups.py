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

from services.simulator.cloudeval.index import IP, CloudIndex, network
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


Span = tuple[int, int, int]  # (ip version, first address, last address) as integers


def _span(cidr: str | None) -> Span | None:
    if not cidr:
        return None
    net = network(cidr)
    return (net.version, int(net.network_address), int(net.broadcast_address))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule flattened to integers (ports, CIDR spans) for a tight evaluation loop."""

    group: str
    rule: SecurityGroupRule
    port_from: int
    port_to: int
    sport_from: int
    sport_to: int
    peer: Span | None  # the remote side: source for ingress, destination for egress
    local: Span | None
    peer_group: str | None

    @classmethod
    def of(cls, group: str, rule: SecurityGroupRule) -> CompiledRule:
        ingress = rule.direction == "ingress"
        peer, local = (rule.source_cidr, rule.dest_cidr) if ingress else (rule.dest_cidr, rule.source_cidr)
        return cls(group, rule, rule.port_from, rule.port_to, rule.source_port_from, rule.source_port_to,
                   _span(peer), _span(local), rule.source_group_id if ingress else rule.dest_group_id)


def sorted_rules(index: CloudIndex, group_ids: tuple[str, ...], direction: str, protocol: str
                 ) -> list[CompiledRule]:
    """The pooled rules of a NIC's groups that can match `protocol`, in evaluation order,
    compiled once per (group set, direction, protocol)."""
    key = ("sg", group_ids, direction, protocol)
    cached = index.memo.get(key)
    if cached is None:
        rules = [CompiledRule.of(g, r) for g in group_ids if g in index.groups for r in index.groups[g].rules
                 if r.direction == direction and r.protocol in ("all", protocol)]
        # priority first; at equal priority drop before accept (drop wins)
        cached = index.memo[key] = sorted(rules, key=lambda c: (c.rule.priority, c.rule.policy != "drop"))
    return cached  # type: ignore[return-value]  # memo holds several kinds: this key's are these rules


def first_match(index: CloudIndex, rules: list[CompiledRule], flow: Flow, ingress: bool,
                notes: list[str]) -> CompiledRule | None:
    ports = flow.protocol in ("tcp", "udp")
    dport, sport, version = flow.dport, flow.sport, flow.src.version
    peer_ip, local_ip = (flow.src, flow.dst) if ingress else (flow.dst, flow.src)
    peer, local = int(peer_ip), int(local_ip)
    for c in rules:
        if ports:
            if c.port_from != -1 and (dport is None or not c.port_from <= dport <= c.port_to):
                continue
            if c.sport_from != -1:
                if sport is None:
                    notes.append(f"{c.rule.describe()} restricts the source port, which is unknown: "
                                 "treated as no match")
                    continue
                if not c.sport_from <= sport <= c.sport_to:
                    continue
        if c.local is not None and not (c.local[0] == version and c.local[1] <= local <= c.local[2]):
            continue
        if c.peer_group is not None:
            # group-to-group: the remote address must belong to an ENI in that group
            if peer_ip in index.members.get(c.peer_group, ()):
                return c
            continue
        if c.peer is None or (c.peer[0] == version and c.peer[1] <= peer <= c.peer[2]):
            return c
    return None


def evaluate(index: CloudIndex, nic: NetworkInterface, direction: str, flow: Flow) -> SgDecision:
    groups = tuple(nic.security_group_ids)
    decision = SgDecision(allowed=False, direction=direction, nic=nic.id, groups=list(groups))
    missing = [g for g in groups if g not in index.groups]
    if missing:
        decision.notes.append(f"security groups {missing} of {nic.id} were not collected: their rules are unknown")
    if not groups:
        decision.notes.append(f"{nic.id} has no security group")
    rules = sorted_rules(index, groups, direction, flow.protocol)
    compiled = first_match(index, rules, flow, direction == "ingress", decision.notes)
    if compiled is not None:
        rule = compiled.rule
        decision.allowed, decision.group, decision.rule = rule.policy == "accept", compiled.group, rule
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
