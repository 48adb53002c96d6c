"""The checks a cloud hop is made of, shared by every direction: the instance of a node, the security
groups of a NIC, the network ACL of its vSwitch, the VPC route and whether its next hop forwards —
each recorded as a Step on the hop, a finding when it drops."""

from __future__ import annotations

from services.simulator.cloudeval import netacl
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult, packet_of
from services.simulator.cloudeval.security_groups import Flow, SgDecision
from services.simulator.cloudeval.vpc import RouteDecision
from shared.cloud import Instance, NetworkInterface
from shared.codes import finding
from shared.schemas import Finding, Hop, HopKind, Severity, Step, StepAction, StepKind
from shared.steps import SecurityGroupRuleRef, VpcRouteEntry


def node_instance(result: CloudResult, index: CloudIndex, node: str | None, hop: Hop, role: str) -> Instance | None:
    instance = index.instance_of_node(node)
    if instance is None:
        result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the ECS instance of {role} node {node}",
                                 reason="the node is not mapped to a collected instance (providerID, region)"),
                    outcome="abort")
        return None
    if instance.status != "Running":
        result.fail(hop, finding("ECS_INSTANCE_NOT_RUNNING", hop.id, instance=instance.id, node=node,
                                 status=instance.status))
        return None
    return instance


def sg_step(result: CloudResult, hop: Hop, decision: SgDecision, flow: Flow, instance: Instance,
             peer: Instance | None = None) -> bool:
    verdict = "allowed" if decision.allowed else "denied"
    rule = decision.rule
    hop.steps.append(Step.of(
        StepKind.SECURITY_GROUP, StepAction.ALLOW if decision.allowed else StepAction.DROP,
        f"security groups {', '.join(decision.groups) or '(none)'} of {decision.nic} ({instance.id}) "
        f"{decision.direction}: {verdict} by {decision.reason}", packet_of(flow),
        direction=decision.direction, instance=instance.id, nic=decision.nic, groups=decision.groups,
        group=decision.group, reason=decision.reason, shared_groups=decision.shared_groups, notes=decision.notes,
        undecided=decision.undecided or None,
        rule=SecurityGroupRuleRef(
            id=rule.id, policy=rule.policy, priority=rule.priority, protocol=rule.protocol,
            port_range=(f"port list {rule.port_range_list_id}" if rule.port_range_list_id else
                        f"{rule.port_from}/{rule.port_to}"),
            source=rule.source_cidr or rule.source_group_id or rule.source_prefix_list_id,
            destination=rule.dest_cidr or rule.dest_group_id or rule.dest_prefix_list_id,
            description=rule.description) if rule else None,
        finding=None if decision.allowed else "SG_DENY"))
    for note in decision.notes:
        result.assume(note, could_change_outcome=not decision.allowed)
    for note in decision.undecided:
        result.assume(f"security group rule not decidable: {note}; it would have "
                      f"{'allowed' if not decision.allowed else 'denied'} the packet", could_change_outcome=True)
    if decision.allowed:
        return True
    deny = finding("SG_DENY", hop.id, group=decision.group or "(none)", packet=str(flow),
                   direction=decision.direction, rule=decision.reason,
                   evidence={**decision.evidence(), "instance": instance.id})
    if decision.undecided:
        # a rule ahead that could not be decided would have admitted it: the drop is not known
        undecidable(result, hop, deny, f"what security-group rule(s) {'; '.join(decision.undecided)} match")
        return False
    result.fail(hop, deny)
    # sharing a group would have admitted it: say so, but only where it decided the outcome
    if decision.direction == "ingress" and decision.default and not decision.shared_groups and peer is not None:
        result.findings.append(finding("SG_NOT_SHARED", hop.id, src_instance=peer.id, dst_instance=instance.id))
    return False


def route_step(hop: Hop, decision: RouteDecision, flow: Flow, ok: bool, detail: str) -> None:
    entry, next_hop = decision.entry, decision.next_hop
    hop.steps.append(Step.of(
        StepKind.VPC_ROUTE, StepAction.FORWARD if ok else StepAction.DROP, detail, packet_of(flow),
        route_table=decision.table.id if decision.table else None,
        route_table_type=decision.table.type if decision.table else None,
        entry=VpcRouteEntry(id=entry.id, destination=entry.destination, type=entry.type,
                            next_hop_type=next_hop[0] if next_hop else None,
                            next_hop=next_hop[1] if next_hop else None) if entry else None,
        local_vswitch=decision.local.id if decision.local else None, notes=decision.notes))


def acl_step(result: CloudResult, index: CloudIndex, hop: Hop, nic: NetworkInterface, peer_vswitch: str | None,
              direction: str, flow: Flow) -> bool:
    """The network ACL of `nic`'s vSwitch on `flow` leaving (egress) or entering (ingress) it."""
    if index.network_acls is None:
        result.assume("network ACLs were not collected (an inventory older than their support): vSwitch ACLs "
                      "were not checked", could_change_outcome=True)
        return True
    decision = netacl.check(index, nic.vswitch_id, peer_vswitch, direction, flow)
    if decision is None:
        return True
    hop.steps.append(Step.of(
        StepKind.POLICY, StepAction.ALLOW if decision.allowed else StepAction.DROP,
        f"network ACL {decision.acl.id} of vSwitch {decision.vswitch} ({direction}, stateless): "
        f"{'allowed' if decision.allowed else 'denied'} by {decision.reason}", packet_of(flow),
        direction=direction, allowed=decision.allowed, network_acl=decision.acl.id, vswitch=decision.vswitch,
        entry=decision.reason, undecided=decision.undecided or None,
        finding=None if decision.allowed else "VPC_NETWORK_ACL_DENY"))
    for note in decision.undecided:
        result.assume(f"network ACL {decision.acl.id}: {note}", could_change_outcome=True)
    for note in decision.assumed:
        result.assume(f"network ACL {decision.acl.id}: {note}")
    if decision.allowed:
        return True
    deny = finding("VPC_NETWORK_ACL_DENY", hop.id, acl=decision.acl.name or decision.acl.id,
                   vswitch=decision.vswitch, packet=str(flow), direction=direction,
                   entry=decision.reason, evidence=decision.evidence())
    if decision.undecided:
        undecidable(result, hop, deny, f"what network ACL entries {'; '.join(decision.undecided)} match")
        return False
    result.fail(hop, deny)
    return False


def undecidable(result: CloudResult, hop: Hop, deny: Finding, what: str) -> None:
    """A drop that an undecidable rule ahead of it could have turned into a pass: not a confident
    UNREACHABLE — the data is missing (abort), the drop is kept as a warning."""
    result.fail(hop, finding("DATA_MISSING", hop.id, what=what, reason="the list, group or port they name was "
                             "not collected, and they would have admitted the packet"), outcome="abort")
    result.findings.append(deny.model_copy(update={"severity": Severity.WARNING}))


def not_forwarding(index: CloudIndex, hop: tuple[str, str | None]) -> str | None:
    """Why a route's next hop does not forward (a stopped instance, a detached ENI), or None.
    An ECS instance can be reached only while it is Running (instance lifecycle)."""
    kind, hop_id = hop
    if kind == "Instance":
        instance = index.instances.get(hop_id or "")
        return f"instance {hop_id} {instance.status}" if instance and instance.status != "Running" else None
    if kind == "NetworkInterface":
        eni = index.enis.get(hop_id or "")
        if eni is None:
            return None
        if not eni.instance_id or eni.status not in ("InUse", ""):
            return f"ENI {hop_id} {eni.status or 'detached'} (attached to no instance)"
        owner = index.instances.get(eni.instance_id)
        if owner is not None and owner.status != "Running":
            return f"ENI {hop_id} on instance {owner.id} {owner.status}"
    return None


def fail_next_hop(result: CloudResult, hop: Hop, decision: RouteDecision, flow: Flow, state: str) -> None:
    next_hop = decision.next_hop or ("?", None)
    table = decision.table.id if decision.table else "(no table)"
    route = decision.entry.destination if decision.entry else str(flow.dst)
    route_step(hop, decision, flow, False, f"{decision.describe()}: the next hop does not forward ({state})")
    result.fail(hop, finding("VPC_NEXT_HOP_NOT_FORWARDING", hop.id, route=route, route_table=table,
                             next_hop=f"{next_hop[0]} {next_hop[1]}", state=state,
                             evidence={"dst": str(flow.dst), **decision.evidence()}))


def expected_hop(index: CloudIndex, instance: Instance, hop: tuple[str, str | None]) -> bool:
    kind, hop_id = hop
    if kind == "Instance":
        return hop_id == instance.id
    if kind == "NetworkInterface":
        eni = index.enis.get(hop_id or "")
        return eni is not None and eni.instance_id == instance.id
    return False


def leave_source(index: CloudIndex, src_node: str, reply: bool = False,
                  crossing: int = 1) -> tuple[CloudResult, Hop, Instance | None]:
    """A new result whose VPC hop the packet enters from `src_node`'s instance (None: the
    instance is missing or not running, and the result says so). `crossing` numbers the VPC
    crossings of one path (the second one is hop `vpc:<id>#2`)."""
    result = CloudResult()
    src_instance = index.instance_of_node(src_node)
    vpc = src_instance.vpc_id if src_instance and src_instance.vpc_id else None
    hop_id, name = f"vpc:{vpc or '?'}", vpc or "VPC"
    if crossing > 1:
        hop_id, name = f"{hop_id}#{crossing}", f"{name} (crossing {crossing})"
    hop = result.hop(f"{hop_id}:reply", HopKind.VPC, f"{name} (reply)") if reply else \
        result.hop(hop_id, HopKind.VPC, name)
    return result, hop, node_instance(result, index, src_node, hop, "source")

