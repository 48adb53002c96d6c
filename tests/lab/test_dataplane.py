"""Healthy labs built from every example scenario, probed for real; lifecycle (two labs, down, crash sweep)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from lab import netns
from lab import state as lab_state
from lab.dataplane import Lab
from tests.lab.conftest import MakeLab, example, new_prefix, require_root

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    src: str
    dst: str
    port: int
    protocol: str
    outcome: str
    dns_name: str | None = None
    detail: str = ""  # substring the probe detail must contain

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}:{self.port}/{self.protocol}={self.outcome}"


BASIC = [
    Case("web/client", "pod:shop/api-1", 8080, "tcp", "connected"),  # same node, bridged
    Case("web/client", "pod:shop/api-2", 8080, "tcp", "connected"),  # cross node, host-gw
    Case("web/client", "svc:shop/api", 80, "tcp", "connected"),
    Case("shop/api-1", "svc:shop/api", 80, "tcp", "connected"),  # may hairpin to itself
    Case("ext", "node:node-1", 30000, "tcp", "connected"),  # NodePort from outside
    Case("ext", "node:node-2", 30000, "tcp", "connected"),
    Case("web/client", "svc:kube-system/kube-dns", 53, "udp", "reply", "api.shop.svc.cluster.local",
         "answers=[10.96.0.100]"),
    Case("web/client", "svc:kube-system/kube-dns", 53, "tcp", "connected", "api.shop.svc.cluster.local",
         "answers=[10.96.0.100]"),
    Case("web/client", "svc:kube-system/kube-dns", 53, "udp", "reply", "nope.shop.svc.cluster.local", "rcode=3"),
    Case("web/client", "inet", 80, "tcp", "connected"),
    Case("web/client", "inet", 53, "udp", "reply"),
    Case("node-1", "pod:shop/api-2", 8080, "tcp", "connected"),
    Case("node-2", "svc:shop/api", 80, "tcp", "connected"),
    Case("node-1", "inet", 443, "tcp", "connected"),
    Case("web/client", "pod:shop/db", 5432, "tcp", "timeout"),  # NetworkPolicy db-only-from-api
    Case("shop/api-1", "pod:shop/db", 5432, "tcp", "connected"),  # allowed, cross node
    Case("shop/api-2", "pod:shop/db", 5432, "tcp", "connected"),  # allowed, same node
    Case("web/client", "pod:shop/api-1", 9999, "tcp", "refused"),
    Case("web/client", "pod:shop/api-1", 9999, "udp", "refused"),
]
VXLAN = [
    Case("app/frontend", "pod:app/backend-1", 9000, "tcp", "connected"),
    Case("app/frontend", "pod:app/backend-2", 9000, "tcp", "connected"),
    Case("app/frontend", "svc:app/backend", 80, "tcp", "connected"),
    Case("app/frontend", "svc:app/backend", 9001, "udp", "reply"),
    Case("app/backend-2", "pod:app/backend-1", 9001, "udp", "reply"),
    Case("ext", "lb:app/frontend", 80, "tcp", "connected"),
    Case("node-3", "pod:app/frontend", 8080, "tcp", "connected"),
    Case("app/backend-1", "inet", 443, "tcp", "connected"),
    Case("app/backend-1", "svc:kube-system/kube-dns", 53, "udp", "reply", "backend.app.svc.cluster.local",
         "answers=[10.96.0.100]"),
]
LEGACY = [
    Case("ext", "lb:prod/web", 80, "tcp", "connected"),  # ETP Local, source range admits ext
    Case("inet", "lb:prod/web", 80, "tcp", "timeout"),  # outside loadBalancerSourceRanges
    Case("ext", "node:node-1", 30000, "tcp", "connected"),  # node with a local ready endpoint
    Case("ext", "node:node-3", 30000, "tcp", "timeout"),  # only a not-ready endpoint: no local endpoints
    Case("ext", "192.0.2.50", 8080, "tcp", "connected"),  # externalIP
    Case("prod/toolbox", "svc:prod/nothing", 80, "tcp", "refused"),  # no endpoints: REJECT
    Case("prod/toolbox", "svc:prod/broken", 80, "tcp", "refused"),  # endpoint ready, nothing listens
    Case("prod/toolbox", "pod:prod/web-3", 80, "tcp", "connected"),  # not ready, but listening
    Case("prod/toolbox", "svc:kube-system/node-exporter", 9100, "tcp", "connected"),  # hostNetwork endpoint
    Case("prod/toolbox", "svc:kube-system/kube-dns", 53, "udp", "reply", "web-headless.prod.svc.cluster.local",
         "answers=[10.244.1.2,10.244.2.2]"),
    Case("node-2", "svc:prod/web", 80, "tcp", "connected"),
]
DNS_INTERNET = [
    Case("apps/app", "svc:kube-system/kube-dns", 53, "udp", "reply", "other.apps.svc.cluster.local",
         "answers=[10.96.0.100]"),
    Case("apps/app", "svc:kube-system/kube-dns", 53, "tcp", "connected", "other.apps.svc.cluster.local",
         "answers=[10.96.0.100]"),
    Case("apps/app", "inet", 80, "tcp", "connected"),  # egress ipBlock allows port 80
    Case("apps/app", "inet", 443, "tcp", "timeout"),  # ... and nothing else
    Case("apps/app", "pod:apps/other", 8080, "tcp", "timeout"),  # 10.0.0.0/8 is excepted
    Case("apps/app", "svc:apps/other", 80, "tcp", "timeout"),  # policy sees the DNATed pod address
    Case("apps/other", "inet", 443, "tcp", "connected"),  # not selected by the policy
    Case("apps/other", "svc:kube-system/kube-dns", 53, "udp", "reply"),
]
EXAMPLES = {"basic": BASIC, "vxlan": VXLAN, "legacy": LEGACY, "dns-internet": DNS_INTERNET}


@pytest.mark.parametrize("scenario", sorted(EXAMPLES))
def test_example_probes(scenario: str, make_lab: MakeLab) -> None:
    lab = make_lab(scenario)
    failures = []
    for case in EXAMPLES[scenario]:
        timeout = 0.5 if case.outcome in ("timeout", "no_reply") else 1.0
        result = lab.probe(case.src, case.dst, case.port, case.protocol, timeout, case.dns_name)
        if result.outcome != case.outcome or case.detail not in result.detail:
            failures.append(f"{case}: got {result.outcome} {result.errno or ''} {result.detail}")
    assert not failures, "\n".join(failures)


def test_iptables_backend_follows_scenario(make_lab: MakeLab) -> None:
    lab = make_lab("legacy")
    legacy = lab.exec("node-1", ["iptables-legacy-save", "-t", "nat"])
    nft = lab.exec("node-1", ["iptables-nft-save", "-t", "nat"], check=False)
    assert "KUBE-SERVICES" in legacy and "KUBE-SVL-" in legacy and "KUBE-FW-" in legacy
    assert "KUBE-SERVICES" not in nft


def test_vxlan_devices(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan")
    node2 = lab.resolved.node("node-2")
    fdb = lab.exec("node-1", ["bridge", "fdb", "show", "dev", "flannel.1"])
    assert f"{node2.vtep_mac} dst {node2.ip}" in fdb
    routes = lab.exec("node-1", ["ip", "route", "show", node2.pod_cidr])
    assert "dev flannel.1" in routes and "onlink" in routes


def test_two_labs_at_once(make_lab: MakeLab) -> None:
    first, second = make_lab("basic"), make_lab("basic")
    assert first.address("pod:shop/api-2") == second.address("pod:shop/api-2")  # same addresses, no clash
    for lab in (first, second):
        assert lab.probe("web/client", "svc:shop/api", 80).outcome == "connected"
    first.down()
    assert not netns.list_with_prefix(first.prefix)
    assert second.probe("web/client", "pod:shop/api-2", 8080).outcome == "connected"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=60)


def test_cli_up_status_probe_down_leaves_nothing() -> None:
    require_root()
    prefix = new_prefix()
    try:
        up = _cli("up", "--scenario", str(example("basic")), "--name", prefix)
        assert up.returncode == 0, up.stderr
        st = lab_state.load(prefix)
        assert st.api is not None and st.api.pid and st.api.kubeconfig
        pids = [*st.all_pids(), st.api.pid]
        assert all(netns.alive(p) for p in pids)  # listeners and the API server outlive `lab up`
        config.load_kube_config(config_file=st.api.kubeconfig)
        pods = client.CoreV1Api().list_pod_for_all_namespaces().items
        served = {f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip for p in pods if p.metadata and p.status}
        assert served == {
            key: pod.ip for key, pod in st.pods.items()}  # the API serves the addresses the dataplane uses
        status = _cli("status", "--name", prefix)
        assert status.returncode == 0 and "shop/api-2" in status.stdout
        probe = _cli("probe", "--name", prefix, "--from", "web/client", "--to", "svc:shop/api", "--port", "80")
        assert probe.returncode == 0 and "connected" in probe.stdout, probe.stdout + probe.stderr
        down = _cli("down", "--name", prefix)
        assert down.returncode == 0, down.stderr
        assert not netns.list_with_prefix(prefix)
        assert not any(netns.alive(p) for p in pids)
        assert not lab_state.state_dir(prefix).exists()
    finally:
        Lab.sweep(prefix)


def test_down_after_crash_sweeps_by_prefix(make_lab: MakeLab) -> None:
    lab = make_lab("basic")
    pids = lab.state.all_pids()
    lab_state.state_path(lab.prefix).unlink()  # the builder "crashed": no state file left
    Lab.sweep(lab.prefix)
    assert not netns.list_with_prefix(lab.prefix)
    assert not any(netns.alive(p) for p in pids)
