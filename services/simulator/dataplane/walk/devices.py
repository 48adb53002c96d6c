"""What a packet meets on a device besides netfilter and routing: XDP and tc on the way in, tc and
the root qdisc on the way out, the STP state of bridge ports, and BPF programs on the cgroups of
the sockets at either end.

Evaluated exactly where the semantics are simple (net/sched, net/core/dev.c): a `blackhole` qdisc
drops every packet; a u32 filter with plain keys, or a matchall, whose action is a gact/police
verdict; an htb root whose filters send the packet into a class whose leaf qdisc is `blackhole`;
an XDP program that only returns a constant (`r0 = K; exit`); a bridge port that is not
`forwarding`. Everything else on the path — a BPF classifier, flower, mirred, a qdisc we do not
model, state the agent did not read — is a could-change-outcome assumption on that hop (and a
BPF_PROGRAM_ON_PATH warning for BPF), never a silent pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.walk.cursor import Cursor, Walk
from services.simulator.dataplane.walk.trail import packet
from services.simulator.dataplane.walk.world import NetnsView, link_up
from shared.codes import finding
from shared.netstack import Link, TcAction, TcFilter
from shared.schemas import StepAction, StepKind

# qdiscs that never drop a lone probe packet (FIFOs, fair queues, shapers; drops only on overflow)
PASSING_QDISCS = frozenset({"noqueue", "pfifo_fast", "pfifo", "bfifo", "pfifo_head_drop", "mq", "fq", "fq_codel",
                            "fq_pie", "codel", "pie", "sfq", "tbf", "cake", "red", "choke", "sfb", "hhf", "clsact",
                            "ingress", "mqprio", "taprio", "etf", "cbs", "plug"})
XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}


@dataclass
class Verdict:
    """One filter list's decision: drop (with what), pass, or unknown (with why)."""

    kind: str  # "drop", "pass", "unknown", "none" (no filter matched)
    what: str = ""
    classid: str | None = None


def _header(st: FlowState) -> tuple[bytearray, bytearray]:
    """The IPv4 header + ports as u32 keys see them (offsets from the network header, no IP options),
    with a mask of the bytes the walk knows (length, id, ttl, checksum and an ephemeral port do not)."""
    data, known = bytearray(24), bytearray(24)
    data[0], known[0] = 0x45, 0xFF
    known[1] = 0xFF  # tos 0
    data[9], known[9] = _PROTOCOLS.get(st.protocol, 0), 0xFF
    data[12:16], known[12:16] = st.src.packed, b"\xff" * 4
    data[16:20], known[16:20] = st.dst.packed, b"\xff" * 4
    if st.protocol in ("tcp", "udp"):
        if st.sport is not None:
            data[20:22], known[20:22] = st.sport.to_bytes(2, "big"), b"\xff\xff"
        if st.dport is not None:
            data[22:24], known[22:24] = st.dport.to_bytes(2, "big"), b"\xff\xff"
    return data, known


def u32_match(f: TcFilter, st: FlowState) -> bool | None:
    """u32 keys against the packet: True, False, or None when a key reads what the walk does not know."""
    if f.link or st.dst.version != 4:
        return None
    data, known = _header(st)
    unknown = False
    for key in f.keys:
        try:
            value, mask, off = int(str(key["value"]), 16), int(str(key["mask"]), 16), int(key["off"])
        except (KeyError, ValueError):
            return None
        if key.get("offmask") or off < 0 or off + 4 > len(data):
            return None
        word = int.from_bytes(data[off:off + 4], "big")
        sure = int.from_bytes(known[off:off + 4], "big")
        if (word ^ value) & mask & sure:
            return False  # a known bit differs: this key fails whatever the unknown bytes hold
        if mask & ~sure:
            unknown = True
    return None if unknown else True


def _protocol_matches(f: TcFilter, st: FlowState) -> bool:
    proto = f.protocol.lower()
    return proto in ("all", "any") or (proto == "ip" and st.dst.version == 4) or (proto == "ipv6" and
                                                                                   st.dst.version == 6)


def _actions(f: TcFilter, actions: list[TcAction]) -> Verdict:
    """tcf_action_exec: actions in order; gact's verdict ends it, `pipe` goes on to the next."""
    name = f"{f.kind} filter pref {f.pref}" + (f" handle {f.handle}" if f.handle else "")
    for a in actions:
        control = [c.lower() for c in a.control]
        if a.kind == "gact" and control:
            if control[0] in ("drop", "shot"):
                return Verdict("drop", f"{name} (action gact drop)")
            if control[0] in ("pass", "ok"):
                return Verdict("pass", name)
            if control[0] == "pipe":
                continue
            return Verdict("unknown", f"{name}: gact {control[0]} (not modelled)")
        if a.kind == "police":
            # print_police: the exceed action, then the conform one only when set (TCA_POLICE_RESULT,
            # default 0 = TC_ACT_OK)
            exceed, conform = (control[0] if control else "?"), (control[1] if len(control) > 1 else "ok")
            if conform in ("drop", "shot"):
                return Verdict("drop", f"{name} (action police: conforming packets are dropped)")
            if exceed in ("drop", "shot") and conform in ("pipe", "ok", "pass", "continue"):
                # a rate limit drops only traffic beyond its rate: one connection's handshake conforms
                if conform in ("ok", "pass"):
                    return Verdict("pass", f"{name} (police: within its rate)")
                continue
            return Verdict("unknown", f"{name}: police {'/'.join(control) or '?'} (not modelled)")
        return Verdict("unknown", f"{name}: action {a.kind} (not modelled)")
    return Verdict("pass", name, f.classid)


def classify(filters: list[TcFilter], st: FlowState) -> Verdict:
    """The filters of one block in priority order; the first that matches decides (tcf_classify)."""
    for f in sorted((f for f in filters if f.chain == 0), key=lambda f: f.pref):
        if not _protocol_matches(f, st):
            continue
        name = f"{f.kind} filter pref {f.pref}"
        if f.kind == "bpf":
            prog = f.bpf or {}
            return Verdict("unknown", f"BPF program {prog.get('name') or '?'} (id {prog.get('id', '?')}) as {name}")
        if f.kind == "u32":
            hit = u32_match(f, st)
        elif f.kind == "matchall":
            hit = True
        else:
            return Verdict("unknown", f"{name} (classifier {f.kind} is not modelled)")
        if hit is None:
            return Verdict("unknown", f"{name}: its keys read header fields the walk does not know")
        if hit:
            verdict = _actions(f, f.actions)
            if verdict.kind == "pass" and not f.actions:
                verdict.classid = f.classid
            return verdict
    return Verdict("none")


class DeviceHooks:
    def __init__(self, walker: Walk) -> None:
        self.w = walker

    # ------------------------------------------------------------ helpers

    def _unread(self, c: Cursor, view: NetnsView, what: str) -> None:
        c.trail.assume(f"{what} of {view.where} were not read (an older agent): anything attached there could "
                       "drop the packet", could_change=True)

    def _unknown(self, c: Cursor, view: NetnsView, dev: str, direction: str, what: str) -> None:
        self._not_evaluated(c, view, dev, f"tc {direction}", what, program=what if "BPF program" in what else None)

    def _not_evaluated(self, c: Cursor, view: NetnsView, dev: str, hook: str, what: str, *, program: str | None,
                       could: str = "drop or redirect") -> None:
        """`what` attached at `hook` on `dev` is not modelled: an INFO step and a could-change assumption,
        and a BPF `program` there is a finding of its own."""
        if program is not None:
            found = finding("BPF_PROGRAM_ON_PATH", view.hop_id, hook=hook, program=program,
                            where=f"{dev} in {view.where}")
            if found not in c.trail.findings:
                c.trail.findings.append(found)
        c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.INFO, f"{hook} on {dev}: {what} — not evaluated",
                     packet(c.st, c.st.iif, c.st.oif), device=dev)
        c.trail.assume(f"{hook} on {dev} in {view.where}: {what} is not evaluated; it could {could} the packet",
                       could_change=True)

    def _tc_drop(self, c: Cursor, view: NetnsView, dev: str, direction: str, what: str) -> bool:
        found = finding("TC_DROP", view.hop_id, device=dev, direction=direction, where=view.where, filter=what)
        self.w.drop(c, found, view, f"tc {direction} on {dev}: {what} drops the packet", device=dev)
        return False

    def _block(self, c: Cursor, view: NetnsView, dev: str, parent: str) -> bool:
        """One filter block (clsact ingress/egress). False: the packet was dropped."""
        if view.dump.tc is None:
            self._unread(c, view, "the tc qdiscs and filters")
            return True
        filters = [f for f in view.dump.tc.filters if f.dev == dev and f.parent == parent]
        if not filters:
            return True
        verdict = classify(filters, c.st)
        if verdict.kind == "drop":
            return self._tc_drop(c, view, dev, parent, verdict.what)
        if verdict.kind == "unknown":
            self._unknown(c, view, dev, parent, verdict.what)
        return True

    # ------------------------------------------------------------ the hooks

    @staticmethod
    def _hooked(view: NetnsView, dev: str) -> bool:
        """A device whose hooks are modelled: one the dump lists, not loopback."""
        link = view.links.get(dev)
        return link is not None and link.kind != "loopback"

    def ingress(self, c: Cursor, view: NetnsView, dev: str) -> bool:
        """A packet received on `dev`: XDP, then tc ingress (netif_receive_skb). False: dropped."""
        if not self._hooked(view, dev):
            return True
        if view.dump.xdp is None:
            self._unread(c, view, "the XDP programs")
        else:
            for prog in (p for p in view.dump.xdp if p.dev == dev):
                if not self._xdp(c, view, prog):
                    return False
        return self._block(c, view, dev, "ingress")

    def _xdp(self, c: Cursor, view: NetnsView, prog: object) -> bool:
        name = f"{getattr(prog, 'name', None) or '?'} (id {getattr(prog, 'prog_id', '?')}, " \
               f"{getattr(prog, 'mode', '?')} mode)"
        dev = getattr(prog, "dev", "?")
        constant = getattr(prog, "constant", None)
        action = XDP_ACTIONS.get(constant if isinstance(constant, int) else -1)
        if action in ("XDP_DROP", "XDP_ABORTED"):
            found = finding("XDP_DROP", view.hop_id, program=name, device=dev, where=view.where,
                            evidence={"action": action})
            self.w.drop(c, found, view, f"XDP program {name} on {dev} returns {action}", device=dev)
            return False
        if action == "XDP_PASS":
            c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.INFO, f"XDP program {name} on {dev} "
                         "returns XDP_PASS", packet(c.st, c.st.iif), device=dev)
            return True
        self._not_evaluated(c, view, dev, "XDP", f"program {name}", program=name, could="drop, redirect or rewrite")
        return True

    def egress(self, c: Cursor, view: NetnsView, dev: str) -> bool:
        """A packet sent out of `dev`: tc egress (clsact), then the root qdisc. False: dropped."""
        if not self._hooked(view, dev):
            return True
        if not self._block(c, view, dev, "egress"):
            return False
        tc = view.dump.tc  # None: not read, which the block stated
        root = None if tc is None else next((q for q in tc.qdiscs if q.dev == dev and q.parent == "root"), None)
        if root is None or root.kind in PASSING_QDISCS:
            return True
        if root.kind == "blackhole":
            return self._tc_drop(c, view, dev, "egress", f"root qdisc blackhole {root.handle}")
        if root.kind == "htb":
            return self._htb(c, view, dev, root.handle, str(root.options.get("default", "")))
        self._unknown(c, view, dev, "egress", f"root qdisc {root.kind} {root.handle} (not modelled)")
        return True

    def _htb(self, c: Cursor, view: NetnsView, dev: str, handle: str, default: str) -> bool:
        """htb_classify: the root's filters pick a class (else the default class); its leaf qdisc decides."""
        assert view.dump.tc is not None
        verdict = classify([f for f in view.dump.tc.filters if f.dev == dev and f.parent == handle], c.st)
        if verdict.kind == "drop":
            return self._tc_drop(c, view, dev, "egress", verdict.what)
        if verdict.kind == "unknown":
            self._unknown(c, view, dev, "egress", verdict.what)
            return True
        classid = verdict.classid if verdict.kind == "pass" and verdict.classid else default
        leaf = next((q for q in view.dump.tc.qdiscs if q.dev == dev and q.parent == classid), None)
        via = f"{verdict.what} → class {classid}" if verdict.kind == "pass" else f"htb default class {classid}"
        if leaf is not None and leaf.kind == "blackhole":
            return self._tc_drop(c, view, dev, "egress", f"{via}, whose qdisc is blackhole {leaf.handle}")
        if leaf is not None and leaf.kind not in PASSING_QDISCS:
            self._unknown(c, view, dev, "egress", f"{via}: leaf qdisc {leaf.kind} (not modelled)")
        return True

    # ------------------------------------------------------------ bridge ports

    def port_forwards(self, c: Cursor, view: NetnsView, bridge: Link, port: Link, direction: str) -> bool:
        """br_handle_frame / should_deliver: a port passes frames only in the forwarding state. With VLAN
        filtering on, the port's VLAN membership also decides (br_allowed_ingress/egress): not read, declared."""
        if bridge.vlan_filtering is not False:
            state = "on" if bridge.vlan_filtering else "not read (an older agent)"
            c.trail.assume(f"VLAN filtering of bridge {bridge.name} in {view.where} is {state}: the ports' VLAN "
                           "membership is not read, and a frame outside a port's VLANs is dropped", could_change=True)
        if port.bridge_port is None:
            c.trail.assume(f"the STP state of bridge port {port.name} of {bridge.name} in {view.where} was not read "
                           "(an older agent): a port that is not forwarding drops every frame", could_change=True)
            return True
        state = port.bridge_port.state
        if state == "forwarding":
            return True
        if state == "disabled" and not link_up(port):
            return True  # the bridge disables a port whose link lost carrier: LINK_DOWN is the cause, named next
        found = finding("BRIDGE_PORT_BLOCKED", view.hop_id, port=port.name, bridge=bridge.name, where=view.where,
                        state=state, direction=direction)
        self.w.drop(c, found, view, f"{bridge.name}: port {port.name} is {state}, not forwarding ({direction})",
                    StepKind.BRIDGE, bridge=bridge.name, **({"port_in": port.name} if direction == "frame received"
                                                            else {"port_out": port.name}))
        return False

    # ------------------------------------------------------------ sockets' cgroups

    def cgroups(self, c: Cursor, view: NetnsView, side: str) -> None:
        """The socket at one end of the flow lives in some cgroup of this node: BPF programs attached to
        that cgroup or an ancestor (cgroup_skb, sock_addr) can drop or redirect its traffic. A pod's
        socket is under the kubelet's `kubepods` hierarchy, a node's process somewhere else: programs at
        the root or on the side's own hierarchy are declared as could-change; the others (e.g. systemd's
        IPAddressDeny= filters on its units) act only on their own units' sockets and are noted."""
        node = self.w.world.nodes[view.node].dump
        if node.cgroup_bpf is None:
            c.trail.assume(f"the cgroup BPF programs of node {view.node} were not read: a program attached to the "
                           f"{side}'s cgroup could drop or redirect its traffic", could_change=True)
            return
        pod = not view.is_host
        for prog in node.cgroup_bpf:
            name = f"{prog.name or '?'} (id {prog.prog_id}, {prog.attach_type} on {prog.cgroup})"
            in_pods = "kubepods" in prog.cgroup
            if prog.cgroup != "/" and in_pods != pod:
                c.trail.assume(f"cgroup BPF program {name} on node {view.node} acts on other sockets than the "
                               f"{side}'s ({'pods' if in_pods else 'a node unit'})", could_change=False)
                continue
            found = finding("BPF_PROGRAM_ON_PATH", view.hop_id, hook=f"cgroup {prog.attach_type}", program=name,
                            where=f"node {view.node}")
            if found not in c.trail.findings:
                c.trail.findings.append(found)
            c.trail.assume(f"cgroup BPF program {name} on node {view.node} may act on the {side}'s socket: "
                           "not evaluated", could_change=True)
