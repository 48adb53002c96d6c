"""`netdiag lab demo`: the main job. Builds the basic lab, then diagnoses one healthy and one
broken path through the full embedded stack (the product's CLI, the lab's Kubernetes API,
real node agents), printing the kernel's own probe next to each diagnosis and, as root, the
product's live witness inside it (`--live`: the agents' probe and their kernel drop tracing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab.dataplane import Lab
from lab.scenario import Scenario, resolve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCENARIO = EXAMPLES / "lab" / "basic.yaml"
SNAPSHOT = EXAMPLES / "snapshots" / "shop"


@dataclass(frozen=True)
class Case:
    title: str
    src: str  # lab reference for the probe (ns/pod)
    dst: str  # IP
    port: int
    protocol: str


CASES = (
    Case("healthy: web/client → Service shop/api (ClusterIP) port 80/tcp", "web/client", "10.96.0.100", 80, "tcp"),
    Case("broken: web/client → pod shop/db port 5432/tcp (policy db-only-from-api admits only app=api)",
         "web/client", "10.244.2.3", 5432, "tcp"),
)


def _netdiag(*argv: str) -> int:
    """The product, through its public CLI."""
    return subprocess.call([sys.executable, "-m", "services.cli", *argv])


def run_snapshot_demo() -> int:
    print("netdiag demo: not root, so no network-namespace lab; diagnosing the bundled snapshot "
          f"{SNAPSHOT.relative_to(EXAMPLES.parent)} instead\n", flush=True)
    rc = 0
    for case in CASES:
        print(f"== {case.title}", flush=True)
        rc = max(rc, _netdiag("diagnose", "--snapshot", str(SNAPSHOT), "--src", "10.244.1.2", "--dst", case.dst,
                              "--port", str(case.port), "--protocol", case.protocol))
        print(flush=True)
    return 0 if rc < 3 else rc


def run_demo() -> int:
    if os.geteuid() != 0:
        return run_snapshot_demo()
    lab = Lab.up(resolve(Scenario.load(SCENARIO)), scenario_path=SCENARIO)
    try:
        api = lab.start_api()
        st = lab.state
        print(f"lab {st.prefix}: {len(st.nodes)} nodes, {len(st.pods)} pods, Kubernetes API "
              f"http://{api.host}:{api.port}\n", flush=True)
        agents = [a for name, node in st.nodes.items() for a in ("--agent", f"{name}={node.netns}")]
        failures = 0
        for case in CASES:
            print(f"== {case.title}", flush=True)
            probe = lab.probe(case.src, case.dst, case.port, case.protocol, timeout=1.0)
            print(f"kernel probe: {probe.outcome} ({probe.detail})", flush=True)
            rc = _netdiag("diagnose", "--kubeconfig", str(api.kubeconfig), *agents, "--src",
                          lab.source_address(case.src), "--dst", case.dst, "--port", str(case.port),
                          "--protocol", case.protocol, "--live")
            failures += rc >= 3
            print(flush=True)
        return 1 if failures else 0
    finally:
        lab.down()
