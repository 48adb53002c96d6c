"""Follow a packet through the collected dataplane, namespace by namespace, as the kernel would.

Per namespace (`_local_out` for the source, `routed_in` for every later namespace): netfilter hooks
in kernel order (OUTPUT → re-route → POSTROUTING, or PREROUTING → route → INPUT | FORWARD →
POSTROUTING), routing with policy rules, rp_filter and forwarding sysctls. Between namespaces
(links.py): veth peers, Linux bridges (br_netfilter, hairpin), vxlan and the node uplink into the
underlay. Branches (Service DNAT probabilities, ECMP) each become their own trail and path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from services.simulator.dataplane.hooks import run_hook, stages
from services.simulator.dataplane.netfilter import Branch, FlowState, Tracer, TraceTooLarge
from services.simulator.dataplane.netfilter.felix import tier_drop_policies
from services.simulator.dataplane.netfilter.tracer import TraceContext
from services.simulator.dataplane.nftables import NftEvaluator, NftRuleset
from services.simulator.dataplane.routing import RouteDecision
from services.simulator.dataplane.walk import gaps
from services.simulator.dataplane.walk.cursor import Cursor, Expectation
from services.simulator.dataplane.walk.delivery import deliver
from services.simulator.dataplane.walk.devices import DeviceHooks
from services.simulator.dataplane.walk.ipvs import Ipvs, mode_note
from services.simulator.dataplane.walk.links import Crossing
from services.simulator.dataplane.walk.owners import check_nat_address, cloud_owners
from services.simulator.dataplane.walk.reply import conntrack_state, reply_arrived, reply_start
from services.simulator.dataplane.walk.trail import (
    NatEntry,
    Trail,
    endpoint_info,
    packet,
    route_info,
    rule_hit,
)
from services.simulator.dataplane.walk.world import IPAddress, NetnsView, World, link_up
from shared.cloud import CloudInventory
from shared.codes import finding
from shared.hops import external_hop, node_hop, pod_hop, service_hop
from shared.schemas import (
    DiagnosisRequest,
    FinalState,
    Finding,
    Hop,
    HopKind,
    Packet,
    Step,
    StepAction,
    StepKind,
)
from shared.topology import EndpointKind, TopologyReport

MAX_VISITS = 24  # namespaces a packet may enter before the walk calls it a loop
MAX_TRAILS = 256
# kube-proxy's own rule comments that say why it drops or rejects a Service packet (iptables mode)
KUBE_PROXY_CAUSES = (("has no endpoints", "SERVICE_NO_ENDPOINT"), ("has no local endpoints", "NO_LOCAL_ENDPOINT"),
                     ("traffic not accepted by KUBE-FW-", "LB_SOURCE_RANGE_DENY"))


class Walker:
    def __init__(self, world: World, report: TopologyReport, request: DiagnosisRequest,
                 expectation: Expectation | None = None, reply: bool = False,
                 cloud: CloudInventory | None = None) -> None:
        self.reply = reply  # walking a reply: conntrack ESTABLISHED, translations undone where they happened
        self.cloud_owners = cloud_owners(cloud)  # address → cloud resource, for NAT addresses (owners.py)
        self.cloud_nodes = dict(cloud.nodes) if cloud else {}
        self.world = world
        self.report = report
        self.request = request
        self.expect = expectation or Expectation()
        self.finished: list[Trail] = []
        self.node_ips: dict[IPAddress, str] = {}
        self.pod_cidrs: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self.pod_ips: dict[IPAddress, str] = {}
        self._index_objects()
        self.links = Crossing(self)
        self.ipvs = Ipvs(self)
        self.devices = DeviceHooks(self)

    # ------------------------------------------------------------ the Kubernetes objects we need

    def _index_objects(self) -> None:
        for node in self.report.objects.nodes:
            name = node.get("metadata", {}).get("name")
            spec, status = node.get("spec", {}), node.get("status", {})
            for addr in status.get("addresses", []) or []:
                if addr.get("type") in ("InternalIP", "ExternalIP"):
                    self.node_ips[ipaddress.ip_address(addr["address"])] = name
            for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
                self.pod_cidrs.append((ipaddress.ip_network(cidr, strict=False), name))
        for name, addresses in self.report.cluster.node_addresses.items():  # nodes off the expected path too
            for ip in addresses:
                self.node_ips.setdefault(ipaddress.ip_address(str(ip)), name)
        for pod in self.report.objects.pods:
            meta, status, spec = pod.get("metadata", {}), pod.get("status", {}), pod.get("spec", {})
            if spec.get("hostNetwork"):
                continue
            for entry in status.get("podIPs") or [{"ip": status.get("podIP")}]:
                if entry.get("ip"):
                    self.pod_ips[ipaddress.ip_address(entry["ip"])] = f"{meta.get('namespace')}/{meta.get('name')}"

    def node_for_pod_network(self, addr: IPAddress) -> str | None:
        return next((node for net, node in self.pod_cidrs if addr.version == net.version and addr in net), None)

    def in_pod_network(self, addr: IPAddress) -> bool:
        return self.node_for_pod_network(addr) is not None or any(
            addr.version == net.version and addr in net
            for net in (ipaddress.ip_network(c, strict=False) for c in self.report.cluster.pod_cidrs))

    def node_ip(self, node: str) -> IPAddress | None:
        return next((ip for ip, n in self.node_ips.items() if n == node), None)

    def has_endpoints(self) -> bool:
        """Without a ready endpoint kube-proxy has no DNAT for the Service, only a filter REJECT."""
        res = self.report.service
        return res is None or any(b.ready for b in res.backends)

    def service_drop(self, c: Cursor, view: NetnsView, code: str, detail: str) -> list:
        """kube-proxy drops or rejects for a reason the Service itself states (no endpoint, none
        local under a Local policy, a source outside loadBalancerSourceRanges): the drop is that
        cause, on the Service hop — the model's finding when it has one."""
        res = self.report.service
        assert res is not None
        namespace, _, name = res.service.partition("/")
        fields: dict[str, dict[str, Any]] = {"SERVICE_NO_ENDPOINT": dict(namespace=namespace, name=name, detail=""),
                  "NO_LOCAL_ENDPOINT": dict(node=view.node),
                  "LB_SOURCE_RANGE_DENY": dict(src=c.st.src, ranges=", ".join(res.load_balancer_source_ranges))}
        found = self.expect.code_at(code) or finding(code, service_hop(res.service), service=res.service,
                                                     **fields[code])
        hop = c.trail.hop_by_id(found.hop or service_hop(res.service), kind=HopKind.SERVICE, name=res.service)
        c.trail.step(hop, StepKind.SERVICE, StepAction.DROP, f"on {view.node}: {detail}", packet(c.st, c.st.iif),
                     service=res.service, finding=found.code)
        return self.finish(c, FinalState.DROP, found.code, found)

    def no_endpoint(self, c: Cursor, view: NetnsView, detail: str) -> list:
        return self.service_drop(c, view, "SERVICE_NO_ENDPOINT", detail)

    def virtual(self, addr: IPAddress) -> bool:
        """A Service address (ClusterIP range): only kube-proxy's rules give it meaning."""
        res = self.report.service
        if res is not None and addr in res.cluster_ips:
            return True
        return any(addr in ipaddress.ip_network(c, strict=False) for c in self.report.cluster.service_cidrs
                   if ipaddress.ip_network(c, strict=False).version == addr.version)

    def service_vip(self, st: FlowState) -> bool:
        """Is the packet still addressed to the Service (its ClusterIP/external/LB address and port)?"""
        return self.service_address(st.dst, st.dport)

    def service_address(self, addr: IPAddress, port: int | None) -> bool:
        res = self.report.service
        if res is None:
            return False
        if res.node_port is not None and port == res.node_port and addr in self.node_ips:
            return True
        return port == res.port and addr in {*res.cluster_ips, *res.external_ips, *res.load_balancer_ips}

    # ------------------------------------------------------------ driving

    def run(self, start: Cursor | None = None) -> list[Trail]:
        start = start or self._start()
        queue = [start] if start else []
        while queue:
            if len(self.finished) + len(queue) > MAX_TRAILS:
                for c in queue:
                    c.trail.assume(f"more than {MAX_TRAILS} branches: the walk stopped exploring", could_change=True)
                    c.trail.end(FinalState.ABORT)
                    self.finished.append(c.trail)
                break
            queue.extend(self.arrive(queue.pop(0)))
        return self.finished

    def replies(self, forward: Trail) -> list[Trail]:
        """Reply trails of one forward trail, walked back from where it was delivered or left the
        cluster (empty when it did neither)."""
        start = reply_start(forward, self.node_for_pod_network)
        if start is None:
            return []
        if isinstance(start, Trail):  # decided without a walk: the reply goes to another owner of the source
            return [start]
        return Walker(self.world, self.report, self.request, self.expect, reply=True).run(start)

    def _start(self) -> Cursor | None:
        src, r = self.report.src, self.request
        st = FlowState(src=r.src, dst=r.dst, protocol=r.protocol, sport=None, dport=r.port)
        trail = Trail()
        node = src.node
        if src.kind in (EndpointKind.POD, EndpointKind.HOST_NETWORK_POD, EndpointKind.NODE):
            if node not in self.world.nodes:
                if node and self.collection_failed(node) is None:
                    self.world.wanted.add(node)
                self._abort(trail, src.pod or node, f"the network state of node {node}",
                            "it was not collected (see the collector's findings)")
                return None
            view = (self.world.pod_netns(node, src.pod) if src.kind == EndpointKind.POD and src.pod else None) \
                or (self.world.nodes[node].host if src.kind != EndpointKind.POD else None) \
                or self.world.netns_holding(r.src, node)
            if view is None:
                unreadable = "; ".join(self.world.nodes[node].unreadable.values())
                self._abort(trail, src.pod or node, f"the network namespace of {src.pod or r.src}",
                            f"no namespace on {node} holds {r.src}" + (
                                f" (the agent could not read some: {unreadable})" if unreadable else ""))
                return None
            return Cursor(view.place, st, None, trail)
        return self.links.external_start(st, trail)

    def collection_failed(self, node: str) -> Finding | None:
        """The finding of a node whose collection was tried and failed (its agent did not answer, or
        answered with an error, or the snapshot lacks it): asking again would not help."""
        return self.expect.code_at("COLLECTOR_UNAVAILABLE", node_hop(node)) or \
            self.expect.code_at("DATA_MISSING", node_hop(node))

    def _abort(self, trail: Trail, hop_name: str | None, what: str, reason: str) -> None:
        hop_id = pod_hop(hop_name) if hop_name and "/" in hop_name else node_hop(str(hop_name))
        hop = trail.hop_by_id(hop_id, kind=HopKind.POD if "/" in str(hop_name) else HopKind.NODE,
                              name=str(hop_name))
        trail.step(hop, StepKind.ASSUMPTION, StepAction.ABORT, f"{what} is unknown: {reason}", missing=what,
                   reason=reason, finding="DATA_MISSING")
        self.end_trail(trail, FinalState.ABORT, "DATA_MISSING", finding("DATA_MISSING", hop_id, what=what,
                                                                        reason=reason))

    # ------------------------------------------------------------ what the agent could not read

    def gap_finding(self, view: NetnsView, error: str) -> Finding:
        return finding("DATA_MISSING", view.hop_id, what=f"{gaps.label(error)} of {view.where}",
                       reason=f"the node agent could not read it ({error})")

    def note_gaps(self, trail: Trail, view: NetnsView) -> None:
        """Every read error of a namespace the packet enters is a DATA_MISSING finding on its hop (and,
        for the host, the node's own errors; an unreadable pod namespace is reported where the walk
        needs it)."""
        errors = list(view.dump.errors)
        if view.is_host:
            node = self.world.nodes[view.node]
            errors += [e for e in node.dump.errors if e not in node.unreadable.values()]
        for error in errors:
            if gaps.harmless(error):
                trail.assume(f"{view.where}: {error}", could_change=False)
                continue
            found = self.gap_finding(view, error)
            if found not in trail.findings:
                trail.findings.append(found)

    def blind(self, c: Cursor, view: NetnsView, parts: tuple[str, ...], what: str) -> bool:
        """The next decision needs a part of the dump the agent could not read: the branch ends ABORT
        (an unread rule set or socket list is not an empty one). True when it did."""
        errors = view.unread(*parts)
        if not errors:
            return False
        found = self.gap_finding(view, errors[0])
        c.trail.step(c.trail.hop(view), StepKind.ASSUMPTION, StepAction.ABORT, f"{what} of {view.where} could not "
                     f"be read ({errors[0]}): the walk cannot tell what happens here", packet(c.st, c.iif, c.st.oif),
                     missing=f"{what} of {view.where}", reason=errors[0], finding=found.code)
        self.finish(c, FinalState.ABORT, found.code, found)
        return True

    def unreadable_netns(self, c: Cursor, view: NetnsView, netns_ids: list[str | None], what: str) -> bool:
        """The packet goes towards a namespace of this node the agent could not read: ABORT, naming it."""
        unreadable = self.world.nodes[view.node].unreadable
        error = next((unreadable[i] for i in netns_ids if i in unreadable), None)
        if error is None:
            return False
        found = finding("DATA_MISSING", view.hop_id, what=f"a network namespace of node {view.node}",
                        reason=f"the node agent could not read it ({error})")
        c.trail.step(c.trail.hop(view), StepKind.ASSUMPTION, StepAction.ABORT, f"{what}: it may lead into a "
                     f"namespace the agent could not read ({error})", packet(c.st, c.iif, c.st.oif),
                     missing=f"a network namespace of node {view.node}", reason=error, finding=found.code)
        self.finish(c, FinalState.ABORT, found.code, found)
        return True

    def finish(self, c: Cursor, final: FinalState, cause: str | None = None, found: Finding | None = None) -> list:
        self.end_trail(c.trail, final, cause, found)
        return []

    def end_trail(self, trail: Trail, final: FinalState, cause: str | None = None,
                  found: Finding | None = None) -> None:
        trail.end(final, cause, found)
        self.finished.append(trail)

    def drop(self, c: Cursor, found: Finding, view: NetnsView | None = None, detail: str | None = None,
             kind: StepKind = StepKind.LINK, **info: Any) -> list:
        """The branch ends in a DROP `found` decided; with a view and a detail, a `kind` step says where
        (`info`: the fields of its typed detail)."""
        if view is not None and detail:
            c.trail.step(c.trail.hop(view), kind, StepAction.DROP, detail, packet(c.st, c.iif, c.st.oif),
                         finding=found.code, **info)
        return self.finish(c, FinalState.DROP, found.code, found)

    # ------------------------------------------------------------ one namespace

    def arrive(self, c: Cursor) -> list[Cursor]:
        c.trail.visits += 1
        view = self.world.netns(c.place)
        if c.trail.visits > MAX_VISITS:
            hops = " → ".join(h.id for h in c.trail.hops[-6:])
            return self.drop(c, finding("ROUTING_LOOP", view.hop_id, dst=c.st.dst, hops=hops), view,
                             f"entered more than {MAX_VISITS} namespaces", StepKind.ROUTE, destination=c.st.dst)
        c.trail.hop(view)
        self.note_gaps(c.trail, view)
        if self.reply:
            conntrack_state(c, view)
        else:
            c.trail.tracked.add(c.place)
        if c.iif is None:
            self.devices.cgroups(c, view, "reply's sender" if self.reply else "source")
            return self._local_out(c, view)
        if not self.devices.ingress(c, view, c.iif):
            return []
        port = view.links.get(c.iif)
        if port is not None and port.master and c.port_in is None:
            return self.links.bridge_in(c, view, port)
        return self.routed_in(c, view)

    def _local_out(self, c: Cursor, view: NetnsView) -> list[Cursor]:
        """A locally generated packet: route, OUTPUT, re-route if changed, POSTROUTING, out."""
        out: list[Cursor] = []
        for c1, d in self._route(c, view, None):
            if not d.delivers_locally and not self._localnet_ok(c1, view, d.dev):
                continue
            original = (c1.st.dst, c1.st.mark)
            c1.st.oif = d.dev
            for c2 in self.hook(c1, view, "OUTPUT"):
                if self._untranslated(c2, view):
                    self.rules_missing(c2, view, "OUTPUT")
                    continue
                pairs = [(c2, d)]
                if (c2.st.dst, c2.st.mark) != original:
                    pairs = self._route(c2, view, None, note="re-route after OUTPUT changed the packet")
                for c3, d3 in pairs:
                    taken = self.ipvs.take(c3, view, "LOCAL_OUT") if d3.delivers_locally else None
                    out.extend(taken if taken is not None else self._leave_or_deliver(c3, view, d3, "lo"))
        return out

    def routed_in(self, c: Cursor, view: NetnsView) -> list[Cursor]:
        """A packet received on `iif`: PREROUTING, kube-proxy check, route, rp_filter, INPUT or FORWARD."""
        out: list[Cursor] = []
        c.st.iif = c.iif
        for c1 in self.hook(c, view, "PREROUTING"):
            if not self._localnet_ok(c1, view):
                continue
            for c2, d in self._route(c1, view, c1.iif):
                if not self._rp_filter_ok(c2, view):
                    continue
                if d.delivers_locally:
                    out.extend(self._leave_or_deliver(c2, view, d, c2.iif))
                    continue
                ok, sysctl = view.forwarding(c2.iif or "")
                if not ok:
                    self.drop(c2, finding("IP_FORWARD_DISABLED", view.hop_id, where=view.where, sysctl=sysctl),
                              view, f"not forwarded: {sysctl}=0", StepKind.SYSCTL, name=sysctl, value=0,
                              device=c2.iif)
                    continue
                c2.st.oif = d.dev
                for c3 in self.hook(c2, view, "FORWARD"):
                    out.extend(self._leave_or_deliver(c3, view, d, c3.iif, forwarded=True))
        return out

    def _leave_or_deliver(self, c: Cursor, view: NetnsView, d: RouteDecision, iif: str | None,
                          forwarded: bool = False) -> list[Cursor]:
        if d.delivers_locally:
            c.st.iif = iif
            c.st.oif = None
            out: list[Cursor] = []
            for c1 in self.hook(c, view, "INPUT"):
                taken = self.ipvs.take(c1, view, "LOCAL_IN")
                if taken is None:
                    self._deliver(c1, view)
                else:
                    out.extend(taken)
            return out
        out = []
        for c1 in self.hook(c, view, "POSTROUTING"):
            out.extend(self.links.transmit(c1, view, d))
        return out

    def _deliver(self, c: Cursor, view: NetnsView) -> None:
        """The packet reached a local address: a reply meets the client's connection; a request needs
        the socket list read, and an address of kube-ipvs0 a virtual server, before a socket takes it."""
        if self.reply:
            reply_arrived(self, c, view)
            return
        if self.blind(c, view, ("sockets",), "the listening sockets"):  # an unread socket list is not an empty one
            return
        if self.ipvs.unserved(c, view):
            return
        deliver(self, c, view)

    def ipvs_forwarded(self, c: Cursor, view: NetnsView) -> list[Cursor]:
        """A packet IPVS rewrote to a real server: routed from the node, OUTPUT without nat (the
        connection's nat is bound), then POSTROUTING and out, or delivered if the real server is local."""
        out: list[Cursor] = []
        for c1, d in self._route(c, view, None, note="IPVS forwards to the real server"):
            if d.delivers_locally:
                self._deliver(c1, view)
                continue
            c1.st.oif = d.dev
            for c2 in self.hook(c1, view, "OUTPUT", nat=False):
                out.extend(self._leave_or_deliver(c2, view, d, c2.iif))
        return out

    # ------------------------------------------------------------ routing

    def _route(self, c: Cursor, view: NetnsView, iif: str | None,
               note: str | None = None) -> list[tuple[Cursor, RouteDecision]]:
        st = c.st
        hop = c.trail.hop(view)
        if self.blind(c, view, gaps.ROUTING, "the routing table"):
            return []
        if iif is not None and self._untranslated(c, view):
            self.rules_missing(c, view, "PREROUTING")
            return []
        decisions = view.router.lookup(st.dst, src=st.src if iif is not None else None, iif=iif, fwmark=st.mark)
        first = decisions[0]
        if first.drops:
            text = first.route or (first.rules[-1] if first.rules else "no matching route")
            found = self.pod_route_missing(view, st.dst, text, first)
            if found is None and first.type == "no_route":
                found = finding("NO_ROUTE", view.hop_id, dst=st.dst, where=view.where, evidence=first.as_dict())
            elif found is None:
                found = finding("ROUTE_BLACKHOLE", view.hop_id, route=text, where=view.where, type=first.type,
                                evidence=first.as_dict())
            c.trail.step(hop, StepKind.ROUTE, StepAction.DROP, f"route lookup for {st.dst}: {text} ({first.type})",
                         packet(st, iif), destination=st.dst, finding=found.code, **route_info(first))
            self.finish(c, FinalState.DROP, found.code, found)
            return []
        pairs = []
        for i, d in enumerate(decisions):
            ci = c if i == len(decisions) - 1 else c.fork()
            action = StepAction.DELIVER if d.delivers_locally else StepAction.FORWARD
            via = f" via {d.gateway}" if d.gateway else ""
            share = f" (ECMP share {d.probability:.2f})" if len(decisions) > 1 else ""
            detail = (f"{note + ': ' if note else ''}route lookup for {st.dst}: {d.route} → "
                      + ("local delivery" if d.delivers_locally else f"dev {d.dev}{via}") + share)
            ci.trail.step(ci.trail.hop(view), StepKind.ROUTE, action, detail, packet(st, iif), destination=st.dst,
                          **route_info(d))
            ci.trail.probability *= d.probability
            pairs.append((ci, d))
        return pairs

    def pod_route_missing(self, view: NetnsView, dst: IPAddress, route: str, d: RouteDecision) -> Finding | None:
        """A node's route lookup for one of its own routed (unbridged) pods fails: the per-pod route the
        CNI programs (`podIP dev cali* scope link`) is gone, and the lookup fell to the block's blackhole."""
        pod = self.pod_ips.get(dst)
        pod_view = self.world.pod_netns(view.node, pod) if pod and view.is_host else None
        if pod_view is None or pod_view.node != view.node:
            return None
        veth = next((lk for lk in view.dump.links if lk.kind == "veth" and lk.peer_netns == pod_view.dump.id), None)
        if veth is None or veth.master:
            return None
        if not link_up(veth):  # taking a device down flushes its routes: the link is the cause
            return finding("LINK_DOWN", view.hop_id, link=veth.name, where=view.where,
                           evidence={"state": veth.state, "admin_up": veth.admin_up, "route": d.as_dict()})
        return finding("POD_ROUTE_MISSING", view.hop_id, where=view.where, pod=pod, dst=dst, route=route,
                       device=veth.name, evidence=d.as_dict())

    def rules_missing(self, c: Cursor, view: NetnsView, hook: str) -> None:
        res = self.report.service
        what = f"Service {res.service if res else '?'} {c.st.dst}:{c.st.dport}/{c.st.protocol}"
        self.drop(c, finding("KUBE_PROXY_RULES_MISSING", view.hop_id, node=view.node, what=what,
                             evidence={"detail": f"the packet is still addressed to the Service after {hook}: no "
                                       "rule translated it; nothing answers a virtual address",
                                       "mode": mode_note(self, view)}),
                  view, f"{what} was not translated by {hook}", StepKind.SERVICE, service=res.service if res else None)

    def _translated(self, c: Cursor) -> bool:
        return any(n.kind in ("DNAT", "REDIRECT") for n in c.trail.nat)

    def _untranslated(self, c: Cursor, view: NetnsView) -> bool:
        """Still addressed to a Service address kube-proxy captures on every node (ClusterIP, externalIP,
        LB IP) and not local here (IPVS's kube-ipvs0), yet no rule translated it. A NodePort on another
        node's address is that node's to translate."""
        st = c.st
        return view.is_host and self.service_vip(st) and st.dst not in self.node_ips and not self._translated(c) \
            and self.has_endpoints() and st.dst not in view.local_ips and not self._firewalled(st)

    def _firewalled(self, st: FlowState) -> bool:
        """A source outside loadBalancerSourceRanges is left untranslated on purpose: kube-proxy's
        filter firewall (KUBE-PROXY-FIREWALL) drops it further on, so the walk follows it there."""
        res = self.report.service
        if res is None or st.dst not in res.load_balancer_ips or not res.load_balancer_source_ranges:
            return False
        return not any(_in_range(st.src, r) for r in res.load_balancer_source_ranges)

    def _localnet_ok(self, c: Cursor, view: NetnsView, out_dev: str | None = None) -> bool:
        """ip_route_input: a loopback source or destination arriving on another device is martian
        unless route_localnet allows it (a DNAT to 127.0.0.1 needs it). Output (`out_dev`): a loopback
        source may leave by another device only with route_localnet there (the reply of such a DNAT)."""
        dev = out_dev or c.iif or ""
        side = "source" if c.st.src.is_loopback else None
        if out_dev is None and c.st.dst.is_loopback:
            side = "destination"
        link = view.links.get(dev)
        if side is None or dev == "lo" or (link is not None and link.kind == "loopback"):
            return True
        ok, sysctl = view.route_localnet(dev)
        if ok or self.blind(c, view, ("sysctls",), f"{sysctl}"):
            return ok
        found = finding("ROUTE_LOCALNET_DISABLED", view.hop_id, where=view.where, packet=packet(c.st),
                        device=dev, side=side, sysctl=sysctl,
                        evidence={"direction": "out" if out_dev else "in"})
        self.drop(c, found, view, f"martian {side} {c.st.dst if side == 'destination' else c.st.src} "
                  f"{'out of' if out_dev else 'on'} {dev}: {sysctl}=0", StepKind.SYSCTL, name=sysctl, value=0,
                  device=dev)
        return False

    def _rp_filter_ok(self, c: Cursor, view: NetnsView) -> bool:
        dev = c.iif or ""
        mode = view.rp_filter(dev)
        if mode == 0 or c.st.src.is_unspecified:
            return True
        reverse = view.router.lookup(c.st.src, src=c.st.dst, fwmark=c.st.mark)
        if mode == 1:
            ok = any(d.type == "unicast" and d.dev == dev for d in reverse) or any(d.type == "local" for d in reverse)
        else:
            ok = any(not d.drops for d in reverse)
        if ok:
            return True
        rev_dev = next((d.dev for d in reverse if d.dev), reverse[0].type)
        self.drop(c, finding("RP_FILTER_DROP", view.hop_id, packet=packet(c.st), device=dev, where=view.where,
                             src=c.st.src, reverse_device=rev_dev, mode="strict" if mode == 1 else "loose",
                             evidence={"reverse_route": [d.as_dict() for d in reverse]}),
                  view, f"rp_filter={mode} on {dev}: the route back to {c.st.src} leaves via {rev_dev}",
                  StepKind.SYSCTL, name=f"net.ipv4.conf.{dev}.rp_filter", value=mode, device=dev,
                  reverse_device=rev_dev)
        return False

    # ------------------------------------------------------------ netfilter

    def hook(self, c: Cursor, view: NetnsView, hook: str, nat: bool = True, **ctx: object) -> list[Cursor]:
        """Run one hook over every iptables backend and nftables base chain of the namespace, in kernel
        order (hooks.run_hook); one cursor per surviving branch. `nat=False`: the connection's nat is
        already bound (a packet IPVS forwards), nat stages are skipped."""
        if self.reply:
            ctx.setdefault("reply", True)
        self.note_gaps(c.trail, view)
        if self.blind(c, view, ("iptables" if c.st.dst.version == 4 else "ip6tables", "nftables"),
                      f"the {hook} netfilter rules"):
            return []
        if view.unmodelled_netfilter:
            c.trail.assume(f"UNSUPPORTED_RULE: {view.unmodelled_netfilter}", could_change=True)
        if not view.rulesets and view.nft is None:
            return self._reverse_nat([c], view, hook)
        before = packet(c.st, c.st.iif, c.st.oif)
        vip_before = self.service_vip(c.st)
        context = view.context(**ctx)
        tracers = [Tracer(rs, context) for _backend, rs in view.rulesets]
        try:
            branches = _run_hook(tracers, view.nft, [Branch(state=c.st)], hook, context, nat)
        except TraceTooLarge as exc:
            c.trail.assume(f"netfilter trace in {view.where} {hook} too large: {exc}", could_change=True)
            self.finish(c, FinalState.ABORT)
            return []
        cursors = [c] + [c.fork() for _ in branches[1:]]
        survivors = []
        for ci, br in zip(cursors, branches, strict=True):
            ci.st = br.state
            ci.trail.probability *= br.probability
            if self._record_hook(ci, view, hook, br, before, vip_before):
                survivors.append(ci)
        if vip_before and hook in ("PREROUTING", "OUTPUT") and view.is_host and not self.reply:
            self._check_endpoints(cursors, branches, view)
        return self._reverse_nat(survivors, view, hook)

    def _reverse_nat(self, cursors: list[Cursor], view: NetnsView, hook: str) -> list[Cursor]:
        """A reply's translation back happens at the nat priority, after raw and mangle (and, on the
        way out, after filter): so after the hook's rules, and only for a reply conntrack tracks —
        one a NOTRACK rule matched keeps the addresses the request was translated to."""
        if not self.reply:
            return cursors
        for c in cursors:
            if c.st.ctstate == "UNTRACKED":
                c.trail.untracked.add(view.place)
            elif c.st.ctstate == "ESTABLISHED":
                self._undo_nat(c, view, hook)
        return cursors

    def _undo_nat(self, c: Cursor, view: NetnsView, hook: str) -> None:
        """conntrack's reverse NAT for a reply: un-SNAT (destination) before routing, un-DNAT (source)
        on the way out, in the namespace that translated the request."""
        if hook not in ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT"):
            return
        dst_side = hook in ("PREROUTING", "OUTPUT")
        for entry in list(c.trail.pending_reverse):
            if entry.place != view.place or entry.rewrites_destination == dst_side:
                continue
            st = c.st
            current = (st.src, st.sport) if entry.rewrites_destination else (st.dst, st.dport)
            if current[0] != entry.new[0] or (entry.new[1] is not None and current[1] != entry.new[1]):
                continue
            before = packet(st, st.iif, st.oif)
            if entry.rewrites_destination:
                st.src = entry.orig[0]
                st.sport = entry.orig[1] if entry.orig[1] is not None else st.sport
            else:
                st.dst = entry.orig[0]
                st.dport = entry.orig[1] if entry.orig[1] is not None else st.dport
            c.trail.pending_reverse.remove(entry)
            if entry.orig == entry.new:
                continue  # a no-op translation has nothing to undo
            c.trail.step(c.trail.hop(view), StepKind.NAT, StepAction.REWRITE, f"conntrack {hook}: reply of the "
                         f"{entry.kind} {entry.before} → {entry.after} translated back", before,
                         packet(st, st.iif, st.oif), type=entry.kind, original=endpoint_info(entry.new),
                         translated=endpoint_info(entry.orig), reverse=True)

    def _record_hook(self, c: Cursor, view: NetnsView, hook: str, br: Branch, before: Packet,
                     vip_before: bool) -> bool:
        trail = c.trail
        hop = trail.hop(view)
        for text, could_change in br.assumptions.items():
            trail.assume(f"{view.where} {hook}: {text}", could_change=could_change)
        for hit in br.unsupported:
            found = finding("UNSUPPORTED_RULE", view.hop_id, rule=hit.rule, where=f"{view.where} {hit.label}/"
                            f"{hit.chain}", feature="an unmodelled match or target", evidence=hit.as_dict())
            if found not in trail.findings:
                trail.findings.append(found)
        after = packet(br.state, br.state.iif, br.state.oif)
        rules = [rule_hit(h) for h in br.hits]
        if not br.hits and br.verdict == "ACCEPT":
            return True
        verdict = br.verdict or "ACCEPT"
        action = StepAction.ALLOW if verdict == "ACCEPT" else StepAction.DROP
        step = trail.step(hop, StepKind.NETFILTER, action, f"{hook}: {verdict}" + (
            f" by {br.decided_by.label}/{br.decided_by.chain} rule {br.decided_by.position}" if br.decided_by and
            action == StepAction.DROP else f" ({len(rules)} rule(s) matched)"), before, after,
            hook=hook, verdict=verdict, rules=rules, reject_with=br.reject_with,
            decided_by=rule_hit(br.decided_by) if br.decided_by and action == StepAction.DROP else None)
        for rec in br.nat:
            dnat = rec.kind in ("DNAT", "REDIRECT")
            orig = (before.dst, before.dport) if dnat else (before.src, before.sport)
            new = (after.dst, after.dport) if dnat else (after.src, after.sport)
            entry = NatEntry(view.place, rec.kind, rec.before, rec.after, orig, new)
            if not self.reply:
                check_nat_address(self, c, view, entry)
            trail.nat.append(entry)
            where = f"({rec.hit.label}/{rec.hit.chain} rule {rec.hit.position})"
            nat_info: dict[str, Any] = {"type": rec.kind, "original": endpoint_info(orig),
                                        "translated": endpoint_info(new), "rule": rule_hit(rec.hit)}
            if orig == new:  # e.g. a node's own packet masqueraded to the address it already has: no rewrite
                trail.step(hop, StepKind.NAT, StepAction.INFO, f"{rec.kind} {where} keeps {rec.before}: the packet "
                           "is not changed (conntrack still records the binding)", **nat_info)
                continue
            trail.step(hop, StepKind.NAT, StepAction.REWRITE, f"{rec.kind} {rec.before} → {rec.after} {where}",
                       before, after, **nat_info)
        if vip_before and any(n.kind in ("DNAT", "REDIRECT") for n in br.nat) and self.report.service:
            last = [n for n in br.nat if n.kind in ("DNAT", "REDIRECT")][-1]
            self.service_step(trail, view, f"kube-proxy on {view.node} translates {last.before} → {last.after} "
                              f"(branch probability {br.probability:.2f})", before, after, probability=br.probability,
                              rules=[h.rule for h in br.hits if h.chain.startswith(("KUBE-SVC", "KUBE-SEP"))])
        if action == StepAction.ALLOW:
            return True
        self._netfilter_drop(c, view, hook, br, step)
        return False

    def service_step(self, trail: Trail, view: NetnsView, detail: str, before: Packet, after: Packet,
                     **info: Any) -> None:
        """The Service as this node's kube-proxy implements it: a hop before the node that translated it
        (`info`: fields of the step's ServiceInfo)."""
        res = self.report.service
        assert res is not None
        hop_id = service_hop(res.service)
        if any(h.id == hop_id for h in trail.hops):
            return
        svc = Hop(id=hop_id, kind=HopKind.SERVICE, name=res.service, address=self.request.dst, node=view.node)
        trail.step(svc, StepKind.SERVICE, StepAction.REWRITE, detail, before, after, service=res.service, **info)
        trail.hops.insert(len(trail.hops) - 1, svc)

    def _netfilter_drop(self, c: Cursor, view: NetnsView, hook: str, br: Branch, step: Step) -> None:
        """Why the hook dropped: a policy, kube-proxy, or the rule itself (`step`, the hook's own step,
        then names the finding)."""
        hit = br.decided_by
        rule = hit.rule if hit else f":{hook} DROP"
        fields: dict[str, Any] = dict(where=view.where, table=hit.label if hit else "?",
                                      chain=hit.chain if hit else hook, position=hit.position if hit else 0,
                                      rule=rule, evidence={"hook": hook})
        # felix's end-of-tier drop names no policy: its tier's policy chains do (netfilter/felix.py)
        felix = tier_drop_policies([rs for _, rs in view.rulesets], hit.table, hit.chain, rule) \
            if hit and not hit.family else []
        if felix:
            fields["evidence"]["felix_policies"] = ", ".join(felix)
        policy = self.expect.policy_deny(" ".join([rule, *felix])) if hit else None
        res = self.report.service
        if policy is not None:
            verdict = policy.evidence.get("policy_verdict") or {}  # the policy engine's (policy/findings.py)
            c.trail.step(c.trail.policy_hop(policy, view), StepKind.POLICY, StepAction.DROP,
                         f"NetworkPolicy enforced on {view.node} ({hook} {fields['table']}/{fields['chain']} "
                         f"rule {fields['position']}): {rule}",
                         packet(br.state), direction=policy.evidence.get("direction"), pod=verdict.get("pod"),
                         enforced_by=rule_hit(hit) if hit else None, finding=policy.code)
            self.finish(c, FinalState.DROP, "NETWORK_POLICY_DENY", policy)
            return
        if res is not None and hit is not None and hit.table.endswith("kube-proxy") and hit.chain == "reject-chain":
            self.no_endpoint(c, view, f"kube-proxy rejects: {rule}")  # nftables mode
            return
        cause = next((code for text, code in KUBE_PROXY_CAUSES if text in rule), None) if res and hit else None
        if cause is not None:
            self.service_drop(c, view, cause, f"kube-proxy {'rejects' if br.verdict == 'REJECT' else 'drops'}: "
                              f"{rule}")
            return
        if fields["chain"] == "KUBE-IPVS-FILTER" and self.service_vip(br.state) and self.has_endpoints():
            self.rules_missing(c, view, f"{hook} ({fields['table']}/KUBE-IPVS-FILTER rejects an address of "
                                "kube-ipvs0 that no Service port owns)")
            return
        if br.verdict == "REJECT":
            found = finding("IPTABLES_REJECT", view.hop_id, reject_with=br.reject_with, **fields)
        elif hit is not None and hit.family:  # a native nftables rule (not iptables-nft)
            found = finding("NFTABLES_DROP", view.hop_id, where=view.where, family=hit.family, table=hit.table,
                            chain=hit.chain, rule=rule, evidence={"hook": hook, "position": hit.position})
        else:
            found = finding("IPTABLES_DROP", view.hop_id, **fields)
        step.info.finding = found.code
        self.finish(c, FinalState.DROP, found.code, found)

    def _check_endpoints(self, cursors: list[Cursor], branches: list[Branch], view: NetnsView) -> None:
        """EndpointSlices vs this node's rules: a ready endpoint no branch DNATs to was not programmed."""
        res = self.report.service
        if res is None:
            return
        targets = {n.after for br in branches for n in br.nat if n.kind == "DNAT"}
        if not targets:
            return
        endpoints = {f"{b.address}:{b.port}" if b.address.version == 4 else f"[{b.address}]:{b.port}"
                     for b in res.backends if b.port is not None}
        external = cursors[0].st.orig_dst not in res.cluster_ips if cursors else False
        local_only = res.external_traffic_policy == "Local" if external else res.internal_traffic_policy == "Local"
        for b in res.backends:
            if not b.ready or b.port is None or (local_only and b.node != view.node):
                continue
            ep = f"{b.address}:{b.port}" if b.address.version == 4 else f"[{b.address}]:{b.port}"
            if ep not in targets:
                # a rule left over for an address that is no endpoint (a stale DNAT) is what took its place
                stale = sorted(t for t in targets if t not in endpoints)
                found = finding("KUBE_PROXY_RULES_MISSING", view.hop_id, node=view.node,
                                what=f"endpoint {ep} of Service {res.service}" + (
                                    f" (its traffic is translated to {', '.join(stale)} instead, which is no "
                                    "endpoint: a stale rule)" if stale else ""),
                                evidence={"dnat_targets": sorted(targets), "stale": stale})
                for c in cursors:
                    if found not in c.trail.findings:
                        c.trail.findings.append(found)

    def external(self, c: Cursor, hop_kind: HopKind, describe: Callable[[], str]) -> list:
        hop = c.trail.hop_by_id(external_hop(c.st.dst), kind=hop_kind, name=describe())
        c.trail.step(hop, StepKind.DELIVERY, StepAction.FORWARD, f"leaves the cluster towards {c.st.dst}: the "
                     "cloud layer (VPC routes, NAT gateway) decides beyond this point", packet(c.st))
        return self.finish(c, FinalState.FORWARD)


def _in_range(addr: IPAddress, cidr: str) -> bool:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:  # topology stated the invalid entry; kube-proxy skips it too
        return False
    return addr.version == net.version and addr in net


def _run_hook(tracers: list[Tracer], nft: NftRuleset | None, branches: list[Branch], hook: str,
              ctx: TraceContext, nat: bool) -> list[Branch]:
    if nat:
        return run_hook(tracers, nft, branches, hook, ctx=ctx)
    evaluator = NftEvaluator(nft, ctx) if nft is not None else None
    for br in branches:
        br.verdict = None
        br.hooks.append(hook)
    for stage in stages(tracers, evaluator, hook, branches[0].state.dst.version):
        if not stage.nat:
            branches = stage.run(branches)
    for br in branches:
        br.verdict = br.verdict or "ACCEPT"
    return branches
