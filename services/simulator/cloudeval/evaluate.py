"""The cloud hops of a path inside the VPC and through a CLB: what the VPC routes, network ACLs,
security groups and the CLB do to a packet, as Hops with Steps, findings and an outcome (result.py).
Called by the simulator at the node uplink; pure functions of the inventory. Internet traffic to and
from instances is in to_internet.py (outbound: EIP, NAT gateway, IPv4 gateway) and from_internet.py
(inbound: EIP or public IP to the NIC that holds it); the checks all of them share in hopchecks.py.

    index = CloudIndex(inventory)            # once per diagnosis
    r = evaluate_node_to_node(index, "node-1", "node-2", packet, encapsulation="vxlan")
    r.outcome in ("pass", "drop", "abort"); r.hops; r.findings; r.assumptions

Tunnelled traffic (vxlan, ipip) is checked as the outer node-to-node packet — that is what
the VPC and the security groups see, never the inner pod packet.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any, Literal

from services.simulator.cloudeval import ipv4gw, netacl
from services.simulator.cloudeval.clb import (
    BackendTarget,
    acl_denies,
    backends,
    find_load_balancer,
    listener_acl_ids,
    listener_for,
)
from services.simulator.cloudeval.hopchecks import (
    acl_step,
    expected_hop,
    fail_next_hop,
    leave_source,
    node_instance,
    not_forwarding,
    route_step,
    sg_step,
)
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult, index_of, not_modelled, packet_of
from services.simulator.cloudeval.security_groups import Flow, evaluate
from services.simulator.cloudeval.vpc import route_lookup
from shared.cloud import CloudInventory, Instance, Listener, NetworkInterface
from shared.codes import finding
from shared.schemas import Finding, Hop, HopKind, HopStatus, Packet, Severity, Step, StepAction, StepKind
from shared.steps import LbBackend
from shared.topology import ServiceResolution

VXLAN_PORT = 8472  # flannel's default; pass 4789 for the IANA port
Encapsulation = Literal["vxlan", "ipip"] | None


def evaluate_node_to_node(inv: CloudInventory | CloudIndex, src_node: str, dst_node: str | None, packet: Packet,
                          encapsulation: Encapsulation = None, vxlan_port: int = VXLAN_PORT,
                          reply: bool = False, crossing: int = 1) -> CloudResult:
    """A packet leaving `src_node`'s uplink for `dst_node` (or for the VPC address `packet.dst`
    when dst_node is None): egress security groups, the VPC route, ingress security groups.
    `reply`: the answer of an allowed connection (hop `vpc:<id>:reply`) — security groups are
    stateful and let it pass, but VPC routes and network ACLs are not: a route that exists one way
    only (host-gw pod CIDRs) delivers the request and loses every reply."""
    index = index_of(inv)
    if (skip := not_modelled(index.inv)) is not None:
        return skip
    result, hop, src = leave_source(index, src_node, reply, crossing)
    if src is None:
        return result
    owner = index.eni_by_ip.get(packet.dst)
    if dst_node is None and owner is not None and owner.instance_id:
        dst_node = next((n for n, i in index.inv.nodes.items() if i == owner.instance_id), None)
        dst = index.instances.get(owner.instance_id)
    else:
        dst = node_instance(result, index, dst_node, hop, "destination")
    if dst is None:
        if result.outcome == "pass":
            result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the owner of {packet.dst} in the VPC",
                                     reason="no collected ENI holds that address"), outcome="abort")
        return result
    if encapsulation is not None:
        outer_src, outer_dst = index.primary_eni(src).primary_ip, index.primary_eni(dst).primary_ip
        if not outer_src or not outer_dst:
            return result.fail(hop, finding("DATA_MISSING", hop.id, what="the primary private IPs of the tunnel "
                                            "endpoints", reason="not in the inventory"), outcome="abort")
        flow = (Flow(ip_address(outer_src), ip_address(outer_dst), "udp", None, vxlan_port)
                if encapsulation == "vxlan" else Flow(ip_address(outer_src), ip_address(outer_dst), "ipip"))
        hop.steps.append(Step.of(StepKind.ENCAP, StepAction.INFO,
                                 f"{encapsulation} tunnel: the VPC and the security groups see the outer "
                                 f"packet {flow}, not the pod packet {packet}", packet, packet_of(flow),
                                 encapsulation=encapsulation, outer_src=flow.src, outer_dst=flow.dst,
                                 outer_dport=flow.dport))
        if encapsulation == "vxlan":
            result.assume("vxlan outer source port is a per-flow hash: security-group rules restricting the "
                          "source port are treated as not matching")
    else:
        flow = Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport)
    result.flow = flow
    src_nic, dst_nic = index.nic_for(src, flow.src), index.nic_for(dst, flow.dst)
    if reply:
        hop.steps.append(Step.of(StepKind.SECURITY_GROUP, StepAction.ALLOW,
                                 "security groups are stateful: the reply of the allowed request passes",
                                 packet_of(flow), stateful_reply=True))
        if acl_step(result, index, hop, src_nic, dst_nic.vswitch_id, "egress", flow) and \
                _route(result, index, hop, src_nic, flow, dst, dst_node):
            acl_step(result, index, hop, dst_nic, src_nic.vswitch_id, "ingress", flow)
        return result
    if not sg_step(result, hop, evaluate(index, src_nic, "egress", flow), flow, src):
        return result
    if not acl_step(result, index, hop, src_nic, dst_nic.vswitch_id, "egress", flow):
        return result
    if not _route(result, index, hop, src_nic, flow, dst, dst_node):
        return result
    if not acl_step(result, index, hop, dst_nic, src_nic.vswitch_id, "ingress", flow):
        return result
    peer_eni = index.eni_by_ip.get(flow.src)
    peer = index.instances.get(peer_eni.instance_id or "") if peer_eni else None
    if not sg_step(result, hop, evaluate(index, dst_nic, "ingress", flow), flow, dst, peer=peer):
        return result
    result.assume("security groups are stateful: the replies of an allowed connection are allowed")
    return result


def _route(result: CloudResult, index: CloudIndex, hop: Hop, nic: NetworkInterface, flow: Flow, dst: Instance,
           dst_node: str | None) -> bool:
    decision = route_lookup(index, nic, flow.dst)
    owner = index.eni_by_ip.get(flow.dst)
    next_hop = decision.next_hop
    expected = f"{dst.id} (node {dst_node})" if dst_node else dst.id
    if next_hop is not None and (state := not_forwarding(index, next_hop)) is not None:
        fail_next_hop(result, hop, decision, flow, state)
        return False
    if next_hop is not None and next_hop[0] == "local" and owner is not None:
        route_step(hop, decision, flow, True, f"{decision.describe()}: {flow.dst} is {owner.id} of "
                                               f"{owner.instance_id}")
        return True
    if next_hop is not None and expected_hop(index, dst, next_hop):
        route_step(hop, decision, flow, True, f"{decision.describe()} (the instance of node {dst_node})")
        return True
    table = decision.table.id if decision.table else f"(none for {nic.vswitch_id})"
    if next_hop is None or decision.is_default or next_hop[0] == "local":
        why = decision.describe() + (" (only the default route matches)" if decision.is_default else "")
        route_step(hop, decision, flow, False, why)
        result.fail(hop, finding("VPC_NO_ROUTE", hop.id, dst=flow.dst, route_table=table,
                                 fix=f"pointing to {expected}, the instance that hosts it (a node's pod CIDR)",
                                 evidence={"expected_next_hop": expected, **decision.evidence()}))
        return False
    route_step(hop, decision, flow, False, f"{decision.describe()}: expected next hop {expected}")
    result.fail(hop, finding("VPC_WRONG_NEXT_HOP", hop.id, actual=f"{next_hop[0]} {next_hop[1]}", dst=flow.dst,
                             expected=expected, evidence={"route_table": table, **decision.evidence()}))
    return False


def evaluate_internet_to_lb(inv: CloudInventory | CloudIndex, service: ServiceResolution | None, packet: Packet,
                            service_object: dict[str, Any] | None = None) -> CloudResult:
    """A packet from the internet to a LoadBalancer Service's CLB: status, listener, listener
    status, ACL, then every backend against the Service and its health. `result.backends`
    are the healthy backends the traffic continues to (NodePort on nodes, or pod ENIs)."""
    index = index_of(inv)
    if (skip := not_modelled(index.inv)) is not None:
        return skip
    result = CloudResult(flow=Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport))
    lb_ips = [str(ip) for ip in service.load_balancer_ips] if service else []
    lb, how = find_load_balancer(index, packet.dst, service_object, lb_ips)
    if lb is None:
        hop = result.hop(f"lb:{packet.dst}", HopKind.LOAD_BALANCER, str(packet.dst), packet.dst)
        return result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the load balancer of {packet.dst}",
                                        reason=how), outcome="abort")
    hop = result.hop(f"lb:{lb.id}", HopKind.LOAD_BALANCER, lb.name or lb.id, lb.address)
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.INFO, f"CLB {lb.id} ({lb.address_type}) found by "
                             f"{how}", packet, lb=lb.id, status=lb.status, address=lb.address))
    if lb.status != "active":
        return _lb_drop(result, hop, finding("LB_NOT_ACTIVE", hop.id, lb=lb.id, status=lb.status), lb=lb.id,
                        status=lb.status)
    listener = listener_for(lb, packet.dport, packet.protocol)
    if listener is None:
        return _lb_drop(result, hop, finding("LB_NO_LISTENER", hop.id, port=packet.dport, protocol=packet.protocol,
                                             lb=lb.id, evidence={"listeners": [f"{li.port}/{li.protocol}"
                                                                               for li in lb.listeners]}),
                        lb=lb.id, listeners=[f"{li.port}/{li.protocol}" for li in lb.listeners])
    if listener.status != "running":
        return _lb_drop(result, hop, finding("LB_LISTENER_NOT_RUNNING", hop.id, lb=lb.id, port=listener.port,
                                             status=listener.status, evidence={"protocol": listener.protocol}),
                        lb=lb.id, listener_port=listener.port, status=listener.status)
    if listener.acl_status == "on":
        ids = listener_acl_ids(listener)
        missing = [i for i in ids if i not in index.acls]
        if missing or not ids:
            return result.fail(hop, finding("DATA_MISSING", hop.id, what=f"ACL {', '.join(missing) or '(none named)'} "
                                            f"of listener {listener.port}", reason="not in the inventory"),
                               outcome="abort")
        acls = [index.acls[i] for i in ids]
        names = ", ".join(a.name or a.id for a in acls)
        entries = [e for a in acls for e in a.entries]
        if acl_denies(listener, acls, packet.src):
            return _lb_drop(result, hop, finding("LB_ACL_DENY", hop.id, acl=names, port=listener.port,
                                                 lb=lb.id, src=packet.src,
                                                 evidence={"acl_type": listener.acl_type, "entries": entries}),
                            lb=lb.id, listener_port=listener.port)
        hop.steps.append(Step.of(StepKind.POLICY, StepAction.ALLOW, (
            f"{listener.acl_type}list ACL {names} admits {packet.src}" if entries else
            f"{listener.acl_type}list ACL {names} has no entries: access control does not take effect"),
            acl=", ".join(ids), acl_type=listener.acl_type))
    targets = backends(index, lb, listener)
    _check_backends(result, index, hop, lb.id, listener, targets, service, packet)
    _backend_security_groups(result, index, lb.id, packet)
    _clb_and_ipv4_gateway(result, index, lb.id, lb.vpc_id)
    return result


def _clb_and_ipv4_gateway(result: CloudResult, index: CloudIndex, lb_id: str, vpc_id: str | None) -> None:
    """The IPv4 gateway pages say it translates the public addresses of ECS instances and ENIs; they do not say
    that a CLB's traffic passes it or its gateway route table. Not a verdict: stated, and said to matter where the
    gateway route table would hand a serving backend's traffic to an appliance."""
    gateway = ipv4gw.gateway_of(index, vpc_id)
    if gateway is None or not ipv4gw.is_active(gateway):
        return
    steered = []
    for t in result.backends:
        decision = ipv4gw.gateway_route(index, gateway, ip_address(t.ip)) if t.ip else None
        hop = decision.next_hop if decision is not None else None
        if hop is not None and hop[0].lower() != "local":
            steered.append(f"{t.label} → {hop[0]} {hop[1]}")
    result.assume(f"the VPC of {lb_id} has an activated IPv4 gateway {gateway.id}; the Alibaba Cloud pages read do not "
                  "say that CLB traffic passes it or its gateway route table, so it was not applied to the CLB" +
                  (f" (it would steer {'; '.join(steered)})" if steered else ""), could_change_outcome=bool(steered))


def _backend_security_groups(result: CloudResult, index: CloudIndex, lb_id: str, packet: Packet) -> None:
    """Whether the backends' security groups filter layer-4 CLB traffic is left open by the pages read
    (docs/cloud.md): the groups are not a verdict, but where one would refuse the client's packet
    that could change the outcome, and it is said."""
    refused = []
    for t in result.backends:
        instance = index.instances.get(t.server_id) or index.instances.get(
            (index.enis.get(t.server_id) or NetworkInterface(id="")).instance_id or "")
        if t.ip is None or instance is None:
            continue
        nic = index.nic_for(instance, ip_address(t.ip))
        decision = evaluate(index, nic, "ingress", Flow(packet.src, ip_address(t.ip), packet.protocol, packet.sport,
                                                        t.port))
        if not decision.allowed:
            refused.append(f"{t.label} ({decision.reason})")
    if refused:
        result.assume(f"the security groups of backends {'; '.join(refused)} of {lb_id} would refuse the client "
                      f"{packet.src} if they filter layer-4 CLB traffic, which the Alibaba Cloud pages read leave open "
                      "(docs/cloud.md)", could_change_outcome=True)
    else:
        result.assume("CLB backend security groups are not a verdict for load-balanced traffic (the Alibaba Cloud "
                      "pages read leave open whether they filter layer-4 CLB traffic; see docs/cloud.md); they would "
                      "admit this client", could_change_outcome=False)


def _lb_drop(result: CloudResult, hop: Hop, f: Finding, **info: Any) -> CloudResult:
    """The load balancer drops: a step (`info`: LoadBalancerInfo fields) and the finding."""
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.DROP, f.message, finding=f.code, **info))
    return result.fail(hop, f)


def _check_backends(result: CloudResult, index: CloudIndex, hop: Hop, lb_id: str, listener: Listener,
                    targets: list[BackendTarget], service: ServiceResolution | None, packet: Packet) -> None:
    """Which backends the listener forwards to: weight above 0, healthy (unless the health check is
    off), the primary of a primary/secondary group while it is healthy, and admitted by the network
    ACL of its vSwitch (which filters CLB-forwarded traffic too; layer-4 CLB keeps the client address)."""
    port = listener.port
    service_name = service.service if service else "?"
    evidence = {"backends": [t.__dict__ for t in targets], "scheduler": listener.scheduler,
                "health_check": listener.health_check}
    if not targets:
        _lb_drop(result, hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                      detail="the listener has no backend servers"), lb=lb_id, listener_port=port)
        return
    if service is not None:
        wrong = _mismatched(targets, service)
        if wrong:
            result.warn(hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                     detail="; ".join(wrong), evidence=evidence))
    # weights take effect under the weighted schedulers only: round robin ignores them (CLB server groups)
    weights_apply = listener.scheduler != "rr"
    weighted = [t for t in targets if t.weight > 0 or not weights_apply]
    for t in targets:
        if t.weight <= 0 and weights_apply:
            result.findings.append(finding("LB_BACKEND_WEIGHT_ZERO", hop.id, backend=t.label, lb=lb_id, port=port,
                                           severity=Severity.WARNING if weighted else Severity.ERROR,
                                           evidence={"node": t.node, "type": t.type,
                                                     "scheduler": listener.scheduler}))
    if not weights_apply and any(t.weight <= 0 for t in targets):
        result.assume(f"listener {port} of {lb_id} schedules round robin (rr), where backend weights do not take "
                      "effect: its backends of weight 0 still receive requests")
    if listener.health_check == "off":
        # without a health check the CLB cannot tell a dead backend: every weighted one is used
        result.assume(f"the health check of listener {port} on {lb_id} is off: the load balancer forwards to every "
                      "backend with a weight above 0, answering or not", could_change_outcome=True)
        healthy, unknown = weighted, []
    else:
        # DescribeHealthStatus "unavailable": the health check did not complete — no verdict on the backend
        healthy = [t for t in weighted if t.health == "normal"]
        unknown = [t for t in weighted if t.health in ("unknown", "unavailable")]
        for t in unknown:
            result.assume(f"the health of backend {t.label} port {t.port} of {lb_id} is "
                          f"{'not reported' if t.health == 'unknown' else 'unavailable (no completed check)'}",
                          could_change_outcome=not healthy)
        for t in weighted:
            if t.health not in ("normal", "unknown", "unavailable"):
                result.findings.append(finding(
                    "LB_BACKEND_UNHEALTHY", hop.id, backend=t.label, port=t.port, status=t.health, lb=lb_id,
                    severity=Severity.WARNING if healthy or unknown else Severity.ERROR,
                    evidence={"node": t.node, "type": t.type}))
    serving = healthy + unknown
    if any(t.server_type for t in targets):
        # primary/secondary group: the primary while its health check passes, else the secondary, which is
        # not health-checked by default (CLB server groups)
        primary = [t for t in serving if t.server_type == "Master"]
        secondary = [t for t in weighted if t.server_type == "Slave"]
        serving = primary or secondary
        if not primary and secondary:
            result.assume(f"the primary server of listener {port} on {lb_id} fails its health check: traffic goes to "
                          f"the secondary {', '.join(t.label for t in secondary)}, which the load balancer does not "
                          "health-check by default", could_change_outcome=True)
    if index.network_acls is None:
        result.assume("network ACLs were not collected (an inventory older than their support): the backends' "
                      "vSwitch ACLs were not checked", could_change_outcome=True)
    denied = [(t, d) for t in serving if (d := _backend_acl(index, t, packet)) is not None]
    serving = [t for t in serving if all(t is not other for other, _ in denied)]
    for t, decision in denied:
        result.findings.append(finding(
            "VPC_NETWORK_ACL_DENY", hop.id, acl=decision.acl.name or decision.acl.id, vswitch=decision.vswitch,
            packet=f"{packet.protocol} {packet.src} → {t.ip}:{t.port}", direction="ingress", entry=decision.reason,
            severity=Severity.WARNING if serving else Severity.ERROR,
            evidence={"backend": t.label, "lb": lb_id, **decision.evidence()}))
    ok = bool(serving)
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.FORWARD if ok else StepAction.DROP,
                             f"{len(serving)} of {len(targets)} backends take traffic on listener {port} "
                             f"({len(weighted)} with a weight above 0, scheduler "
                             f"{listener.scheduler or 'not collected'})",
                             lb=lb_id, listener_port=port, scheduler=listener.scheduler,
                             health_check=listener.health_check, backends=[LbBackend(**t.__dict__) for t in targets],
                             serving=[t.label for t in serving]))
    result.backends = serving
    if not ok:
        hop.status, result.outcome = HopStatus.ERROR, "drop"
    elif len(serving) < len(targets) and hop.status == HopStatus.OK:
        hop.status = HopStatus.WARNING


def _backend_acl(index: CloudIndex, target: BackendTarget, packet: Packet) -> netacl.AclDecision | None:
    """The network ACL of the backend's vSwitch when it drops the forwarded packet (client address kept)."""
    if target.ip is None:
        return None
    eni = index.eni_by_ip.get(ip_address(target.ip))
    instance = index.instances.get(target.server_id)
    vswitch = eni.vswitch_id if eni else (instance.vswitch_id if instance else None)
    flow = Flow(packet.src, ip_address(target.ip), packet.protocol, packet.sport, target.port)
    decision = netacl.check(index, vswitch, None, "ingress", flow)
    return decision if decision is not None and not decision.allowed else None


def _mismatched(targets: list[BackendTarget], service: ServiceResolution) -> list[str]:
    wrong = []
    pod_ports = {(str(b.address), b.port) for b in service.backends}
    for t in targets:
        if t.type == "ecs" and service.node_port is not None and t.port != service.node_port:
            wrong.append(f"{t.label} port {t.port}, expected NodePort {service.node_port}")
        elif t.type == "eni" and pod_ports and (t.ip, t.port) not in pod_ports:
            wrong.append(f"{t.label} port {t.port} is not an endpoint of the service")
    return wrong

