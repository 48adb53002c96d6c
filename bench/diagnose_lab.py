"""End-to-end diagnosis latency on the lab examples, collection included (issue 7's target: p50 < 1 s).

    sudo .venv/bin/python bench/diagnose_lab.py [--runs 20]

Brings up examples/lab/basic.yaml (then calico.yaml and terway.yaml, compared with basic), its
Kubernetes API and one node agent per lab node, then runs
diagnoses through the full embedded stack (gateway → topology → collector → cloud → simulator) and
prints p50/p95 per request kind, the stage timings of the last run, and the dataplane walk alone on
the recorded dumps (tests/simulator/dataplane/fixtures/walk/).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `lab` is the package, not bench/lab.py

from bench.labstack import lab_stack, timed
from lab.dataplane import Lab, new_prefix
from lab.scenario import Scenario, resolve
from services.simulator.dataplane.walk import walk
from shared.netstack import NodeDump
from shared.schemas import DiagnosisRequest
from shared.topology import TopologyReport

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "simulator" / "dataplane" / "fixtures" / "walk"
REQUESTS = {
    "pod → pod (cross node)": ("pod:web/client", "pod:shop/api-2", 8080, "tcp"),
    "pod → ClusterIP (2 endpoints)": ("pod:web/client", "svc:shop/api", 80, "tcp"),
    "pod → kube-dns udp": ("pod:web/client", "svc:kube-system/kube-dns", 53, "udp"),
}
# the plug-in examples (calico.yaml, terway.yaml) name their client shop/client; same requests otherwise
PLUGIN_SCENARIOS = ("calico", "terway")


async def end_to_end(runs: int, scenario: str = "basic") -> dict[str, float]:
    """p50 per request kind on one example scenario."""
    lab = Lab.up(resolve(Scenario.load(ROOT / "examples" / "lab" / f"{scenario}.yaml")), prefix=new_prefix())
    client = "pod:web/client" if scenario == "basic" else "pod:shop/client"
    p50: dict[str, float] = {}
    print(f"-- {scenario} (cni {lab.resolved.scenario.cni})")
    try:
        async with lab_stack(lab) as stack, aiohttp.ClientSession() as session:
            for label, (_, dst, port, proto) in REQUESTS.items():
                body = {"src": lab.address(client), "dst": lab.address(dst), "port": port, "protocol": proto}
                await timed(session, stack.url, body)  # warm-up: the topology's watch cache fills
                times: list[float] = []
                last: dict[str, Any] = {}
                for _ in range(runs):
                    ms, last = await timed(session, stack.url, body)
                    times.append(ms)
                times.sort()
                p50[label] = statistics.median(times)
                p95 = times[max(0, int(len(times) * 0.95) - 1)]
                print(f"{label:34s} p50 {statistics.median(times):7.1f} ms  p95 {p95:7.1f} ms  "
                      f"verdict {last['result']['verdict']}")
                stages = ", ".join(f"{k} {v:.0f}" for k, v in last.get("timings_ms", {}).items())
                print(f"{'':34s} stages (ms): {stages}")
    finally:
        lab.down()
    return p50


async def all_scenarios(runs: int) -> None:
    """basic (flannel host-gw) and the plug-in examples in one run; issue 20's target: each within 1.5x."""
    base = await end_to_end(runs)
    for scenario in PLUGIN_SCENARIOS:
        got = await end_to_end(runs, scenario)
        ratios = ", ".join(f"{label.split(' (')[0]} {got[label] / base[label]:.2f}x" for label in got)
        print(f"{'':34s} p50 vs basic: {ratios}")


def walk_only(runs: int) -> None:
    dumps = {n: NodeDump.model_validate_json(gzip.decompress((FIXTURES / f"basic-{n}.json.gz").read_bytes()))
             for n in ("node-1", "node-2")}
    for name, port in (("pod-cross-node", 8080), ("clusterip", 80)):
        report = TopologyReport.model_validate_json((FIXTURES / f"basic-{name}.topology.json").read_text())
        request = DiagnosisRequest(src=report.src.address, dst=report.dst.address, port=port, protocol="tcp")
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            walk(report, request, dumps)  # cold: parses every namespace's rules again, as a diagnosis does
            times.append((time.perf_counter() - started) * 1000)
        print(f"walk only, {name:16s} p50 {statistics.median(times):6.2f} ms (forward + reply, rules parsed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    walk_only(args.runs)
    asyncio.run(all_scenarios(args.runs))


if __name__ == "__main__":
    main()
