"""Security-group evaluation with Alibaba Cloud's documented semantics (pages cited in docs/cloud.md).

* InnerAccessPolicy Accept of a *normal* group wins over every custom rule: NICs that share
  such a group reach each other whatever the rules say (ModifySecurityGroupPolicy). One shared
  Accept group suffices even if another shared group says Drop. Enterprise groups never grant it.
* Otherwise the rules of every group of the NIC apply together, sorted by priority (1 is
  highest); at equal priority a drop rule wins. The first matching rule decides.
* No rule matched: normal (basic) groups deny inbound and allow outbound; enterprise
  (advanced) groups deny both. The Drop policy has a lower priority than the custom rules.
* Group-to-group rules (SourceGroupId / DestGroupId) match addresses owned by an ENI that is
  a member of the referenced group — a routed pod address (host-gw, VPC route) is not. A group
  of another account (SourceGroupOwnerAccount) or one not collected has unknown members.
* Prefix lists (SourcePrefixListId / DestPrefixListId) match their entries, port lists
  (PortRangeListId) their ranges; a list that was not collected makes the rule undecidable,
  which is said (and matters when the rule could have changed the decision).
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
    # rules before the decision whose match could not be decided, and which would have decided otherwise
    undecided: list[str] = field(default_factory=list)

    def evidence(self) -> dict[str, object]:
        return {"nic": self.nic, "direction": self.direction, "groups": self.groups, "decided_by": self.group,
                "rule": self.rule.model_dump(exclude_defaults=True) if self.rule else None,
                "reason": self.reason, "shared_groups": self.shared_groups, "notes": self.notes,
                "undecided": self.undecided}


Span = tuple[int, int, int]  # (ip version, first address, last address) as integers


def _span(cidr: str | None) -> Span | None:
    if not cidr:
        return None
    net = network(cidr)
    return (net.version, int(net.network_address), int(net.broadcast_address))


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("/")
    return int(low), int(high or low)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule flattened to integers (ports, CIDR spans) for a tight evaluation loop. A port list or a
    prefix list adds `port_ranges` / `peer_spans`; `unknown` says why the rule's match cannot be decided
    (a list or a group that was not collected)."""

    group: str
    rule: SecurityGroupRule
    port_from: int
    port_to: int
    sport_from: int
    sport_to: int
    peer: Span | None  # the remote side: source for ingress, destination for egress
    local: Span | None
    peer_group: str | None
    port_ranges: tuple[tuple[int, int], ...] | None = None
    peer_spans: tuple[Span, ...] | None = None
    unknown: str | None = None

    @classmethod
    def of(cls, index: CloudIndex, group: str, rule: SecurityGroupRule) -> CompiledRule:
        ingress = rule.direction == "ingress"
        peer, local = (rule.source_cidr, rule.dest_cidr) if ingress else (rule.dest_cidr, rule.source_cidr)
        prefix_list = rule.source_prefix_list_id if ingress else rule.dest_prefix_list_id
        peer_group = rule.source_group_id if ingress else rule.dest_group_id
        owner = rule.source_group_owner_account if ingress else rule.dest_group_owner_account
        unknown = port_ranges = peer_spans = None
        if prefix_list:
            lists = index.prefix_lists
            if lists is None or prefix_list not in lists:
                unknown = f"prefix list {prefix_list} was not collected"
            else:
                peer_spans = tuple(s for s in (_span(c) for c in lists[prefix_list].entries) if s is not None)
        if rule.port_range_list_id:
            plists = index.port_lists
            if plists is None or rule.port_range_list_id not in plists:
                unknown = unknown or f"port list {rule.port_range_list_id} was not collected"
            else:
                port_ranges = tuple(_range(e) for e in plists[rule.port_range_list_id].entries)
        if peer_group and peer_group not in index.groups:
            account = f" of account {owner}" if owner else ""
            unknown = unknown or f"the members of security group {peer_group}{account} are not in the inventory"
        return cls(group, rule, rule.port_from, rule.port_to, rule.source_port_from, rule.source_port_to,
                   _span(peer), _span(local), peer_group, port_ranges, peer_spans, unknown)


def sorted_rules(index: CloudIndex, group_ids: tuple[str, ...], direction: str, protocol: str
                 ) -> list[CompiledRule]:
    """The pooled rules of a NIC's groups that can match `protocol`, in evaluation order,
    compiled once per (group set, direction, protocol)."""
    key = ("sg", group_ids, direction, protocol)
    cached = index.memo.get(key)
    if cached is None:
        rules = [CompiledRule.of(index, g, r) for g in group_ids if g in index.groups for r in index.groups[g].rules
                 if r.direction == direction and r.protocol in ("all", protocol)]
        # priority first; at equal priority drop before accept (drop wins)
        cached = index.memo[key] = sorted(rules, key=lambda c: (c.rule.priority, c.rule.policy != "drop"))
    return cached  # type: ignore[return-value]  # memo holds several kinds: this key's are these rules


def first_match(index: CloudIndex, rules: list[CompiledRule], flow: Flow, ingress: bool,
                notes: list[str], undecided: list[CompiledRule] | None = None) -> CompiledRule | None:
    """The first rule that matches `flow`; rules whose match cannot be decided are skipped and
    collected in `undecided`."""
    ports = flow.protocol in ("tcp", "udp")
    dport, sport, version = flow.dport, flow.sport, flow.src.version
    peer_ip, local_ip = (flow.src, flow.dst) if ingress else (flow.dst, flow.src)
    peer, local = int(peer_ip), int(local_ip)
    for c in rules:
        if ports:
            if c.port_ranges is not None:
                if dport is None or not _in_ranges(dport, c.port_ranges):
                    continue
            elif c.port_from != -1 and c.unknown is None and (dport is None or not c.port_from <= dport <= c.port_to):
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
            if c.unknown is not None and peer_ip not in index.eni_by_ip and undecided is not None:
                undecided.append(c)
            continue
        if c.unknown is not None:
            if undecided is not None:
                undecided.append(c)
            continue
        if c.peer_spans is not None:
            if _in_spans(version, peer, c.peer_spans):
                return c
            continue
        if c.peer is None or (c.peer[0] == version and c.peer[1] <= peer <= c.peer[2]):
            return c
    return None


def _in_ranges(port: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= port <= high for low, high in ranges)


def _in_spans(version: int, address: int, spans: tuple[Span, ...]) -> bool:
    return any(v == version and first <= address <= last for v, first, last in spans)


def evaluate(index: CloudIndex, nic: NetworkInterface, direction: str, flow: Flow) -> SgDecision:
    groups = tuple(nic.security_group_ids)
    decision = SgDecision(allowed=False, direction=direction, nic=nic.id, groups=list(groups))
    missing = [g for g in groups if g not in index.groups]
    if missing:
        decision.notes.append(f"security groups {missing} of {nic.id} were not collected: their rules are unknown")
    if not groups:
        decision.notes.append(f"{nic.id} has no security group")
    known = [index.groups[g] for g in groups if g in index.groups]
    # the other NIC of the flow: intra-group access is between NICs of one group
    peer = index.eni_by_ip.get(flow.src if direction == "ingress" else flow.dst)
    shared = [g for g in known if peer is not None and peer.id != nic.id and g.id in peer.security_group_ids]
    decision.shared_groups = [g.id for g in shared]
    accepting = next((g for g in shared if g.type == "normal" and g.inner_access_policy == "Accept"), None)
    if accepting is not None:
        # InnerAccessPolicy Accept takes precedence over the custom rules (ModifySecurityGroupPolicy)
        decision.allowed, decision.group = True, accepting.id
        decision.reason = f"intra-group access of {accepting.id} (InnerAccessPolicy Accept, above every custom rule)"
        return decision
    undecided: list[CompiledRule] = []
    rules = sorted_rules(index, groups, direction, flow.protocol)
    compiled = first_match(index, rules, flow, direction == "ingress", decision.notes, undecided)
    if compiled is not None:
        rule = compiled.rule
        decision.allowed, decision.group, decision.rule = rule.policy == "accept", compiled.group, rule
        decision.reason = rule.describe()
        _undecided(decision, undecided)
        return decision
    decision.default = True
    if direction == "egress":
        normal = next((g for g in known if g.type == "normal"), None)
        decision.allowed = normal is not None
        decision.group = normal.id if normal else (known[0].id if known else None)
        decision.reason = ("default: normal security groups allow outbound traffic" if normal else
                           "default: enterprise security groups deny outbound traffic with no matching rule")
        _undecided(decision, undecided)
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
    _undecided(decision, undecided)
    return decision


def _undecided(decision: SgDecision, undecided: list[CompiledRule]) -> None:
    """Undecidable rules ahead of the decision matter when they would have decided the other way."""
    flipping = [c for c in undecided if (c.rule.policy == "accept") != decision.allowed]
    decision.undecided = [f"{c.rule.describe()} in {c.group}: {c.unknown}" for c in flipping]
