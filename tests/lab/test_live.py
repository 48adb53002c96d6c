"""Live confirmation against the real kernel: real agents (live probes on), real NATS, the lab's
namespaces. A diagnosis with `live: true` carries the probe's outcome and the kernel's drops of that
flow (bpftrace on skb:kfree_skb), mapped to finding codes and hops, and agrees with the simulation —
or, where the model is wrong, follows the kernel and says LIVE_DIVERGES."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from lab.dataplane import Lab
from lab.faults import BY_NAME, CATALOGUE, CLIENT_TO_API2, Fault, ProbeSpec
from services.collector.droptrace import DropTracer
from services.stack import EmbeddedStack
from shared.bus import Bus
from shared.config import Settings
from shared.live import ProbeReply, ProbeRequest, node_probe_subject
from tests.lab.conftest import MakeLab
from tests.lab.helpers import diagnose, expected_verdict, explain

pytestmark = pytest.mark.lab

CLIENT_TO_API2_SPEC = CLIENT_TO_API2


@pytest.fixture(scope="module", autouse=True)
def tracer() -> Iterator[DropTracer]:
    """One bpftrace for the module (it takes seconds to attach): every stack's agents share it."""
    t = DropTracer.acquire()
    yield t
    t.release()


@asynccontextmanager
async def live_stack(lab: Lab, **settings: Any) -> AsyncIterator[EmbeddedStack]:
    api = await asyncio.to_thread(lab.start_api)
    agents = {name: node.netns for name, node in lab.state.nodes.items()}
    config = Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0, live_probe=True, **settings)
    async with EmbeddedStack(config, agents=agents) as stack:
        for agent in stack.node_agents:
            await agent.tracing_ready()
        yield stack


async def diagnose_live(stack: EmbeddedStack, lab: Lab, spec: ProbeSpec, timeout_s: float = 1.0) -> dict[str, Any]:
    return await diagnose(stack, lab, spec, 30.0, {"live": True, "live_timeout_s": timeout_s})


def live_text(result: dict[str, Any]) -> str:
    live = result.get("live") or {}
    drops = [(d["reason"], d["location"], d["hop"], d["protocol"], d["dst"], d["codes"][:2])
             for d in live.get("drops", [])]
    brief = f"verdict={result['verdict']} live={live.get('agreement')} sim={live.get('simulated')} " \
            f"kernel={live.get('kernel')} probe={(live.get('probe') or {}).get('outcome')} drops={drops}"
    return brief + "\n" + explain(result) + f"\n  live: {live}"


async def test_healthy_probe_agrees_and_sees_no_drop(make_lab: MakeLab) -> None:
    lab = make_lab("basic")
    async with live_stack(lab) as stack:
        result = await diagnose_live(stack, lab, CLIENT_TO_API2_SPEC)
        live = result["live"]
        assert result["verdict"] == "REACHABLE" and live["agreement"] == "agree", live_text(result)
        assert live["probe"]["outcome"] == "connected" and 61000 <= live["probe"]["sport"] <= 61999
        assert live["kernel"] == "REACHABLE"
        assert not [d for d in live["drops"] if d["reason"] != "NOT_SPECIFIED"], live_text(result)


# faults whose kernel frees nothing the tracer can see on a node: the verdicts still agree
NO_KERNEL_DROP = {
    # the bridge simply does not forward to a non-forwarding port (should_deliver): no skb is freed
    "bridge_port_disabled": "br_flood skips the port",
    # the lab's underlay router drops it: a namespace no node agent owns
    "pod_cidr_route_missing": "dropped beyond the nodes",
    # nothing is transmitted over a link that is down; the neighbour never resolves and its queue is
    # released as consumed, not dropped
    "pod_link_down": "link down", "node_uplink_down": "link down", "veth_peer_deleted": "no peer",
    # the outer packets wait for an ARP answer from an address nobody owns
    "vxlan_fdb_wrong": "unresolved VTEP", "calico_vxlan_fdb_wrong": "unresolved VTEP",
    "calico_vxlan_neighbor_missing": "no VTEP neighbour: vxlan_xmit frees the ARP with no reason we map",
    # the reply leaves un-translated and dies at the outside client or the address's owner: no agent there
    "nodeport_reply_untracked": "dropped beyond the nodes", "lb_reply_untracked": "dropped beyond the nodes",
    "snat_to_other_node_address": "the reply goes to the address's owner, which never sent the request",
    # the pod's ARP for 169.254.1.1 is never answered: the frames wait in the neighbour queue
    "calico_proxy_arp_off": "unresolved next hop",
    # the underlay (the lab's VPC router) drops what no node route covers: a namespace no agent owns
    "calico_block_route_missing": "dropped beyond the nodes", "terway_pod_rule_missing": "dropped beyond the nodes",
    "terway_pod_route_missing": "dropped beyond the nodes",
    "calico_workload_forwarding_off": "not forwarded: ip_forward off frees it without a traced reason here",
    "terway_eni_down_destination": "link down", "terway_eni_down_source": "link down",
    "terway_pod_veth_down": "link down",
    "terway_eni_masq_missing": "dropped beyond the nodes", "terway_eni_destination_eni_down": "link down",
}
# where the kernel's first drop is elsewhere than the catalogue's cause, as the kernel sees it
KERNEL_SEES = {
    # the reply bypasses conntrack and reaches the client un-NATed: its kernel has no socket for it
    "bridge_nf_off": ("NO_LISTENER", "pod:web/client"),
    # frames to a MAC nobody has are flooded and dropped by their receivers as addressed to another host
    "stale_static_neighbor": ("NEIGHBOR_FAILED", "node:node-2"),
    # the stale DNAT's target node has no such socket: the kernel refuses where the packet lands
    "stale_dnat_to_uncollected_node": ("NO_LISTENER", "node:node-1"),
    # taking the cali device down deletes its route: the node's own block blackhole route takes over
    "calico_workload_link_down": ("ROUTE_BLACKHOLE", "node:node-2"),
    # a frame to the wrong MAC reaches the node as addressed to another host
    "terway_pod_gateway_neighbor_wrong": ("NEIGHBOR_FAILED", "node:node-1"),
    "terway_eni_host_neighbor_wrong": ("NEIGHBOR_FAILED", "node:node-2"),
    # the host veth's peer (the pod's veth1) is down: the ARP for the pod waits on a carrier-less device and
    # its qdisc frees it
    "terway_eni_pod_veth_down": ("TC_DROP", "node:node-1"),
}


def _kernel_hop_ok(fault: Fault, hop: str | None) -> bool:
    """The namespace the kernel dropped in is the catalogue's hop, or the node that implements it: a
    NetworkPolicy is enforced by its node's rules, a Service by kube-proxy's on the client's node."""
    assert fault.finding is not None, fault
    if hop == fault.finding.hop:
        return True
    virtual = fault.finding.code == "NETWORK_POLICY_DENY" or fault.finding.hop.startswith("service:")
    return virtual and bool(hop) and str(hop).startswith("node:")


@pytest.mark.parametrize("fault", CATALOGUE, ids=[f.name for f in CATALOGUE])
async def test_fault_kernel_drop_maps_to_the_expected_code_and_hop(fault: Fault, make_lab: MakeLab) -> None:
    """The whole catalogue with live: the probe sees the fault's outcome, the result agrees (or, where the
    simulation could not decide, the kernel decides), and the kernel's first drop that names a cause
    names the catalogue's code at its hop."""
    lab = make_lab(fault.scenario)
    async with live_stack(lab) as stack:
        await asyncio.to_thread(fault.inject, lab)
        result = await _live_after(stack, lab, fault)
        text = live_text(result)
        live = result["live"]
        if live["probe"] is None:  # a source outside the nodes (an external client): no agent can probe it
            assert live["notes"] or live["detail"], text  # said, never silent
            return
        assert live["probe"]["outcome"] in fault.outcomes_after, text
        if fault.finding is None:  # a decoy: it must stay healthy, with no drop blamed on anything
            assert result["verdict"] == live["kernel"] and not [d for d in live["drops"] if d["codes"]], text
            return
        if fault.split:
            assert result["verdict"] == "AMBIGUOUS" and live["agreement"] == "agree", text
            return
        assert result["verdict"] == live["kernel"] == expected_verdict(fault.after), text
        assert live["agreement"] == ("kernel_decides" if fault.beyond_the_nodes else "agree"), text
        if fault.name in NO_KERNEL_DROP:
            assert not [d for d in live["drops"] if d["codes"]], text
            return
        ranked = [d for d in live["drops"] if d["codes"] and d["protocol"] != "arp"] or \
            [d for d in live["drops"] if d["codes"]]
        if not ranked:  # answered, not dropped (RST, ICMP from a router): nothing freed with a cause
            assert fault.after in ("refused", "unreachable") or fault.beyond_the_nodes, text
            return
        if fault.name in KERNEL_SEES:
            code, hop = KERNEL_SEES[fault.name]
            assert code in ranked[0]["codes"] and ranked[0]["hop"] == hop, text
            return
        codes = {fault.finding.code, *fault.finding.also}
        assert codes & set(ranked[0]["codes"]) and _kernel_hop_ok(fault, ranked[0]["hop"]), text


async def _live_after(stack: EmbeddedStack, lab: Lab, fault: Fault) -> dict[str, Any]:
    """Kubernetes-level faults reach the topology through its watch: retry until it has seen them."""
    result = await diagnose_live(stack, lab, fault.probe)
    if (fault.not_ready or fault.add_policy) and fault.finding is not None:  # a decoy's policy changes nothing
        codes = {fault.finding.code, *fault.finding.also}
        for _ in range(10):
            if any(f["code"] in codes for f in result["findings"]):
                break
            await asyncio.sleep(1.0)  # also stays under the agent's probe rate limit
            result = await diagnose_live(stack, lab, fault.probe)
    return result


async def test_a_model_gap_is_live_diverges_and_the_verdict_follows_the_kernel(make_lab: MakeLab) -> None:
    """A state the walk does not model: the client's neighbour entry for its gateway holds a MAC no device
    has. The walk follows routes and addresses, not MACs, and delivers; the bridge floods the frame to the
    other pods, whose kernels drop it as addressed to another host (OTHERHOST)."""
    lab = make_lab("basic")
    async with live_stack(lab) as stack:
        gateway = lab.exec("web/client", ["ip", "-4", "route", "show", "default"]).split()[2]
        await asyncio.to_thread(lab.exec, "web/client", ["ip", "neigh", "replace", gateway, "lladdr",
                                                         "02:00:00:00:00:99", "dev", "eth0", "nud", "permanent"])
        result = await diagnose_live(stack, lab, CLIENT_TO_API2_SPEC)
        text = live_text(result)
        live = result["live"]
        assert live["simulated"] == "REACHABLE" and live["kernel"] == "UNREACHABLE", text
        assert live["agreement"] == "diverges" and result["verdict"] == "UNREACHABLE", text
        (div,) = [f for f in result["findings"] if f["code"] == "LIVE_DIVERGES"]
        assert "OTHERHOST" in div["message"] and div["evidence"]["kernel_drop"]["node"] == "node-1", text
        assert "REACHABLE" in div["message"], text


async def test_probe_safety(make_lab: MakeLab) -> None:
    """Only the agent's own sources; rate limit and concurrency cap; a timeout ≤ 5 s."""
    lab = make_lab("basic")
    async with live_stack(lab, probe_rate_per_s=1.0, probe_concurrency=1) as stack:
        bus = await Bus.connect(name="probe-test", settings=stack.settings)
        try:
            async def probe(node: str, src: str, dst: str | None = None, **kw: Any) -> ProbeReply:
                req = ProbeRequest(node=node, src=src, dst=dst or lab.address("pod:shop/api-2"), port=8080,
                                   protocol="tcp", **kw)
                msg = await bus.nc.request(node_probe_subject(node), req.model_dump_json().encode(), timeout=10)
                return ProbeReply.model_validate_json(msg.data)

            client = lab.address("pod:web/client")  # on node-1
            foreign = await probe("node-2", client)
            assert not foreign.ok and "neither an address of node node-2" in (foreign.error or ""), foreign
            first = await probe("node-1", client)
            assert first.ok and first.outcome == "connected", first
            limited = [await probe("node-1", client) for _ in range(3)]
            assert any(not r.ok and "rate limited" in (r.error or "") for r in limited), limited
            await asyncio.sleep(2.5)  # the bucket refills: now two at once meet the concurrency cap of 1
            nobody = lab.address("pod:shop/api-2").rsplit(".", 1)[0] + ".250"  # in node-2's pod CIDR, unowned
            pair = await asyncio.gather(probe("node-1", client, nobody, timeout_s=1.0),
                                        probe("node-1", client, nobody, timeout_s=1.0))
            assert sorted((r.ok, (r.error or "")[:13]) for r in pair) == [(False, "refused: busy"), (True, "")], pair
            ran = next(r for r in pair if r.ok)
            assert ran.outcome in ("timeout", "unreachable") and ran.elapsed_ms < 1500, ran
            with pytest.raises(Exception, match="less than or equal to 5"):
                ProbeRequest(node="node-1", src=client, dst=client, port=1, protocol="tcp", timeout_s=6)
        finally:
            await bus.close()


async def test_a_dropped_probe_times_out_within_its_bound(make_lab: MakeLab) -> None:
    fault: Fault = BY_NAME["forward_drop"]
    lab = make_lab(fault.scenario)
    async with live_stack(lab) as stack:
        await asyncio.to_thread(fault.inject, lab)
        result = await diagnose_live(stack, lab, fault.probe, timeout_s=0.5)
        probe = result["live"]["probe"]
        assert probe["outcome"] == "timeout" and 450 <= probe["elapsed_ms"] <= 1500, probe


async def test_tracing_unavailable_is_a_stated_assumption(make_lab: MakeLab, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.collector import agent as agent_module
    from shared.live import TracingStatus

    lab = make_lab("basic")
    async with live_stack(lab) as stack:
        for a in stack.node_agents:
            monkeypatch.setattr(a, "tracing_status", lambda: TracingStatus(
                available=False, reason="bpftrace is not installed (Debian package bpftrace)"))
        assert agent_module  # the agents answer drops with their (unavailable) status
        result = await diagnose_live(stack, lab, CLIENT_TO_API2_SPEC)
        texts = [a["text"] for a in result["assumptions"]]
        assert any("kernel drop tracing unavailable" in t and "bpftrace is not installed" in t for t in texts), texts
        assert result["live"]["agreement"] == "agree"
