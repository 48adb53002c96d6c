"""Live confirmation against the real kernel: real agents (live probes on), real NATS, the lab's
namespaces. A diagnosis with `live: true` carries the probe's outcome and the kernel's drops of that
flow (bpftrace on skb:kfree_skb), mapped to finding codes and hops, and agrees with the simulation —
or, where the model is wrong, follows the kernel and says LIVE_DIVERGES."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from lab.dataplane import Lab
from lab.faults import BY_NAME, CATALOGUE, CLIENT_TO_API2, Fault, ProbeSpec
from services.collector.droptrace import DropTracer
from services.stack import EmbeddedStack
from shared.bus import Bus
from shared.config import Settings
from shared.live import ProbeReply, ProbeRequest, node_probe_subject
from tests.lab.conftest import MakeLab
from tests.lab.test_differential import _src_ref, explain

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
    body = {"src": lab.address(_src_ref(lab, spec.src)), "dst": lab.address(spec.dst), "port": spec.port,
            "protocol": spec.protocol, "options": {"live": True, "live_timeout_s": timeout_s}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/api/v1/diagnoses", json=body) as resp:
            doc = await resp.json()
            assert resp.status == 202, doc
        for _ in range(600):
            async with session.get(f"{stack.url}/api/v1/diagnoses/{doc['id']}") as resp:
                got = await resp.json()
            if got.get("status") in ("completed", "failed"):
                assert got["status"] == "completed", got
                return got["result"]  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
    raise AssertionError("diagnosis did not complete")


def live_text(result: dict[str, Any]) -> str:
    return explain(result) + f"\n  live: {result.get('live')}"


async def test_healthy_probe_agrees_and_sees_no_drop(make_lab: MakeLab) -> None:
    lab = make_lab("basic")
    async with live_stack(lab) as stack:
        result = await diagnose_live(stack, lab, CLIENT_TO_API2_SPEC)
        live = result["live"]
        assert result["verdict"] == "REACHABLE" and live["agreement"] == "agree", live_text(result)
        assert live["probe"]["outcome"] == "connected" and 61000 <= live["probe"]["sport"] <= 61999
        assert live["kernel"] == "REACHABLE"
        assert not [d for d in live["drops"] if d["reason"] != "NOT_SPECIFIED"], live_text(result)


# the kernel's drop for each fault the walk names exactly (reason ↔ code, namespace ↔ hop)
LIVE_FAULTS = ["forward_drop", "tc_blackhole_pod_veth", "tc_u32_to_blackhole_class", "bridge_port_disabled",
               "xdp_drop_pod_eth0", "pod_cidr_route_missing", "rp_filter_asymmetric", "no_listener"]


# faults whose kernel frees nothing the tracer can see: the verdicts still agree
NO_KERNEL_DROP = {
    # the bridge simply does not forward to a non-forwarding port (should_deliver): no skb is freed
    "bridge_port_disabled": "br_forward skips the port",
    # the lab's underlay router drops it: a namespace no node agent owns
    "pod_cidr_route_missing": "dropped beyond the nodes",
}


@pytest.mark.parametrize("name", LIVE_FAULTS)
async def test_fault_kernel_drop_maps_to_the_expected_code_and_hop(name: str, make_lab: MakeLab) -> None:
    fault = BY_NAME[name]
    lab = make_lab(fault.scenario)
    async with live_stack(lab) as stack:
        await asyncio.to_thread(fault.inject, lab)
        result = await diagnose_live(stack, lab, fault.probe)
        text = live_text(result)
        live = result["live"]
        assert result["verdict"] == "UNREACHABLE" and live["agreement"] == "agree", text
        assert live["kernel"] == "UNREACHABLE" and live["probe"]["outcome"] == fault.after, text
        if name in NO_KERNEL_DROP:
            assert not [d for d in live["drops"] if d["codes"]], text
            return
        codes = {fault.finding.code, *fault.finding.also}
        # the flow's own drops first, else the ARP request its path waited on (as the witness orders them)
        ranked = [d for d in live["drops"] if d["codes"] and d["protocol"] != "arp"] or \
            [d for d in live["drops"] if d["codes"]]
        assert ranked, text
        assert codes & set(ranked[0]["codes"]) and ranked[0]["hop"] == fault.finding.hop, text


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
    async with live_stack(lab, probe_rate_per_s=1.0) as stack:
        bus = await Bus.connect(name="probe-test", settings=stack.settings)
        try:
            async def probe(node: str, src: str, **kw: Any) -> ProbeReply:
                req = ProbeRequest(node=node, src=src, dst=lab.address("pod:shop/api-2"), port=8080, protocol="tcp",
                                   **kw)
                msg = await bus.nc.request(node_probe_subject(node), req.model_dump_json().encode(), timeout=10)
                return ProbeReply.model_validate_json(msg.data)

            client = lab.address("pod:web/client")  # on node-1
            foreign = await probe("node-2", client)
            assert not foreign.ok and "neither an address of node node-2" in (foreign.error or ""), foreign
            first = await probe("node-1", client)
            assert first.ok and first.outcome == "connected", first
            limited = [await probe("node-1", client) for _ in range(3)]
            assert any(not r.ok and "rate limited" in (r.error or "") for r in limited), limited
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


def test_catalogue_faults_all_have_a_kernel_outcome() -> None:
    assert set(LIVE_FAULTS) <= {f.name for f in CATALOGUE}
