"""IPVS (kube-proxy `mode: ipvs`): virtual servers own the Service addresses bound to kube-ipvs0.

A packet for a local address that a virtual server owns (protocol, address, port; or its fwmark) is
taken by IPVS at LOCAL_IN, after the INPUT chains (a routed-in packet), or at LOCAL_OUT, before
delivery (the node's own connection). The scheduler picks a real server; each real server with a
weight is a branch whose probability follows the scheduler. Masquerading forwarding is a DNAT:
the packet is routed from the node to the real server through OUTPUT (filter only: the connection's
nat was bound already) and POSTROUTING (kube-proxy's masquerade). The reply is translated back where
the request was (conntrack, net.ipv4.vs.conntrack=1 as kube-proxy sets it).

The real servers are cross-checked against the Service's ready endpoints (IPVS_BACKEND_MISMATCH);
a Service address no virtual server owns is KUBE_PROXY_RULES_MISSING, explained with the
kube-proxy mode the cluster runs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.netfilter.model import endpoint
from services.simulator.dataplane.walk.cursor import Cursor, Walk
from services.simulator.dataplane.walk.delivery import matching_socket
from services.simulator.dataplane.walk.trail import NatEntry, Trail, endpoint_info, packet
from services.simulator.dataplane.walk.world import IPAddress, NetnsView
from shared.codes import finding
from shared.schemas import FinalState, Packet, StepAction, StepKind

# scheduler → (weights decide the share, how the choice is made): the walk cannot know connection
# counts or hash outcomes, so every real server the scheduler may pick is a branch, stated
SCHEDULERS: dict[str, tuple[bool, str]] = {
    "rr": (False, "round robin: each real server in turn"),
    "wrr": (True, "weighted round robin: shares follow the weights"),
    "lc": (False, "least connection: the pick depends on active connections (equal load assumed)"),
    "wlc": (True, "weighted least connection: the pick depends on active connections (equal load assumed, "
                  "shares follow the weights)"),
    "sed": (True, "shortest expected delay: depends on active connections (equal load assumed)"),
    "nq": (False, "never queue: depends on active connections (equal load assumed)"),
    "sh": (True, "source hashing: one real server per client address (which one is not known)"),
    "dh": (True, "destination hashing: one real server per destination (which one is not known)"),
    "mh": (True, "maglev hashing: one real server per flow (which one is not known)"),
    "lblc": (True, "locality-based least connection: depends on load (equal load assumed)"),
    "lblcr": (True, "locality-based least connection with replication (equal load assumed)"),
}


@dataclass(frozen=True)
class RealServer:
    address: IPAddress
    port: int
    weight: int
    forward: str  # masq, route, tunnel, local, bypass

    @property
    def endpoint(self) -> str:
        return endpoint(self.address, self.port)


@dataclass(frozen=True)
class VirtualServer:
    protocol: str  # tcp, udp, sctp, fwmark
    address: IPAddress | None
    port: int | None
    fwmark: int | None
    scheduler: str
    persistent_s: int | None
    reals: tuple[RealServer, ...]

    @classmethod
    def from_dump(cls, entry: dict[str, Any]) -> VirtualServer:
        reals = tuple(RealServer(ipaddress.ip_address(r["address"]), int(r.get("port") or 0),
                                 int(r.get("weight", 1)), str(r.get("forward", "masq")))
                      for r in entry.get("reals", []))
        addr = entry.get("address")
        return cls(str(entry.get("protocol", "tcp")), ipaddress.ip_address(addr) if addr else None,
                   entry.get("port"), entry.get("fwmark"), str(entry.get("scheduler", "wlc")),
                   entry.get("persistent_s"), reals)

    @property
    def text(self) -> str:
        if self.fwmark or self.address is None:  # ipvsadm keys a virtual server by fwmark or by address
            return f"fwmark {self.fwmark or 0:#x} ({self.scheduler})"
        key = f"{self.protocol} {endpoint(self.address, self.port)}"
        return f"{key} ({self.scheduler})"

    def shares(self) -> list[tuple[RealServer, float]]:
        """Each real server the scheduler may pick, with its share. Weight 0 is quiesced (never picked);
        `fo`/`ovf` send everything to the highest weight."""
        live = [r for r in self.reals if r.weight > 0]
        if not live:
            return []
        if self.scheduler in ("fo", "ovf"):
            top = max(r.weight for r in live)
            live = [r for r in live if r.weight == top][:1]
        weighted = SCHEDULERS.get(self.scheduler, (True, ""))[0]
        total = sum(r.weight for r in live) if weighted else len(live)
        return [(r, (r.weight if weighted else 1) / total) for r in live]


def virtual_servers(view: NetnsView) -> list[VirtualServer]:
    return [VirtualServer.from_dump(e) for e in view.dump.netfilter.ipvs]


def find(servers: list[VirtualServer], protocol: str, dst: IPAddress, dport: int | None,
         mark: int) -> VirtualServer | None:
    """ip_vs_service_find's order: fwmark services first, then protocol/address/port, then a
    persistent port-zero service on the address."""
    if mark:
        hit = next((s for s in servers if s.fwmark and s.fwmark == mark), None)
        if hit is not None:
            return hit
    for port in (dport, 0):
        hit = next((s for s in servers if not s.fwmark and s.protocol == protocol and s.address == dst
                    and s.port == port), None)
        if hit is not None:
            return hit
    return None


def mode_note(w: Walk, view: NetnsView) -> str:
    """Which kube-proxy mode the cluster says it runs, against what the node holds."""
    mode = w.report.cluster.kube_proxy_mode
    n = len(view.dump.netfilter.ipvs)
    held = f"{view.where} holds {n} IPVS virtual server(s)"
    if mode == "ipvs":
        return f"kube-proxy runs in ipvs mode; {held}" + ("" if n else " (none: kube-proxy has not programmed "
                                                                        "this node, or its IPVS state was not read)")
    if mode in ("iptables", "nftables"):
        return f"kube-proxy runs in {mode} mode" + (f"; yet {held}" if n else "")
    return "kube-proxy's mode is unknown" + (f"; {held} (ipvs mode)" if n else "")


class IpvsWalk(Walk, Protocol):
    """What IPVS may do to the walk besides ending a branch: forward to a real server, name the Service."""

    def ipvs_forwarded(self, c: Cursor, view: NetnsView) -> list[Cursor]: ...

    def service_address(self, addr: IPAddress, port: int | None) -> bool: ...

    def service_vip(self, st: FlowState) -> bool: ...

    def service_step(self, trail: Trail, view: NetnsView, detail: str, before: Packet, after: Packet,
                     **info: Any) -> None: ...

    def service_drop(self, c: Cursor, view: NetnsView, code: str, detail: str) -> list: ...

    def no_endpoint(self, c: Cursor, view: NetnsView, detail: str) -> list: ...


class Ipvs:
    def __init__(self, walker: IpvsWalk) -> None:
        self.w = walker

    def take(self, c: Cursor, view: NetnsView, hook: str) -> list[Cursor] | None:
        """The branches IPVS forwards a locally addressed packet to, or None when no virtual server owns
        it (the packet is delivered to a socket as usual)."""
        st = c.st
        if self.w.reply or not view.is_host or view.place in c.trail.ipvs_done:
            return None
        if self.w.blind(c, view, ("ipvs",), "the IPVS virtual servers"):
            return []
        vs = find(virtual_servers(view), st.protocol, st.dst, st.dport, st.mark)
        if vs is None:
            return None
        c.trail.ipvs_done.add(view.place)
        expected = self._cross_check(c, view, vs)
        shares = vs.shares()
        if not shares:
            return self._no_real_server(c, view, vs, expected)
        how = SCHEDULERS.get(vs.scheduler, (True, f"scheduler {vs.scheduler} (shares by weight assumed)"))[1]
        c.trail.assume(f"IPVS {vs.text} on {view.node}: {how}", could_change=False)  # every real server is a branch
        if vs.persistent_s:
            c.trail.assume(f"IPVS {vs.text} is persistent ({vs.persistent_s}s): a client that connected before "
                           "returns to the same real server; a new client is scheduled as stated", could_change=False)
        out: list[Cursor] = []
        for i, (real, share) in enumerate(shares):
            ci = c if i == len(shares) - 1 else c.fork()
            hop = ci.trail.hop(view)
            before = packet(ci.st, ci.st.iif, ci.st.oif)
            stale = expected is not None and real.endpoint not in expected
            note = " — not a ready endpoint of the Service (stale)" if stale else ""
            detail = (f"IPVS on {view.node} ({hook}) schedules {vs.text} → {real.endpoint} (weight {real.weight}, "
                      f"share {share:.2f}, forwarding {real.forward}){note}")
            if real.forward != "masq":
                ci.trail.step(hop, StepKind.SERVICE, StepAction.ABORT, detail, before, virtual_server=vs.text,
                              real_server=real.endpoint, forwarding=real.forward)
                ci.trail.assume(f"IPVS forwarding method {real.forward} (real server {real.endpoint}) is not "
                                "simulated: only masquerading (kube-proxy's) is", could_change=True)
                self.w.finish(ci, FinalState.ABORT)
                continue
            ci.trail.probability *= share
            orig = (ci.st.dst, ci.st.dport)
            ci.st.dst, ci.st.dport = real.address, real.port or ci.st.dport
            ci.st.ct_dnat = True
            after = packet(ci.st, ci.st.iif, ci.st.oif)
            ci.trail.nat.append(NatEntry(view.place, "DNAT", endpoint(*orig), real.endpoint, orig,
                                         (real.address, ci.st.dport)))
            ci.trail.step(hop, StepKind.NAT, StepAction.REWRITE, f"IPVS masquerading: {endpoint(*orig)} → "
                          f"{real.endpoint}", before, after, type="DNAT", original=endpoint_info(orig),
                          translated=endpoint_info((real.address, ci.st.dport)), virtual_server=vs.text)
            if self.w.report.service and self.w.service_address(orig[0], orig[1]):
                self.w.service_step(ci.trail, view, detail, before, after, virtual_server=vs.text,
                                    real_server=real.endpoint, forwarding=real.forward, probability=share)
            ci.port_in = None  # IPVS sends from the node's stack: no hairpin through the bridge port
            out.extend(self.w.ipvs_forwarded(ci, view))
        return out

    def _cross_check(self, c: Cursor, view: NetnsView, vs: VirtualServer) -> set[str] | None:
        """Real servers against the Service's ready endpoints (None: this virtual server is not the
        diagnosed Service's)."""
        w, res = self.w, self.w.report.service
        if res is None or vs.address is None or not w.service_address(vs.address, vs.port):
            return None
        external = vs.address not in res.cluster_ips
        local_only = res.external_traffic_policy == "Local" if external else res.internal_traffic_policy == "Local"
        expected = {endpoint(b.address, b.port) for b in res.backends
                    if b.ready and b.port is not None and (not local_only or b.node == view.node)}
        actual = {r.endpoint for r in vs.reals if r.weight > 0}
        if expected != actual:
            missing, stale = sorted(expected - actual), sorted(actual - expected)
            found = finding("IPVS_BACKEND_MISMATCH", view.hop_id, vip=vs.text, node=view.node,
                            actual=", ".join(sorted(actual)) or "none", expected=", ".join(sorted(expected)) or "none",
                            evidence={"missing": missing, "stale": stale, "mode": mode_note(w, view),
                                      "quiesced": [r.endpoint for r in vs.reals if r.weight == 0]})
            if found not in c.trail.findings:
                c.trail.findings.append(found)
        return expected

    def _no_real_server(self, c: Cursor, view: NetnsView, vs: VirtualServer, expected: set[str] | None) -> list:
        """No real server to pick: IPVS answers ICMP port unreachable and drops the packet."""
        res = self.w.report.service
        if expected is not None and not expected and res is not None and any(b.ready for b in res.backends):
            return self.w.service_drop(c, view, "NO_LOCAL_ENDPOINT", f"IPVS {vs.text} has no real server: the "
                                       "traffic policy is Local and no ready endpoint runs here")
        if expected is not None and not expected:
            return self.w.no_endpoint(c, view, f"IPVS {vs.text} has no real server (ICMP port unreachable)")
        c.trail.step(c.trail.hop(view), StepKind.SERVICE, StepAction.DROP, f"IPVS {vs.text} on {view.node} has no "
                     "real server with a weight: it answers ICMP port unreachable", packet(c.st, c.st.iif),
                     virtual_server=vs.text)
        found = next((f for f in c.trail.findings if f.code == "IPVS_BACKEND_MISMATCH"), None) or finding(
            "IPVS_BACKEND_MISMATCH", view.hop_id, vip=vs.text, node=view.node, actual="none",
            expected="unknown (not the diagnosed Service)")
        return self.w.finish(c, FinalState.DROP, found.code, found)

    def unserved(self, c: Cursor, view: NetnsView) -> bool:
        """A Service address local to the node (kube-ipvs0) that no virtual server owns: the node's own
        sockets get the packet, if any listens; either way kube-proxy has not programmed the Service.
        Returns True when the packet was dropped here."""
        w, st = self.w, c.st
        if w.reply or not view.is_host or not w.service_vip(st) or any(n.rewrites_destination for n in c.trail.nat):
            return False
        res = w.report.service
        what = f"Service {res.service if res else '?'} {endpoint(st.dst, st.dport)}/{st.protocol} " \
               "(no IPVS virtual server)"
        found = finding("KUBE_PROXY_RULES_MISSING", view.hop_id, node=view.node, what=what,
                        evidence={"detail": f"{st.dst} is local to {view.where} but no IPVS virtual server owns "
                                  f"{endpoint(st.dst, st.dport)}/{st.protocol}", "mode": mode_note(w, view)})
        if found not in c.trail.findings:
            c.trail.findings.append(found)
        if matching_socket(view.dump.sockets, st) is not None:
            return False  # a node process answers instead of the Service's endpoints: delivered, with the finding
        c.trail.step(c.trail.hop(view), StepKind.SERVICE, StepAction.DROP, f"{what}: nothing owns it on "
                     f"{view.node}; {mode_note(w, view)}", packet(st, st.iif), service=res.service if res else None,
                     finding=found.code)
        w.finish(c, FinalState.DROP, found.code, found)
        return True
