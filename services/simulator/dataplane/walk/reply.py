"""The reply path: from the endpoint back to the client, through conntrack's reverse NAT.

The reply starts where the request was delivered, as an ESTABLISHED packet generated there; for a
request that left the cluster (pod → internet), it comes back in through the uplink the request left
by, addressed to the source the request left with (the node's masquerade address). Every
namespace that translated the request translates the reply back when the reply crosses its IP hooks
(un-SNAT before routing, un-DNAT on the way out). A reply that reaches the client untranslated (it
was bridged past the translating node with bridge-nf-call-iptables=0, or took another route) does
not match the client's connection and is dropped there.
"""

from __future__ import annotations

from collections.abc import Callable

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.walk.cursor import Cursor, Walk
from services.simulator.dataplane.walk.trail import Trail, packet
from services.simulator.dataplane.walk.world import IPAddress, NetnsView
from shared.codes import finding
from shared.hops import external_hop, node_hop
from shared.schemas import FinalState, HopKind, Severity, StepAction, StepKind


def reply_start(forward: Trail, node_for_pod_network: Callable[[IPAddress], str | None]) -> Cursor | None:
    """Where the reply of one forward trail starts (None when the request was neither delivered nor
    left the cluster); a reply walker runs it. `node_for_pod_network`: the node whose pod CIDR holds
    an address."""
    if forward.delivered is not None:
        (place, st), iif = forward.delivered, None
    elif forward.left is not None:
        place, st, iif = forward.left
    else:
        return None
    flags = frozenset({"SYN", "ACK"}) if st.protocol == "tcp" else frozenset()
    rst = FlowState(src=st.dst, dst=st.src, protocol=st.protocol, sport=st.dport, dport=st.sport,
                    ctstate="ESTABLISHED", tcp_flags=flags, iif=iif)
    trail = Trail(pending_reverse=list(forward.nat))
    if iif is not None and node_for_pod_network(st.src) is not None and node_for_pod_network(st.dst) is None:
        # the request left with a pod address: the outside cannot answer it unless a NAT (the cloud's,
        # checked by the cloud stage when modelled) or a route for the pod CIDR brings the reply back
        forward.findings.append(finding("POD_SOURCE_NOT_MASQUERADED", node_hop(place.node), src=st.src,
                                        dst=st.dst, where=f"node {place.node}"))
        forward.assume(f"the reply from {st.dst} to the pod address {st.src} comes back to {place.node}'s "
                       f"{iif} only through a NAT or a route for the pod CIDR beyond the node", could_change=True)
    elif iif is not None:
        trail.assume(f"the reply from {st.dst} comes back to {st.src} on {place.node}'s {iif} (beyond the node "
                     "the cloud layer decides)", could_change=False)  # the cloud stage checks that part
    if iif is not None:
        hop = trail.hop_by_id(external_hop(st.dst), kind=HopKind.INTERNET if st.dst.is_global else HopKind.EXTERNAL,
                              name=str(st.dst))
        trail.step(hop, StepKind.CLASSIFY, StepAction.FORWARD, f"the reply enters {place.node} through {iif}",
                   packet(rst, iif), endpoint="external", device=iif)
    return Cursor(place, rst, iif, trail)


def reply_arrived(w: Walk, c: Cursor, view: NetnsView) -> None:
    """The reply reached a local socket: the client's connection takes it only if it is the exact
    reverse of what the client sent."""
    r, st = w.request, c.st
    hop = c.trail.hop(view)
    if st.src == r.dst and st.sport in (r.port, None) and st.dst == r.src:
        c.trail.step(hop, StepKind.DELIVERY, StepAction.DELIVER, f"the reply reaches the client's connection in "
                     f"{view.where}", packet(st, st.iif), reply=True)
        w.finish(c, FinalState.DELIVER)
        return
    undone = [e for e in c.trail.pending_reverse if e.rewrites_destination]
    bypassed = next((e for e in undone if e.place in c.trail.bridged_without_nf), None)
    if bypassed is not None:
        node = bypassed.place.node
        found = finding("BRIDGE_NF_DISABLED", node_hop(node), severity=Severity.ERROR, where=f"node {node}",
                        evidence={"untranslated": f"{bypassed.kind} {bypassed.before} → {bypassed.after}"})
    else:
        where = undone[0].place.node if undone else view.node
        found = finding("INVALID_ROUTE", node_hop(where), route="the reply path", where=f"node {where}",
                        expected=f"back through node {where}, which translated the request", dst=r.src)
    c.trail.step(hop, StepKind.DELIVERY, StepAction.DROP, f"the reply arrives as {packet(st)}, but the client "
                 f"sent to {r.dst}:{r.port}: no connection matches, the client drops it", packet(st, st.iif),
                 reply=True, finding=found.code)
    w.finish(c, FinalState.DROP, found.code, found)
