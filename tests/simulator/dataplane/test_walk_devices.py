"""tc, XDP, bridge port state and cgroup BPF on the walked path (recorded lab dumps, edited in code):
what is simple is evaluated exactly, the rest — and state an older agent did not read — is a
could-change-outcome assumption, never a silent pass. The lab (tests/lab) checks the same faults
against the kernel."""

from __future__ import annotations

from services.simulator.assemble import overall_verdict
from services.simulator.dataplane.walk import WalkResult
from shared.netstack import BridgePort, CgroupProgram, Link, NetnsDump, TcAction, TcFilter, TcQdisc, TcState, XdpProgram
from shared.schemas import Verdict
from tests.simulator.dataplane.helpers import Case, only_cause

DST_VETH = "veth072872ea"  # node-2's bridge port towards shop/api-2 (10.244.2.2)


def tc(ns: NetnsDump) -> TcState:
    """The namespace's tc state (every recorded dump read it)."""
    assert ns.tc is not None, ns.id
    return ns.tc


def verdict(result: WalkResult) -> Verdict:
    return overall_verdict(result.paths, result.findings, result.assumptions)


def case() -> Case:
    c = Case("basic", "pod-cross-node")
    port = next(lk for lk in c.host("node-2").links if lk.name == DST_VETH)
    assert port.master == "cni0" and port.bridge_port is not None
    return c


def u32(dev: str, parent: str, port: int, *, actions: list[TcAction] | None = None, classid: str | None = None,
        pref: int = 1) -> TcFilter:
    return TcFilter(dev=dev, parent=parent, kind="u32", protocol="ip", pref=pref, classid=classid,
                    keys=[{"value": f"{port:x}", "mask": "ffff", "offmask": "", "off": 20}], actions=actions or [])


def test_blackhole_qdisc_on_the_pods_veth_is_tc_drop() -> None:
    c = case()
    tc(c.host("node-2")).qdiscs.append(TcQdisc(dev=DST_VETH, kind="blackhole", handle="8001:", parent="root"))
    result = c.run()
    only_cause(result, "TC_DROP", "node:node-2")
    found = next(f for f in result.findings if f.code == "TC_DROP")
    assert found.evidence["device"] == DST_VETH and found.evidence["direction"] == "egress"
    assert verdict(result) == Verdict.UNREACHABLE


def test_u32_gact_drop_on_the_ingress_of_the_pods_eth0() -> None:
    c = case()
    pod = c.pod("shop/api-2")
    tc(pod).qdiscs.append(TcQdisc(dev="eth0", kind="clsact", handle="ffff:", parent="ingress"))
    tc(pod).filters.append(u32("eth0", "ingress", 8080, actions=[TcAction(kind="gact", control=["drop"])]))
    result = c.run()
    only_cause(result, "TC_DROP", "pod:shop/api-2")


def test_u32_for_another_port_or_without_an_action_passes() -> None:
    c = case()
    pod = c.pod("shop/api-2")
    tc(pod).filters += [u32("eth0", "ingress", 9999, actions=[TcAction(kind="gact", control=["drop"])]),
                       u32("eth0", "ingress", 8080, classid="1:1", pref=2)]  # clsact: a classid alone passes
    result = c.run()
    assert verdict(result) == Verdict.REACHABLE, [a.text for a in result.assumptions]


def test_htb_class_with_a_blackhole_leaf_drops_only_what_the_u32_filter_sends_there() -> None:
    c = case()
    state = tc(c.host("node-2"))
    state.qdiscs += [TcQdisc(dev=DST_VETH, kind="htb", handle="1:", parent="root", options={"default": "1:10"}),
                  TcQdisc(dev=DST_VETH, kind="blackhole", handle="20:", parent="1:20")]
    state.filters.append(u32(DST_VETH, "1:", 8080, classid="1:20"))
    only_cause(c.run(), "TC_DROP", "node:node-2")
    c.request.port = 8081  # not classified into 1:20: the default class (a fifo) passes it
    result = c.run()
    assert not any(f.code == "TC_DROP" for f in result.findings)


def test_a_bpf_classifier_on_the_path_is_declared_not_passed() -> None:
    c = case()
    tc(c.host("node-2")).filters.append(TcFilter(dev=DST_VETH, parent="egress", kind="bpf", pref=1,
                                                bpf={"id": 7, "name": "cil_to_container"}))
    result = c.run()
    assert verdict(result) == Verdict.UNDETERMINED
    assert any(f.code == "BPF_PROGRAM_ON_PATH" and f.hop == "node:node-2" for f in result.findings)
    assert any("cil_to_container" in a.text and a.could_change_outcome for a in result.assumptions)


def test_xdp_constant_drop_is_xdp_drop_and_other_programs_are_declared() -> None:
    c = case()
    c.pod("shop/api-2").xdp = [XdpProgram(dev="eth0", mode="driver", prog_id=9, name="xdp_drop", constant=1)]
    only_cause(c.run(), "XDP_DROP", "pod:shop/api-2")
    c.pod("shop/api-2").xdp = [XdpProgram(dev="eth0", mode="driver", prog_id=9, name="xdp_lb")]
    result = c.run()
    assert verdict(result) == Verdict.UNDETERMINED
    assert any(f.code == "BPF_PROGRAM_ON_PATH" for f in result.findings)
    c.pod("shop/api-2").xdp = [XdpProgram(dev="eth0", mode="driver", prog_id=9, name="xdp_pass", constant=2)]
    assert verdict(c.run()) == Verdict.REACHABLE


def test_a_disabled_bridge_port_is_bridge_port_blocked() -> None:
    c = case()
    port: Link = next(lk for lk in c.host("node-2").links if lk.name == DST_VETH)
    port.bridge_port = BridgePort(state="disabled")
    result = c.run()
    only_cause(result, "BRIDGE_PORT_BLOCKED", "node:node-2")
    assert next(f for f in result.findings if f.code == "BRIDGE_PORT_BLOCKED").evidence["port"] == DST_VETH


def test_bridge_vlan_filtering_is_declared() -> None:
    c = case()
    next(lk for lk in c.host("node-2").links if lk.name == "cni0").vlan_filtering = True
    result = c.run()
    assert verdict(result) == Verdict.UNDETERMINED
    assert any("VLAN filtering of bridge cni0 in node node-2 is on" in a.text for a in result.assumptions)


def test_cgroup_bpf_programs_on_an_end_node_are_declared() -> None:
    c = case()
    c.dumps["node-2"].cgroup_bpf = [CgroupProgram(cgroup="/kubepods", attach_type="connect4", prog_id=3,
                                                  name="sock4_connect")]
    result = c.run()
    assert verdict(result) == Verdict.UNDETERMINED
    assert any(f.code == "BPF_PROGRAM_ON_PATH" and "sock4_connect" in f.message for f in result.findings)


def test_cgroup_bpf_on_a_systemd_unit_does_not_touch_a_pods_socket() -> None:
    """systemd's IPAddressDeny= filters sit on its units' cgroups: they act on those units' sockets only."""
    c = case()
    c.dumps["node-2"].cgroup_bpf = [CgroupProgram(cgroup="/system.slice/systemd-journald.service",
                                                  attach_type="egress", prog_id=4, name="sd_fw_egress")]
    result = c.run()
    assert verdict(result) == Verdict.REACHABLE
    assert any("sd_fw_egress" in a.text and not a.could_change_outcome for a in result.assumptions)


def test_an_old_dump_without_these_fields_loads_and_is_declared_not_empty() -> None:
    c = case()
    c.host("node-2").tc = None
    c.pod("shop/api-2").xdp = None
    next(lk for lk in c.host("node-2").links if lk.name == DST_VETH).bridge_port = None
    c.dumps["node-1"].cgroup_bpf = None
    result = c.run()
    assert verdict(result) == Verdict.UNDETERMINED
    texts = " | ".join(a.text for a in result.assumptions if a.could_change_outcome)
    for needle in ("tc qdiscs and filters of node node-2", "XDP programs of pod shop/api-2",
                   f"STP state of bridge port {DST_VETH}", "cgroup BPF programs of node node-1"):
        assert needle in texts, texts
