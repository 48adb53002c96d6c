"""The kernel-judged harness: for every fault in lab/faults.py, a real probe and a real diagnosis
through the full embedded stack (live topology against the lab's Kubernetes API, one node agent per
lab node, the collector, the simulator's dataplane walk) must agree, and the diagnosis must name the
injected cause (finding code at the catalogue's hop, on the first abnormal hop of a dropped path).
Healthy scenarios must deliver with no error-severity finding. No forward path lists a hop again unless
the packet came back there (a hairpin).

Each probe and each fault is its own test id (`basic::web/client->svc:shop/api:80/tcp`, `forward_drop`);
the probes of one scenario share one lab and stack. A failure prints the kernel's outcome, the verdict,
and the hops each path walked with the step that decided it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.dataplane import Lab
from lab.faults import CATALOGUE, Fault, ProbeSpec
from lab.scenario import Scenario, resolve
from services.stack import EmbeddedStack
from tests.lab.conftest import MakeLab, example, new_prefix, require_root
from tests.lab.helpers import (
    PROBE_TIMEOUT_S,
    REACHED,
    diagnose,
    errors,
    expected_verdict,
    first_abnormal,
    lab_stack,
    probe,
    probe_id,
    report,
    revisits,
)

pytestmark = pytest.mark.lab

# Faults the walk cannot diagnose yet, with the precise reason (strict: they fail once they pass).
XFAIL: dict[str, str] = {}

Cause = tuple[str, str] | None  # (finding code, hop id) a non-delivering probe must be explained by

# Probes of the unmodified example scenarios beyond the catalogue's: Services (DNAT branches), UDP DNS,
# node → ClusterIP, NodePort and LoadBalancer from outside, pod → internet, externalIPs, and the
# scenarios' own built-in breakage (a policy, a pod without listener, a Service without endpoints).
SCENARIO_PROBES: dict[str, list[tuple[ProbeSpec, Cause]]] = {
    "basic": [
        (ProbeSpec("web/client", "svc:shop/api", 80), None),
        (ProbeSpec("web/client", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("node-1", "svc:shop/api", 80), None),
        (ProbeSpec("shop/api-1", "svc:shop/api", 80), None),
        (ProbeSpec("shop/api-1", "pod:shop/db", 5432), None),
        (ProbeSpec("web/client", "pod:shop/db", 5432), ("NETWORK_POLICY_DENY", "pod:shop/db")),
        (ProbeSpec("node-2", "pod:shop/api-1", 8080), None),
        (ProbeSpec("ext", "node:node-2", 30000), None),
        (ProbeSpec("web/client", "inet", 80), None),
    ],
    "vxlan": [
        (ProbeSpec("app/frontend", "pod:app/backend-2", 9001, "udp"), None),
        (ProbeSpec("app/frontend", "svc:app/backend", 9000), ("SERVICE_PORT_NOT_FOUND", "service:app/backend")),
        (ProbeSpec("ext", "lb:app/frontend", 80), None),
        (ProbeSpec("app/frontend", "svc:app/backend", 80), None),  # DNAT to both remote nodes, vxlan each way
        (ProbeSpec("app/frontend", "svc:app/backend", 9001, "udp"), None),
        (ProbeSpec("node-2", "pod:app/backend-2", 9000), None),  # node → remote pod over the overlay
        (ProbeSpec("app/backend-1", "pod:app/frontend", 8080), None),
    ],
    "legacy": [
        (ProbeSpec("prod/toolbox", "svc:prod/web", 80), None),
        (ProbeSpec("prod/toolbox", "192.0.2.50", 8080), None),
        (ProbeSpec("ext", "lb:prod/web", 80), None),
        (ProbeSpec("ext", "node:node-1", 30000), None),
        # externalTrafficPolicy Local: node-3's only endpoint is not ready, kube-proxy drops there
        (ProbeSpec("ext", "node:node-3", 30000), ("NO_LOCAL_ENDPOINT", "service:prod/web")),
        (ProbeSpec("prod/toolbox", "pod:kube-system/node-exporter", 9100), None),  # hostNetwork destination
        (ProbeSpec("prod/web-1", "pod:kube-system/node-exporter", 9101), ("NO_LISTENER", "node:node-3")),
        (ProbeSpec("prod/toolbox", "pod:prod/web-2", 80, "udp"), ("NO_LISTENER", "pod:prod/web-2")),
        # the internet host is outside loadBalancerSourceRanges: kube-proxy's firewall drops it
        (ProbeSpec("inet", "lb:prod/web", 80), ("LB_SOURCE_RANGE_DENY", "service:prod/web")),
        (ProbeSpec("node-1", "pod:prod/web-2", 80), None),
        (ProbeSpec("prod/toolbox", "pod:prod/broken", 8080), ("NO_LISTENER", "pod:prod/broken")),
        (ProbeSpec("prod/toolbox", "svc:prod/nothing", 80), ("SERVICE_NO_ENDPOINT", "service:prod/nothing")),
    ],
    "nftables": [  # kube-proxy nftables mode: the walk runs iptables and native nft chains in one hook
        (ProbeSpec("default/client", "svc:default/web", 80), None),
        (ProbeSpec("default/client", "svc:default/empty", 80), ("SERVICE_NO_ENDPOINT", "service:default/empty")),
        (ProbeSpec("default/client", "svc:default/web", 53, "udp"), None),
        (ProbeSpec("ext", "node:node-2", 30080), None),
        (ProbeSpec("ext", "node:node-1", 30081), ("SERVICE_NO_ENDPOINT", "service:default/empty")),
        (ProbeSpec("node-2", "svc:default/web", 80), None),
    ],
    "calico": [  # BGP mode, no encapsulation: per-pod /32 routes, proxy ARP for 169.254.1.1, block routes
        (ProbeSpec("shop/client", "pod:shop/api-1", 8080), None),  # same node: cali → host → cali
        (ProbeSpec("shop/client", "pod:shop/api-2", 8080), None),  # cross node: block route via node-2
        (ProbeSpec("shop/client", "pod:shop/api-2", 9090, "udp"), None),
        (ProbeSpec("shop/client", "svc:shop/api", 80), None),
        (ProbeSpec("shop/api-1", "svc:shop/api", 80), None),  # may DNAT back to itself out of its own cali
        (ProbeSpec("shop/client", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("node-2", "pod:shop/api-1", 8080), None),
        (ProbeSpec("node-1", "svc:shop/api", 80), None),
        (ProbeSpec("ext", "node:node-2", 30000), None),
        (ProbeSpec("shop/client", "inet", 80), None),  # IPPool natOutgoing
        # felix drops VXLAN-encapsulated packets from workloads in the client's cali-fw- chain, policy or not
        (ProbeSpec("shop/client", "pod:shop/api-2", 4789, "udp"), ("IPTABLES_DROP", "node:node-1")),
    ],
    "calico-vxlan": [  # IPPool vxlanMode Always: peer blocks via the peer VTEP on vxlan.calico
        (ProbeSpec("shop/client", "pod:shop/api-1", 8080), None),
        (ProbeSpec("shop/client", "pod:shop/api-2", 9090, "udp"), None),
        (ProbeSpec("shop/client", "svc:shop/api", 80), None),
        (ProbeSpec("shop/client", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("node-2", "pod:shop/api-1", 8080), None),
        (ProbeSpec("ext", "node:node-2", 30000), None),
        (ProbeSpec("shop/client", "inet", 80), None),
    ],
    "terway": [  # eniip, veth datapath: policy routing out of the ENI, the VPC delivers to the owning ENI
        (ProbeSpec("shop/client", "pod:shop/api-1", 8080), None),  # same node: the to-pod rule, main table
        (ProbeSpec("shop/client", "pod:shop/api-2", 8080), None),  # cross node: ENI table → VPC → node-2's ENI
        (ProbeSpec("shop/client", "pod:shop/api-2", 9090, "udp"), None),
        (ProbeSpec("shop/client", "svc:shop/api", 80), None),
        (ProbeSpec("shop/api-1", "svc:shop/api", 80), None),
        (ProbeSpec("shop/client", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("node-2", "pod:shop/api-1", 8080), None),  # primary NIC → VPC → node-1's ENI
        (ProbeSpec("node-1", "svc:shop/api", 80), None),
        (ProbeSpec("ext", "node:node-2", 30000), None),
        (ProbeSpec("shop/client", "inet", 80), None),  # no masquerade: the VPC (NAT gateway) answers the pod IP
    ],
    "terway-eni": [  # exclusive ENI: eth0 is the pod's own ENI (pod↔pod and internet straight through the VPC),
        # veth1 to the host for Services and the node, masqueraded there (terway-masq)
        (ProbeSpec("shop/client", "pod:shop/api-1", 8080), None),  # same node, still through the VPC
        (ProbeSpec("shop/client", "pod:shop/api-2", 8080), None),
        (ProbeSpec("shop/client", "pod:shop/api-2", 9090, "udp"), None),
        (ProbeSpec("shop/client", "svc:shop/api", 80), None),  # veth1 → host DNAT → either ENI
        (ProbeSpec("shop/api-2", "svc:shop/api", 80), None),
        (ProbeSpec("shop/client", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("shop/api-2", "svc:kube-system/kube-dns", 53, "tcp"), None),  # DNS on node-1, via node-2
        (ProbeSpec("node-1", "pod:shop/api-1", 8080), None),  # the host route into veth1
        (ProbeSpec("node-2", "pod:shop/api-1", 8080), None),  # primary NIC → VPC → api-1's ENI
        (ProbeSpec("shop/api-1", "node:node-2", 30000), None),  # the pod's ENI → VPC → node-2's primary NIC
        (ProbeSpec("node-1", "svc:shop/api", 80), None),
        (ProbeSpec("ext", "node:node-2", 30000), None),
        (ProbeSpec("shop/client", "inet", 80), None),  # the ENI straight out: the VPC's NAT answers the pod IP
    ],
    "dns-internet": [
        (ProbeSpec("apps/app", "inet", 80), None),
        (ProbeSpec("apps/app", "svc:kube-system/kube-dns", 53, "udp"), None),
        (ProbeSpec("apps/app", "svc:apps/other", 80), ("NETWORK_POLICY_DENY", "pod:apps/app")),
        (ProbeSpec("apps/app", "inet", 443), ("NETWORK_POLICY_DENY", "pod:apps/app")),
    ],
}
for _fault in CATALOGUE:  # every catalogue probe is healthy before its fault (a decoy's may not be)
    _probes = SCENARIO_PROBES.setdefault(_fault.scenario, [])
    if _fault.before in REACHED and (_fault.probe, None) not in _probes:
        _probes.insert(0, (_fault.probe, None))


def _fault_params() -> list[Any]:
    out = []
    for fault in CATALOGUE:
        marks = [pytest.mark.xfail(reason=XFAIL[fault.name], strict=True)] if fault.name in XFAIL else []
        out.append(pytest.param(fault, id=fault.name, marks=marks))
    return out


@pytest.mark.parametrize("fault", _fault_params())
async def test_fault_diagnosis_agrees_with_kernel(fault: Fault, make_lab: MakeLab) -> None:
    """The kernel's outcome before and after the fault is the catalogue's, and the diagnosis agrees with it."""
    lab = make_lab(fault.scenario)
    spec = fault.probe
    assert lab.source_address(spec.src) and lab.address(spec.dst)  # what the diagnosis below uses
    before = await asyncio.to_thread(lab.probe, spec.src, spec.dst, spec.port, spec.protocol)
    assert before.outcome == fault.before, f"healthy lab: {before}"
    async with lab_stack(lab) as stack:
        await asyncio.to_thread(fault.inject, lab)
        seen = await asyncio.to_thread(fault.observe, lab, PROBE_TIMEOUT_S)
        assert seen == fault.outcomes_after, f"the kernel says {seen}, the catalogue {fault.outcomes_after}"
        result = await _diagnosis_after(stack, lab, fault)
        text = report(fault.probe, sorted(seen), result)
        assert not revisits(result), f"{revisits(result)}\n{text}"
        if fault.finding is None:  # a decoy: a correct NAT must not look broken
            assert result["verdict"] == fault.verdict_after == "REACHABLE" and not errors(result), text
            return
        codes = {fault.finding.code, *fault.finding.also}
        named = [f for f in result["findings"] if f["code"] in codes and f["hop"] == fault.finding.hop]
        assert named, f"no {codes} finding at {fault.finding.hop}\n{text}"
        if fault.beyond_the_nodes:  # the kernel fails, the cause lies outside every dump: never a confident answer
            assert fault.after not in REACHED and result["verdict"] == "UNDETERMINED", text
            return
        # a split fault (one ECMP next hop broken): the kernel shows both outcomes, the diagnosis AMBIGUOUS
        verdict = "AMBIGUOUS" if fault.split else expected_verdict(fault.after)
        assert result["verdict"] == verdict == fault.verdict_after, text
        abnormal = first_abnormal(result)
        ends = fault.ends or named[0]["code"]
        assert (fault.finding.hop, ends) in abnormal, f"first abnormal hops {abnormal}\n{text}"


async def _diagnosis_after(stack: EmbeddedStack, lab: Lab, fault: Fault) -> dict[str, Any]:
    """Kubernetes-level faults reach the topology through its watch: retry until it has seen them."""
    result = await diagnose(stack, lab, fault.probe)
    if (fault.not_ready or fault.add_policy) and fault.finding is not None:
        codes = {fault.finding.code, *fault.finding.also}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(f["code"] in codes for f in result["findings"]):
            await asyncio.sleep(0.2)
            result = await diagnose(stack, lab, fault.probe)
    return result


@dataclass
class ScenarioLab:
    lab: Lab
    stack: EmbeddedStack


@pytest.fixture(scope="module")
async def scenario_lab(request: pytest.FixtureRequest) -> AsyncIterator[ScenarioLab]:
    """One unmodified lab and stack per scenario (the indirect parameter), shared by its probes: pytest
    runs a scenario's ids together and tears this down before the next scenario's is built (the last
    one at the module's end, hence the probes after the faults, which build a lab each)."""
    require_root()
    scenario, prefix = request.param, new_prefix()
    path = example(scenario)
    try:
        lab = await asyncio.to_thread(Lab.up, resolve(Scenario.load(path)), prefix=prefix, scenario_path=path)
        async with lab_stack(lab) as stack:
            yield ScenarioLab(lab, stack)
    finally:  # swept by prefix, so a lab whose build failed half-way goes too
        await asyncio.to_thread(Lab.sweep, prefix)


def _probe_params() -> list[Any]:
    return [pytest.param(scenario, spec, cause, id=f"{scenario}::{probe_id(spec)}")
            for scenario in sorted(SCENARIO_PROBES) for spec, cause in SCENARIO_PROBES[scenario]]


@pytest.mark.parametrize(("scenario_lab", "spec", "cause"), _probe_params(), indirect=["scenario_lab"])
async def test_scenario_probes(scenario_lab: ScenarioLab, spec: ProbeSpec, cause: Cause) -> None:
    """The unmodified scenario: what reaches has no error finding, what does not names its cause."""
    outcome = await probe(scenario_lab.lab, spec)
    result = await diagnose(scenario_lab.stack, scenario_lab.lab, spec)
    text = report(spec, outcome, result)
    assert result["verdict"] == expected_verdict(outcome), text
    assert not revisits(result), f"{revisits(result)}\n{text}"
    if cause is None:
        assert outcome in REACHED and not errors(result), text
    else:
        assert outcome not in REACHED, text
        assert any(f["code"] == cause[0] and f["hop"] == cause[1] for f in result["findings"]), text
        assert (cause[1], cause[0]) in first_abnormal(result), text
