"""The finding-code catalogue: a stable API.

Codes never change meaning; message wording may improve. Each entry has a severity, a
message template (str.format with named fields) and a concrete suggestion (which may use
the same fields). `ABORT` codes mean the analysis could not see part of the path: they
push the verdict to UNDETERMINED rather than allowing a confident answer.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from shared.schemas import Finding, Severity


@dataclass(frozen=True)
class FindingCode:
    code: str
    severity: Severity
    template: str
    suggestion: str
    abort: bool = False

    @property
    def fields(self) -> set[str]:
        names = set()
        for text in (self.template, self.suggestion):
            names |= {f for _, f, _, _ in string.Formatter().parse(text) if f}
        return names


E, W = Severity.ERROR, Severity.WARNING

_ENTRIES = [
    # ---- seed catalogue (ACK / KubeSkoop meanings)
    FindingCode("POD_NOT_READY", E, "pod {pod} container(s) {containers} not ready",
                "Check `kubectl describe pod {pod}` for failing readiness probes or crash loops; "
                "a not-ready pod is removed from Service endpoints."),
    FindingCode("NETWORK_POLICY_DENY", E,
                "network policy verdict of {policies}: deny the packet from {src} to {dst}, because {reason}",
                "{change} (or remove the policy that isolates the pod)."),
    FindingCode("NO_LISTENER", E, "no process listening on {address}:{port}/{protocol} in {where}",
                "Start the server or fix its bind address/port in {where}{service_hint}."),
    FindingCode("NO_ROUTE", E, "no route to host {dst} in {where}",
                "Add a route for {dst} (e.g. the pod CIDR route of the destination node) or "
                "check the CNI's route programming on {where}."),
    FindingCode("INVALID_ROUTE", E,
                "route {route} in {where} does not point to the expected next hop {expected}",
                "Fix the route on {where} so {dst} goes via {expected}; a CNI restart usually "
                "reprograms it."),
    FindingCode("SG_NOT_SHARED", W, "instances {src_instance} and {dst_instance} do not have same "
                "security group", "Put both nodes in one security group, or add rules that allow "
                "the traffic between their groups explicitly."),
    FindingCode("SG_DENY", E, "security group {group} does not allow packet {packet} ({direction}): {rule}",
                "Add an {direction} accept rule to security group {group} for {packet} with a "
                "priority that wins over {rule}."),
    FindingCode("VPC_NO_ROUTE", E, "no route entry / no next hop for destination ip {dst} in route "
                "table {route_table}", "Add a VPC route entry for {dst} in {route_table} {fix}."),
    FindingCode("VPC_WRONG_NEXT_HOP", E, "error route next hop {actual} for destination ip {dst}: "
                "expect next hop {expected}", "Point the route entry for {dst} at {expected}."),
    FindingCode("NAT_NO_SNAT", E, "no snat entry on nat gateway {nat_gateway} for source {src}",
                "Add an SNAT entry on {nat_gateway} covering {src} (its vSwitch, instance or "
                "CIDR), or bind an EIP to the instance."),
    FindingCode("LB_BACKEND_UNHEALTHY", E, "backend {backend} health status for port {port} is "
                "{status}, not \"normal\"", "Check the health check of {lb} and that {backend} "
                "answers on {port}; look at the pod behind that NodePort."),
    FindingCode("LB_NO_LISTENER", E, "cannot find listener port {port}/{protocol} for slb {lb}",
                "Add the listener or check the Service's port and the cloud controller's logs "
                "(service annotations may block listener sync)."),
    FindingCode("LB_LISTENER_NOT_RUNNING", E, "status of loadbalancer {lb} listener port {port} is "
                "{status}, not \"running\"", "Start the listener on {lb} (or check why the cloud "
                "controller stopped it)."),
    FindingCode("SERVICE_NO_ENDPOINT", E, "service {service} has no valid endpoint{detail}",
                "Check the Service selector matches ready pods: `kubectl get endpointslices -n "
                "{namespace} -l kubernetes.io/service-name={name}`."),
    # ---- beyond the seed
    FindingCode("POD_NOT_RUNNING", E, "pod {pod} is not running (phase {phase})",
                "Check `kubectl describe pod {pod}` and its events."),
    FindingCode("NODE_NOT_READY", E, "node {node} is not Ready ({reason})",
                "Check the kubelet and the node's conditions: `kubectl describe node {node}`."),
    FindingCode("IPTABLES_DROP", E, "iptables drops the packet in {where}: {table}/{chain} rule {position}: "
                "{rule}", "Remove or narrow the rule `{rule}` in {table}/{chain} on {where}, or add an "
                "ACCEPT before it."),
    FindingCode("IPTABLES_REJECT", E, "iptables rejects the packet ({reject_with}) in {where}: "
                "{table}/{chain} rule {position}: {rule}",
                "Remove or narrow the rule `{rule}` in {table}/{chain} on {where}."),
    FindingCode("NFTABLES_DROP", E, "nftables drops the packet in {where}: {family} {table}/{chain}: {rule}",
                "Remove or narrow the nftables rule `{rule}` in {table}/{chain} on {where}."),
    FindingCode("IP_FORWARD_DISABLED", E, "IP forwarding is disabled in {where} ({sysctl}=0)",
                "Enable it: `sysctl -w {sysctl}=1` on {where} (and persist it)."),
    FindingCode("RP_FILTER_DROP", E, "reverse-path filter drops {packet} on {device} in {where}: the "
                "route back to {src} leaves via {reverse_device}",
                "Set rp_filter to 2 (loose) or 0 on {device}, or fix the asymmetric route."),
    FindingCode("ROUTE_LOCALNET_DISABLED", E, "{where} drops {packet} on {device} as martian: a "
                "127.0.0.0/8 {side} address off the loopback device needs route_localnet ({sysctl}=0)",
                "Set `sysctl -w {sysctl}=1` on {where} (kube-proxy does so for localhost NodePorts), or stop "
                "translating packets to a loopback address."),
    FindingCode("BRIDGE_NF_DISABLED", W, "bridge-nf-call-iptables is 0 on {where}: bridged pod traffic "
                "bypasses iptables (Service replies on the same node break)",
                "`sysctl -w net.bridge.bridge-nf-call-iptables=1` on {where}."),
    FindingCode("HAIRPIN_DISABLED", E, "hairpin mode is off on bridge port {port} of {bridge} in {where}: "
                "pod {pod} cannot reach itself through its Service",
                "Enable hairpin: `ip link set {port} type bridge_slave hairpin on` (kubelet "
                "--hairpin-mode=hairpin-veth or the CNI's hairpinMode)."),
    FindingCode("PROXY_ARP_DISABLED", E, "{where} does not answer ARP for {gateway} on {device} ({sysctl}=0): "
                "{source} cannot resolve its next hop", "Set `sysctl -w {sysctl}=1` on {where}: Calico's felix "
                "sets proxy_arp on every workload interface (restart calico-node to reprogram it)."),
    FindingCode("POD_ROUTE_MISSING", E, "{where} has no route to its local pod {pod} ({dst}): the lookup ends in "
                "{route}", "Restore `{dst} dev {device} scope link` on {where}: the CNI (Calico's felix) programs "
                "a route per local pod; restarting calico-node, or the pod, re-adds it."),
    FindingCode("POD_EGRESS_WRONG_ENI", E, "pod {pod} ({src}) leaves {where} by {device}, not by an ENI ({enis}): "
                "the VPC drops a packet whose source is not an address of the interface that sent it",
                "Restore the pod's policy rule on {where} (`ip rule add from {src} iif <its veth> lookup <its "
                "ENI's table> priority 2048`): Terway re-adds it when it re-checks the pod; else recreate the pod."),
    FindingCode("ENI_POD_SOURCE_NOT_MASQUERADED", E, "{where} sends {src}, the address of pod {pod}'s exclusive "
                "ENI {eni}, out of {device} unmasqueraded: the VPC drops a packet whose source is not an address "
                "of the interface that sent it", "Restore Terway's masquerade on {where} (`iptables -t nat -A "
                "POSTROUTING ! -o lo -j terway-masq` and `iptables -t nat -A terway-masq -j MASQUERADE`): the "
                "terway policy container re-creates it when it restarts (masq_eni_only)."),
    FindingCode("BRIDGE_PORT_BLOCKED", E, "bridge port {port} of {bridge} in {where} is in STP state {state}: "
                "only a forwarding port passes frames ({direction})",
                "Set the port forwarding: `bridge link set dev {port} state 3` in {where}, or find what "
                "(STP, a CNI, an operator) disabled it."),
    FindingCode("TC_DROP", E, "tc drops the packet on {device} ({direction}) in {where}: {filter}",
                "Inspect `tc qdisc show dev {device}` and `tc filter show dev {device} {direction}` in {where}; "
                "remove the {filter} if it is not intended."),
    FindingCode("XDP_DROP", E, "the XDP program {program} on {device} in {where} drops the packet",
                "Detach it (`ip link set dev {device} xdp off` in {where}) or fix the program that owns it."),
    FindingCode("BPF_PROGRAM_ON_PATH", W, "the {hook} BPF program {program} on {where} acts on this packet and "
                "netdiag cannot evaluate it: the outcome there is unknown",
                "Check the program's owner (a CNI datapath such as Cilium, a load balancer, a security agent) "
                "or confirm with a live probe (`netdiag diagnose --live`)."),
    FindingCode("LIVE_DIVERGES", E, "the kernel disagrees with the simulation: the live probe {probe} "
                "({kernel}), the simulation said {simulated}; {detail}",
                "The kernel's answer is what happened: trust it. Report this diagnosis to the netdiag "
                "project (its model missed {detail}) and check the device named there by hand."),
    FindingCode("LINK_DOWN", E, "link {link} in {where} is down", "Bring it up: `ip link set {link} up` "
                "in {where}; if a pod's eth0, restart the pod so the CNI re-adds its routes."),
    FindingCode("VETH_PEER_MISSING", E, "veth {link} in {where} has no peer",
                "Restart the pod so the CNI recreates its veth pair."),
    FindingCode("NEIGHBOR_FAILED", E, "neighbour {neighbor} on {device} in {where} is {state}",
                "Check that {neighbor} is up and on the same L2 segment; for overlays check the "
                "CNI's neighbour/FDB programming."),
    FindingCode("MTU_MISMATCH", W, "MTU {mtu} of {link} in {where} is larger than the path MTU {path_mtu}",
                "Lower the pod/overlay MTU to {path_mtu} or less."),
    FindingCode("ROUTE_BLACKHOLE", E, "route {route} in {where} is of type {type}",
                "Remove the {type} route {route} on {where} if it is not intended."),
    FindingCode("ROUTING_LOOP", E, "routing loop for {dst}: {hops}", "Fix the routes so {dst} converges."),
    FindingCode("SERVICE_PORT_NOT_FOUND", E, "service {service} has no port {port}/{protocol}",
                "Use one of the Service's ports ({ports}) or add the port to the Service."),
    FindingCode("TARGET_PORT_NOT_FOUND", E, "service {service} targetPort {target_port} is not a port "
                "of pod {pod}", "Name the container port {target_port} in pod {pod} or fix the Service's "
                "targetPort."),
    FindingCode("NO_LOCAL_ENDPOINT", E, "service {service} has externalTrafficPolicy/internalTrafficPolicy "
                "Local and no ready endpoint on node {node}",
                "Run an endpoint pod on {node}, send traffic only to nodes with endpoints, or use the "
                "Cluster policy."),
    FindingCode("POD_SOURCE_NOT_MASQUERADED", W, "pod traffic from {src} leaves {where} for {dst} without "
                "masquerade: only a NAT or route beyond the node can bring the reply back to the pod address",
                "Check the CNI's masquerade for traffic leaving the cluster (flannel --ip-masq / FLANNEL-POSTRTG, "
                "calico natOutgoing, ip-masq-agent nonMasqueradeCIDRs), or SNAT the pod CIDR at the NAT gateway."),
    FindingCode("REPLY_NOT_TRANSLATED", E, "the reply leaves {where} towards {peer} as {actual}, but {peer} "
                "sent {sent} and accepts only {expected}: {missing}",
                "Make the reply cross the conntrack entry that translated the request: remove NOTRACK/CT rules "
                "that match it, masquerade the request ({missing}) so the reply comes back through that node, "
                "or fix the route that sends the reply around it."),
    FindingCode("SNAT_ADDRESS_NOT_OWNED", E, "{nat} in {where} rewrites the {side} to {address}, which {where} "
                "does not own: {owner} owns it, so the {what} goes there",
                "Translate to an address of {where} itself (MASQUERADE or its own IP), or remove the rule."),
    FindingCode("LB_SOURCE_RANGE_DENY", E, "source {src} is outside loadBalancerSourceRanges {ranges} of "
                "service {service}", "Add {src} to spec.loadBalancerSourceRanges of {service}."),
    FindingCode("KUBE_PROXY_RULES_MISSING", E, "node {node} has no kube-proxy rules for {what}",
                "Check kube-proxy on {node} (`kubectl -n kube-system logs` of its pod) and that it "
                "runs in the expected mode."),
    FindingCode("IPVS_BACKEND_MISMATCH", E, "IPVS virtual server {vip} on node {node} has real servers "
                "{actual}, EndpointSlices say {expected}", "Restart kube-proxy on {node} to resync IPVS."),
    FindingCode("LB_ACL_DENY", E, "ACL {acl} on listener {port} of slb {lb} denies {src}",
                "Add {src} to the {acl} whitelist (or remove it from the blacklist)."),
    FindingCode("LB_NOT_ACTIVE", E, "load balancer {lb} status is {status}, not \"active\"",
                "Start the load balancer {lb} (check overdue payment or a manual stop)."),
    FindingCode("ECS_INSTANCE_NOT_RUNNING", E, "ECS instance {instance} of node {node} is {status}, not Running",
                "Start the instance {instance} (check overdue payment, a manual stop or a failed "
                "maintenance event)."),
    FindingCode("VPC_NETWORK_ACL_DENY", E, "network ACL {acl} of vSwitch {vswitch} drops {packet} ({direction}): "
                "{entry}", "Add an {direction} accept entry for {packet} to network ACL {acl} ahead of {entry}; "
                "network ACLs are stateless, so allow the reply direction too."),
    FindingCode("VPC_NEXT_HOP_NOT_FORWARDING", E, "route entry {route} in {route_table} points at {next_hop}, which "
                "is {state}: it does not forward", "Start {next_hop} (or attach the ENI to a running instance), or "
                "point the route entry for {route} at a next hop that forwards."),
    FindingCode("NAT_NO_DNAT", E, "no DNAT entry on nat gateway {nat_gateway} forwards {protocol} {address}:{port}",
                "Add a DNAT entry on {nat_gateway} from {address}:{port} ({protocol}) to the private IP and port of "
                "the server (CreateForwardEntry), or check that the entry is Available."),
    FindingCode("VPC_GATEWAY_ROUTE_REDIRECT", W, "internet traffic to {dst} entering through IPv4 gateway {gateway} is "
                "steered by gateway route table {route_table} (entry {route}) to {next_hop} first",
                "Check that {next_hop} (a firewall or other appliance) admits the traffic to {dst}, forwards it to the "
                "vSwitch and routes the reply back; if the redirect is not intended, set the next hop of {route} in "
                "{route_table} back to Local (UpdateGatewayRouteTableEntryAttribute)."),
    FindingCode("LB_BACKEND_WEIGHT_ZERO", W, "backend {backend} of slb {lb} listener {port} has weight 0: the load "
                "balancer forwards it no request", "Give {backend} a weight above 0 on {lb} (SetBackendServers / "
                "the vServer group), or remove it from the server group if it should not serve."),
    FindingCode("LB_BACKEND_MISMATCH", E, "backends of slb {lb} listener {port} do not match service {service}: "
                "{detail}", "Let the cloud controller resync the load balancer of {service} (check its "
                "events and logs), or fix the vserver group by hand."),
    FindingCode("UNKNOWN_ADDRESS", W, "address {address} belongs to no pod, node or Service known to the "
                "cluster", "Check the address; if it is a pod that just restarted, its IP may have "
                "changed."),
    FindingCode("SERVICE_NOT_FOUND", E, "no Service has address {address}: it is in the Service CIDR {cidr}, "
                "where only kube-proxy's rules for an existing Service answer",
                "Check the address the client uses (`kubectl get svc -A -o wide | grep {address}`); a Service "
                "that was deleted and re-created has a new ClusterIP, so connect to its DNS name instead."),
    FindingCode("COLLECTOR_UNAVAILABLE", E, "node {node} did not answer the collection request within "
                "{timeout_s}s: its network state is unknown", "Check the netdiag agent on {node} "
                "(DaemonSet pod running, NATS reachable).", abort=True),
    FindingCode("UNSUPPORTED_RULE", W, "rule {rule} in {where} uses {feature}, which netdiag does not "
                "model: both outcomes were explored", "Check this rule by hand; report the feature so "
                "netdiag can model it."),
    FindingCode("DATA_MISSING", W, "{what} is not available: {reason}",
                "Provide it (run the collector / cloud inspector, or include it in the snapshot).",
                abort=True),
]

CATALOGUE: dict[str, FindingCode] = {c.code: c for c in _ENTRIES}

# The kernel's `enum skb_drop_reason` (include/net/dropreason-core.h; the `skb:kfree_skb` tracepoint's
# `reason`) → the finding codes that name that cause. A live probe's drop agrees with the simulation
# when the simulated cause is one of these. Reasons absent here agree with nothing in particular.
DROP_REASON_CODES: dict[str, tuple[str, ...]] = {
    "NETFILTER_DROP": ("IPTABLES_DROP", "NFTABLES_DROP", "NETWORK_POLICY_DENY", "LB_SOURCE_RANGE_DENY",
                       "NO_LOCAL_ENDPOINT", "SERVICE_NO_ENDPOINT", "KUBE_PROXY_RULES_MISSING", "IPTABLES_REJECT"),
    "IP_INNOROUTES": ("NO_ROUTE", "ROUTE_BLACKHOLE", "INVALID_ROUTE"),
    "IP_OUTNOROUTES": ("NO_ROUTE", "ROUTE_BLACKHOLE", "INVALID_ROUTE", "KUBE_PROXY_RULES_MISSING"),
    # ip_route_input_slow: forwarding off on the ingress device is EHOSTUNREACH, which ip_error reports so
    # (seen in the lab: ip_forward=0 on either node)
    "IP_INADDRERRORS": ("IP_FORWARD_DISABLED", "NO_ROUTE", "ROUTE_BLACKHOLE"),
    # a frame for a MAC the receiver does not own: the sender's neighbour entry is wrong
    "OTHERHOST": ("NEIGHBOR_FAILED", "INVALID_ROUTE"),
    "NEIGH_FAILED": ("NEIGHBOR_FAILED", "INVALID_ROUTE"),
    "NEIGH_QUEUEFULL": ("NEIGHBOR_FAILED",),
    "IP_RPFILTER": ("RP_FILTER_DROP",),
    "NO_SOCKET": ("NO_LISTENER",),
    "SOCKET_FILTER": ("BPF_PROGRAM_ON_PATH",),
    "TC_INGRESS": ("TC_DROP", "BPF_PROGRAM_ON_PATH"),
    "TC_EGRESS": ("TC_DROP", "BPF_PROGRAM_ON_PATH"),
    "QDISC_DROP": ("TC_DROP",),
    "BRIDGE_INGRESS_STP_STATE": ("BRIDGE_PORT_BLOCKED",),
    "XDP": ("XDP_DROP", "BPF_PROGRAM_ON_PATH"),
    "DEV_READY": ("LINK_DOWN", "VETH_PEER_MISSING"),
    "PKT_TOO_BIG": ("MTU_MISMATCH",),
    "IP_LOCALNET": ("ROUTE_LOCALNET_DISABLED",),
    "BPF_CGROUP_EGRESS": ("BPF_PROGRAM_ON_PATH",),
}

# Where the kernel frees a packet without naming a reason (NOT_SPECIFIED), the freeing function can
# (each seen in the lab's faults, tests/lab/test_live.py): veth's XDP receive path frees what its
# program dropped that way (drivers/net/veth.c).
DROP_LOCATION_CODES: dict[str, tuple[str, ...]] = {
    # ip_error's EINVAL branch: a blackhole route (incl. via a policy rule) frees without a reason
    "ip_error": ("ROUTE_BLACKHOLE", "NO_ROUTE"),
    # br_forward (inlined here) frees a frame it must not send back out of its ingress port (hairpin
    # off) or out of a port that is not forwarding
    "br_handle_frame_finish": ("HAIRPIN_DISABLED", "BRIDGE_PORT_BLOCKED"),
    "br_forward": ("HAIRPIN_DISABLED", "BRIDGE_PORT_BLOCKED"),
    "veth_xdp_rcv_skb": ("XDP_DROP", "BPF_PROGRAM_ON_PATH"),
    "veth_xdp_rcv_one": ("XDP_DROP", "BPF_PROGRAM_ON_PATH"),
    "do_xdp_generic": ("XDP_DROP", "BPF_PROGRAM_ON_PATH"),
}


def drop_codes(reason: str, location: str) -> tuple[str, ...]:
    """The finding codes a kernel drop (reason, freeing function) stands for; () when it names none."""
    return DROP_REASON_CODES.get(reason) or DROP_LOCATION_CODES.get(location, ())

SEED_CODES = (
    "POD_NOT_READY", "NETWORK_POLICY_DENY", "NO_LISTENER", "NO_ROUTE", "INVALID_ROUTE",
    "SG_NOT_SHARED", "SG_DENY", "VPC_NO_ROUTE", "VPC_WRONG_NEXT_HOP", "NAT_NO_SNAT",
    "LB_BACKEND_UNHEALTHY", "LB_NO_LISTENER", "LB_LISTENER_NOT_RUNNING", "SERVICE_NO_ENDPOINT",
)


class _Lenient(dict):
    """Missing template fields render as '?' instead of crashing a diagnosis."""

    def __missing__(self, key: str) -> str:
        return "?"


def finding(
    code: str,
    hop: str | None = None,
    *,
    severity: Severity | None = None,
    evidence: dict[str, Any] | None = None,
    **fields: Any,
) -> Finding:
    """Build a Finding from the catalogue; `fields` fill the message and suggestion."""
    entry = CATALOGUE[code]
    values = _Lenient({k: str(v) for k, v in fields.items()})
    return Finding(
        code=code,
        severity=severity or entry.severity,
        hop=hop,
        message=entry.template.format_map(values),
        suggestion=entry.suggestion.format_map(values),
        evidence={**{k: _plain(v) for k, v in fields.items()}, **(evidence or {})},
    )


def is_abort(code: str) -> bool:
    entry = CATALOGUE.get(code)
    return bool(entry and entry.abort)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
