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
from shared.schemas import FinalState, Finding, HopKind, Severity, StepAction, StepKind
from shared.topology import EndpointKind

INSIDE = frozenset({EndpointKind.POD, EndpointKind.HOST_NETWORK_POD, EndpointKind.NODE})  # clients on the nodes


def reply_start(forward: Trail, node_for_pod_network: Callable[[IPAddress], str | None]) -> Cursor | Trail | None:
    """Where the reply of one forward trail starts, for a reply walker to run (None when the request
    was neither delivered nor left the cluster; an ended trail when the reply goes to another owner
    of the request's source, decided without a walk). `node_for_pod_network`: the node whose pod CIDR
    holds an address."""
    if forward.delivered is not None:
        (place, st), iif = forward.delivered, None
    elif forward.left is not None:
        place, st, iif = forward.left
    else:
        return None
    flags = frozenset({"SYN", "ACK"}) if st.protocol == "tcp" else frozenset()
    rst = FlowState(src=st.dst, dst=st.src, protocol=st.protocol, sport=st.dport, dport=st.sport,
                    ctstate="ESTABLISHED", tcp_flags=flags, iif=iif)
    trail = Trail(pending_reverse=list(forward.nat), tracked=set(forward.tracked))
    foreign = next((e.foreign for e in forward.nat if e.foreign is not None and e.new[0] == st.src), None)
    if iif is not None and foreign is not None:
        return _to_owner(trail, rst, foreign)
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


def conntrack_state(c: Cursor, view: NetnsView) -> None:
    """Each namespace has its own conntrack: a reply is ESTABLISHED only where the request created an
    entry. Elsewhere (a reply routed around the node that saw the request) a TCP reply — a SYN-ACK, no
    SYN seen — is INVALID, and a UDP one NEW (so nat, e.g. a masquerade, applies to it there)."""
    if c.place in c.trail.tracked:
        c.st.ctstate = "ESTABLISHED"
        return
    c.st.ctstate = "NEW" if c.st.protocol == "udp" else "INVALID"
    c.trail.step(c.trail.hop(view), StepKind.CLASSIFY, StepAction.INFO, f"the reply enters {view.where}, whose "
                 f"conntrack never saw the request: it is ctstate {c.st.ctstate} here", packet(c.st, c.iif),
                 device=c.iif)


def _to_owner(trail: Trail, rst: FlowState, foreign: Finding) -> Trail:
    """The request left with a source address another host owns: the reply is routed to that owner,
    which has no connection for it (TCP answers a reset, UDP finds no socket), not to the node that sent it."""
    owner, owner_hop = str(foreign.evidence.get("owner")), str(foreign.evidence.get("owner_hop"))
    hop = trail.hop_by_id(external_hop(rst.src), kind=HopKind.INTERNET if rst.src.is_global else HopKind.EXTERNAL,
                          name=f"{'internet' if rst.src.is_global else 'outside the cluster'} {rst.src}")
    trail.step(hop, StepKind.CLASSIFY, StepAction.FORWARD, f"the reply is addressed to {rst.dst}, which {owner} "
               "owns: the network delivers it there", packet(rst))
    kind = {"node": HopKind.NODE, "pod": HopKind.POD}.get(owner_hop.partition(":")[0], HopKind.EXTERNAL)
    there = trail.hop_by_id(owner_hop, kind=kind, name=owner)
    trail.step(there, StepKind.DELIVERY, StepAction.DROP, f"{owner} never sent the request: no connection takes "
               "the reply", packet(rst), reply=True, finding=foreign.code)
    trail.end(FinalState.DROP, foreign.code, foreign)
    return trail


def _mismatch_cause(c: Cursor) -> Finding | None:
    """A translation to an address someone else owns explains a reply that went astray."""
    return next((e.foreign for e in c.trail.pending_reverse if e.foreign is not None), None)


def _tuple(src: object, sport: int | None, dst: object, dport: int | None, protocol: str) -> str:
    return f"{src}:{sport if sport is not None else '*'} → {dst}:{dport if dport is not None else '*'}/{protocol}"


def reply_leaves(w: Walk, c: Cursor, view: NetnsView) -> list:
    """The reply leaves the modelled nodes towards the client outside them (internet, a VPC host, the
    client of a NodePort or LoadBalancer): the client's connection takes it only if it is the exact
    reverse of what the client sent, i.e. conntrack reversed every translation the request met.
    Anything else the client drops (TCP answers it with a reset) and the connection never completes."""
    r, st = w.request, c.st
    peer = f"client {r.src}"
    expected = _tuple(r.dst, r.port, r.src, None, r.protocol)
    actual = _tuple(st.src, st.sport, st.dst, st.dport, st.protocol)
    hop = c.trail.hop(view)
    if w.report.src.kind in INSIDE:  # the client is inside the cluster: a reply leaving the nodes misses it
        found = finding("INVALID_ROUTE", view.hop_id, route="the reply path", where=view.where, dst=r.src,
                        expected=f"back to {r.src} inside the cluster")
        c.trail.step(hop, StepKind.DELIVERY, StepAction.DROP, f"the reply to {r.src}, a client inside the cluster, "
                     f"leaves the nodes from {view.where}", packet(st, st.iif, st.oif), reply=True, finding=found.code)
        return w.finish(c, FinalState.DROP, found.code, found)
    public = _cloud_translated(w, view, st.src, r.dst)
    if (st.src == r.dst or public) and st.sport in (r.port, None) and st.dst == r.src:
        out = c.trail.hop_by_id(external_hop(r.src), kind=HopKind.INTERNET if r.src.is_global else HopKind.EXTERNAL,
                                name=peer)
        if public:
            owner = "pod" if w.report.dst.kind == EndpointKind.POD_EIP else "node"
            c.trail.step(out, StepKind.NAT, StepAction.REWRITE, f"the cloud translates the reply's source {st.src} "
                         f"back to the {owner}'s public address {r.dst}", packet(st), packet(st).model_copy(
                             update={"src": r.dst}), type="SNAT")
        c.trail.step(out, StepKind.DELIVERY, StepAction.FORWARD, f"the reply leaves {view.where} as {actual}: the "
                     f"exact reverse of what the client sent", packet(st, st.iif, st.oif), reply=True)
        c.trail.assume(f"the reply from {view.where} reaches {peer} through the network beyond the nodes (the "
                       "cloud layer decides there), and the client takes the exact reverse of its connection",
                       could_change=False)
        return w.finish(c, FinalState.FORWARD)
    found = _mismatch_cause(c) or finding(
        "REPLY_NOT_TRANSLATED", view.hop_id, where=view.where, peer=peer, actual=actual,
        sent=_tuple(r.src, None, r.dst, r.port, r.protocol), expected=expected, missing=_missing(w, c),
        evidence={"expected": expected, "actual": actual, "untranslated": [
            {"kind": e.kind, "before": e.before, "after": e.after, "node": e.place.node, "netns": e.place.netns}
            for e in c.trail.pending_reverse]})
    c.trail.step(hop, StepKind.DELIVERY, StepAction.DROP, f"the reply leaves {view.where} as {actual}, but the "
                 f"client expects {expected}: no connection of the client matches, it drops the reply",
                 packet(st, st.iif, st.oif), reply=True, finding=found.code)
    return w.finish(c, FinalState.DROP, found.code, found)


def _cloud_translated(w: Walk, view: NetnsView, src: object, public: object) -> bool:
    """The request went to an address of this node that no interface holds (an EIP / public IP the cloud
    translated to the node's private address on the way in), or to a pod's EIP (its PodEIP: translated to the
    pod address): the cloud translates the reply's source back."""
    if w.report.dst.kind == EndpointKind.POD_EIP:
        return public == w.report.dst.address and any(src == p.dst_address for p in w.report.paths)
    known = w.report.cluster.node_addresses.get(view.node) or []
    return src != public and public in known and src in known and public not in view.local_ips \
        and src in view.local_ips


def _missing(w: Walk, c: Cursor) -> str:
    """Which translation the reply missed, and why."""
    parts = []
    for e in c.trail.pending_reverse:
        where = w.world.netns(e.place).where if e.place.node in w.world.nodes else f"node {e.place.node}"
        why = ("a NOTRACK rule took the reply out of conntrack there" if e.place in c.trail.untracked else
               f"the reply did not go back through {where}")
        parts.append(f"the {e.kind} {e.before} → {e.after} made in {where} was not reversed ({why})")
    if not parts:
        own = [f"{e.kind} {e.before} → {e.after} in {w.world.netns(e.place).where}" for e in c.trail.nat]
        return "the reply was translated on its way (" + "; ".join(own) + ")" if own else \
            "no translation of the request matches the reply"
    return "; ".join(parts)


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
        found = _mismatch_cause(c) or finding(
            "INVALID_ROUTE", node_hop(where), route="the reply path", where=f"node {where}",
            expected=f"back through node {where}, which translated the request", dst=r.src)
    c.trail.step(hop, StepKind.DELIVERY, StepAction.DROP, f"the reply arrives as {packet(st)}, but the client "
                 f"sent to {r.dst}:{r.port}: no connection matches, the client drops it", packet(st, st.iif),
                 reply=True, finding=found.code)
    w.finish(c, FinalState.DROP, found.code, found)
