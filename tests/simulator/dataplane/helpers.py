"""Shared pieces of the dataplane walk tests: a recorded lab diagnosis (its topology report and node
dumps from fixtures/walk/, editable in code to inject a fault), the same dumps rewritten into kube-proxy
IPVS mode or sent to the internet, and the assertions on forward paths several test modules make."""

from __future__ import annotations

import gzip
import ipaddress
from pathlib import Path

from services.simulator.dataplane.walk import WalkResult, walk
from shared.netstack import NetnsDump, NodeDump
from shared.schemas import DiagnosisRequest, FinalState, HopStatus, Packet, Step
from shared.schemas import Path as ResultPath
from shared.topology import Endpoint, EndpointKind, TopologyReport
from tests.simulator.dataplane.ipvs_mode import to_ipvs_mode

FIXTURES = Path(__file__).parent / "fixtures" / "walk"
PORTS = {"pod-cross-node": 8080, "clusterip": 80, "dns-same-node": 53, "pod-vxlan": 9000}


def pkt_in(step: Step) -> Packet:
    """The packet `step` took in (every step these tests read a packet of has one)."""
    assert step.packet_in is not None, step.detail
    return step.packet_in


def pkt_out(step: Step) -> Packet:
    """The packet `step` put out."""
    assert step.packet_out is not None, step.detail
    return step.packet_out


class Case:
    """One recorded diagnosis: its topology report and fresh, editable copies of the node dumps."""

    def __init__(self, scenario: str, name: str, nodes: tuple[str, ...] = ("node-1", "node-2")) -> None:
        self.report = TopologyReport.model_validate_json((FIXTURES / f"{scenario}-{name}.topology.json").read_text())
        self.request = DiagnosisRequest(src=self.report.src.address, dst=self.report.dst.address, port=PORTS[name],
                                        protocol="tcp")
        self.dumps = {n: NodeDump.model_validate_json(gzip.decompress((FIXTURES / f"{scenario}-{n}.json.gz")
                                                                      .read_bytes())) for n in nodes}

    def host(self, node: str) -> NetnsDump:
        return self.dumps[node].host

    def pod(self, key: str) -> NetnsDump:
        return next(ns for d in self.dumps.values() for ns in d.pods if ns.pod == key)

    def iptables(self, node: str, table: str, rule: str, first: bool = True) -> None:
        """Add an `-A` rule (at the top of its chain when `first`) to the node's save text."""
        state = self.host(node).netfilter.iptables[0]
        head, _, rest = state.save.partition(f"*{table}\n")
        chain = rule.split()[1]
        lines = rest.split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith(f"-A {chain} ") or line == "COMMIT")
        if not first:
            at = next(i for i, line in enumerate(lines) if line == "COMMIT")
        lines.insert(at, rule)
        state.save = head + f"*{table}\n" + "\n".join(lines)

    def drop_rules(self, node: str, needle: str) -> None:
        state = self.host(node).netfilter.iptables[0]
        state.save = "\n".join(line for line in state.save.split("\n") if needle not in line)

    def run(self, **kw: object) -> WalkResult:
        return walk(self.report, self.request, self.dumps, **kw)  # type: ignore[arg-type]


def forward(result: WalkResult) -> list[ResultPath]:
    return [p for p in result.paths if p.direction == "forward"]


def only_cause(result: WalkResult, code: str, hop: str) -> None:
    paths = forward(result)
    assert paths and all(p.final == FinalState.DROP and p.cause == code for p in paths), [
        (p.final, p.cause) for p in paths]
    for p in paths:
        first = next(h.id for h in p.hops if h.status == HopStatus.ERROR)
        assert first == hop, [(h.id, h.status) for h in p.hops]
    assert any(f.code == code and f.hop == hop for f in result.findings)


# ---------------------------------------------------------------- leaving the cluster

INTERNET = ipaddress.ip_address("203.0.113.10")


def to_internet() -> Case:
    case = Case("basic", "pod-cross-node")
    case.report.dst = Endpoint(address=INTERNET, kind=EndpointKind.PUBLIC)
    case.report.paths = []
    case.request = case.request.model_copy(update={"dst": INTERNET, "port": 80})
    return case


# ---------------------------------------------------------------- kube-proxy IPVS mode

VIP = "10.96.0.100"


def ipvs_case(name: str = "clusterip", scheduler: str = "rr", nodes: tuple[str, ...] = ("node-1", "node-2")) -> Case:
    case = Case("basic", name, nodes)
    for node in nodes:
        to_ipvs_mode(case.host(node), scheduler)
    case.report.cluster.kube_proxy_mode = "ipvs"
    return case


def virtual_server(case: Case, node: str, address: str = VIP, port: int = 80) -> dict:
    return next(s for s in case.host(node).netfilter.ipvs if s["address"] == address and s["port"] == port)
