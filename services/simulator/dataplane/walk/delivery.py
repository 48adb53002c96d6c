"""Delivery: a socket in the destination namespace that accepts the packet, or NO_LISTENER."""

from __future__ import annotations

from typing import Protocol

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.walk.cursor import Cursor, Walk
from services.simulator.dataplane.walk.devices import DeviceHooks
from services.simulator.dataplane.walk.trail import copy_state, packet
from services.simulator.dataplane.walk.world import NetnsView
from shared.codes import finding
from shared.netstack import Socket
from shared.schemas import FinalState, StepAction, StepKind

WILDCARDS = frozenset({"0.0.0.0", "::", "*", ""})


def matching_socket(sockets: list[Socket], st: FlowState) -> Socket | None:
    """TCP needs a LISTEN socket, UDP any bound one; the address is the destination or a wildcard
    (an IPv6 wildcard also takes IPv4 unless v6only, which the dump does not say: assumed not)."""
    for s in sockets:
        if s.protocol != st.protocol or s.port != st.dport:
            continue
        if st.protocol == "tcp" and s.state.upper() != "LISTEN":
            continue
        addr = s.address.strip("[]").split("%")[0]
        if addr in WILDCARDS or addr == str(st.dst):
            return s
    return None


class DeliveryWalk(Walk, Protocol):
    @property
    def devices(self) -> DeviceHooks: ...


def deliver(w: DeliveryWalk, c: Cursor, view: NetnsView) -> None:
    """A request at a local address whose socket list was read (the walker checked that, and IPVS)."""
    st = c.st
    hop = c.trail.hop(view)
    c.trail.delivered = (view.place, copy_state(st))
    sock = matching_socket(view.dump.sockets, st)
    if sock is not None:
        w.devices.cgroups(c, view, "destination")
        c.trail.step(hop, StepKind.DELIVERY, StepAction.DELIVER, f"delivered: {sock.protocol} socket "
                     f"{sock.address}:{sock.port} ({sock.state}) in {view.where}", packet(st, st.iif),
                     socket=sock.model_dump())
        w.finish(c, FinalState.DELIVER)
        return
    if st.protocol not in ("tcp", "udp"):
        c.trail.step(hop, StepKind.DELIVERY, StepAction.DELIVER, f"delivered to {view.where} (the kernel answers "
                     f"{st.protocol} itself)", packet(st, st.iif))
        w.finish(c, FinalState.DELIVER)
        return
    # the targetPort advice only where a Service translated the packet (not on a plain node or pod port)
    translated = any(n.rewrites_destination for n in c.trail.nat)
    via = w.report.service.service if w.report.service is not None and translated else None
    hint = f"; check the container's listen port matches the targetPort of Service {via} ({st.dport})" if via else ""
    found = finding("NO_LISTENER", view.hop_id, address=st.dst, port=st.dport, protocol=st.protocol,
                    where=view.where, service_hint=hint,
                    evidence={"sockets": [s.model_dump() for s in view.dump.sockets]})
    c.trail.step(hop, StepKind.DELIVERY, StepAction.DROP, f"no {st.protocol} socket on {st.dst}:{st.dport} in "
                 f"{view.where}" + (": the kernel answers with a TCP reset" if st.protocol == "tcp" else
                                    ": the kernel answers ICMP port unreachable"), packet(st, st.iif),
                 finding=found.code)
    w.finish(c, FinalState.DROP, found.code, found)
