"""Result assembly on hand-built inputs: the overall verdict rules, the one-line summary, and the
paths ModelSimulator builds from a TopologyReport (Service DNAT per endpoint, NetworkPolicy
steps at the source's egress and the destination's ingress, topology findings on hops)."""

from __future__ import annotations

from typing import Any

import pytest

from services.simulator.assemble import _reconcile, diagnose, overall_verdict, summarize
from services.simulator.modelpath import ModelSimulator
from shared.codes import finding
from shared.schemas import (
    Assumption,
    DiagnosisRequest,
    FinalState,
    Finding,
    Hop,
    HopKind,
    HopStatus,
    Path,
    Severity,
    StageEnvelope,
    StepAction,
    StepKind,
    Verdict,
    new_id,
    now,
)
from shared.topology import (
    CandidatePath,
    ClusterInfo,
    ClusterObjects,
    Endpoint,
    EndpointKind,
    ServiceBackend,
    ServiceResolution,
    TopologyReport,
)

# ------------------------------------------------------------------ builders


def pod(key: str, ip: str, node: str, labels: dict[str, str], ports: tuple[tuple[str, int, str], ...] = (),
        phase: str = "Running") -> dict[str, Any]:
    namespace, name = key.split("/")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": name.split("-")[0], "image": "agnhost:2.52", "ports": [
            {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def netpol(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    namespace_, name = key.split("/")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace_}, "spec": spec}


CLIENT = pod("web/client", "10.244.1.10", "node-1", {"app": "client"})
API_1 = pod("prod/api-1", "10.244.2.10", "node-2", {"app": "api", "track": "stable"}, (("http", 8080, "TCP"),))
API_2 = pod("prod/api-2", "10.244.2.11", "node-2", {"app": "api", "track": "canary"}, (("http", 8080, "TCP"),))
NAMESPACES = [namespace("web", team="web"), namespace("prod")]
ONLY_STABLE_EGRESS = netpol("web/client-to-stable", {
    "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"track": "stable"}}}]}]})
DENY_PROD_INGRESS = netpol("prod/deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})


def endpoint(p: dict[str, Any]) -> Endpoint:
    key = f"{p['metadata']['namespace']}/{p['metadata']['name']}"
    return Endpoint(address=p["status"]["podIP"], kind=EndpointKind.POD, pod=key, node=p["spec"]["nodeName"],
                    description=f"pod {key}")


def request(dst: str, port: int, protocol: str = "tcp", src: str = "10.244.1.10") -> DiagnosisRequest:
    return DiagnosisRequest(src=src, dst=dst, port=port, protocol=protocol)  # type: ignore[arg-type]


def direct(src: dict[str, Any], dst: dict[str, Any], *, policies: tuple[dict[str, Any], ...] = (),
           findings: tuple[Finding, ...] = (), enforced: bool | None = True) -> TopologyReport:
    s, d = endpoint(src), endpoint(dst)
    return TopologyReport(
        source="test", src=s, dst=d, findings=list(findings),
        paths=[CandidatePath(id="p0", src_node=s.node, dst_node=d.node, dst_address=d.address, dst_port=8080,
                             dst_pod=d.pod)],
        cluster=ClusterInfo(cni="calico", enforces_network_policy=enforced),
        objects=ClusterObjects(pods=[src, dst], namespaces=NAMESPACES, networkpolicies=list(policies)),
    )


def via_service(backends: list[dict[str, Any]], *, policies: tuple[dict[str, Any], ...] = (),
                findings: tuple[Finding, ...] = ()) -> TopologyReport:
    """web/client → ClusterIP 10.96.0.20:80 of prod/api (targetPort http → 8080)."""
    used = [ServiceBackend(address=b["status"]["podIP"], port=8080, node=b["spec"]["nodeName"],
                           pod=f"{b['metadata']['namespace']}/{b['metadata']['name']}") for b in backends]
    src = endpoint(CLIENT)
    return TopologyReport(
        source="test", src=src,
        dst=Endpoint(address="10.96.0.20", kind=EndpointKind.SERVICE_CLUSTER_IP, service="prod/api",
                     description="ClusterIP of service prod/api"),
        service=ServiceResolution(service="prod/api", cluster_ips=["10.96.0.20"], port=80, port_name="http",
                                  target_port="http", backends=used),
        paths=[CandidatePath(id=f"p{i}", src_node="node-1", dst_node=b.node, dst_address=b.address, dst_port=8080,
                             dst_pod=b.pod, entry_node="node-1", backend=b) for i, b in enumerate(used)],
        cluster=ClusterInfo(cni="calico", enforces_network_policy=True),
        objects=ClusterObjects(pods=[CLIENT, API_1, API_2], namespaces=NAMESPACES, networkpolicies=list(policies)),
        findings=list(findings),
    )


def path(final: FinalState, direction: str = "forward", cause: str | None = None, hop: str = "pod:a/b") -> Path:
    return Path(id=f"p-{final}", direction=direction, final=final, cause=cause,
                hops=[Hop(id=hop, kind=HopKind.POD, name=hop)])


def hop_of(p: Path, hop_id: str) -> Hop:
    return next(h for h in p.hops if h.id == hop_id)


D, X, F, A = FinalState.DELIVER, FinalState.DROP, FinalState.FORWARD, FinalState.ABORT
MISSING = finding("DATA_MISSING", "node:node-1", what="network state of node node-1", reason="not in the snapshot")

# ------------------------------------------------------------------ overall_verdict


@pytest.mark.parametrize(("finals", "findings", "assumptions", "expected"), [
    ([], [], [], Verdict.UNDETERMINED),
    ([D], [], [], Verdict.REACHABLE),
    ([D, F], [], [], Verdict.REACHABLE),  # FORWARD: left the modelled world, nothing stopped it
    ([X, X], [], [], Verdict.UNREACHABLE),
    ([D, X], [], [], Verdict.AMBIGUOUS),  # one Service endpoint broken: depends on which one is picked
    ([D, A], [], [], Verdict.UNDETERMINED),
    ([X, A], [], [], Verdict.UNDETERMINED),
    ([D], [MISSING], [], Verdict.UNDETERMINED),  # delivering, but part of the path was not seen
    ([D], [], [Assumption(stage="t", text="x", could_change_outcome=True)], Verdict.UNDETERMINED),
    ([D], [], [Assumption(stage="t", text="x")], Verdict.REACHABLE),
    # a drop the model is sure of stands even where node data is missing: missing data adds no delivery
    ([X], [MISSING], [], Verdict.UNREACHABLE),
])
def test_overall_verdict(finals: list[FinalState], findings: list[Finding], assumptions: list[Assumption],
                         expected: Verdict) -> None:
    assert overall_verdict([path(f) for f in finals], findings, assumptions) == expected


def test_reply_paths_do_not_vote() -> None:
    # the dataplane walk folds a dropped reply into its forward path; reply paths are shown, not counted
    assert overall_verdict([path(D), path(X, "reply")], [], []) == Verdict.REACHABLE
    assert overall_verdict([path(X, "reply")], [], []) == Verdict.UNDETERMINED


DENY = finding("NETWORK_POLICY_DENY", "pod:prod/api-1", policies="prod/deny", src="web/client")


@pytest.mark.parametrize(("finals", "downgraded"), [
    ([D], True),  # the dataplane delivers: the CNI does not enforce the policy
    ([D, F], True),
    ([D, A], False),  # a path that stopped short (destination node not collected) proves nothing
    ([A], False),
    ([D, X], False),
    ([], False),
])
def test_a_policy_deny_is_downgraded_only_when_every_forward_path_gets_through(finals: list[FinalState],
                                                                                downgraded: bool) -> None:
    (f,) = _reconcile([DENY], [path(x) for x in finals] + [path(X, "reply")])
    assert f.severity == (Severity.WARNING if downgraded else Severity.ERROR)
    assert ("does not enforce" in f.message) == downgraded


# ------------------------------------------------------------------ summarize


def test_summary_names_the_deciding_cause() -> None:
    deny = finding("NETWORK_POLICY_DENY", "pod:a/b", policies="a/deny", src="1", dst="2:3", reason="no rule")
    assert summarize(Verdict.UNREACHABLE, [path(X, cause="NETWORK_POLICY_DENY")], [deny]) == deny.message
    assert summarize(Verdict.AMBIGUOUS, [path(D), path(X, cause="NETWORK_POLICY_DENY")], [deny]) == (
        f"1 of 2 paths deliver; {deny.message}")


def test_summary_of_undetermined_prefers_the_aborted_paths_cause() -> None:
    unknown = finding("UNKNOWN_ADDRESS", "external:10.244.9.9", address="10.244.9.9")
    text = summarize(Verdict.UNDETERMINED, [path(A, cause="UNKNOWN_ADDRESS", hop="external:10.244.9.9")],
                     [MISSING, unknown])
    assert text == f"not enough data to decide: {unknown.message}"
    # every path delivers but node state is missing: say both
    assert summarize(Verdict.UNDETERMINED, [path(D)], [MISSING]) == (
        f"every path delivers as far as the data goes, but not enough data to decide: {MISSING.message}")


def test_summary_of_reachable_tells_on_path_errors_from_off_path_ones() -> None:
    not_ready = finding("POD_NOT_READY", "pod:a/b", pod="a/b", containers="app")
    elsewhere = finding("POD_NOT_RUNNING", "pod:x/y", pod="x/y", phase="Pending")
    assert summarize(Verdict.REACHABLE, [path(D)], []) == "every path delivers"
    assert summarize(Verdict.REACHABLE, [path(D)], [not_ready]) == f"every path delivers; but {not_ready.message}"
    assert summarize(Verdict.REACHABLE, [path(D)], [elsewhere]) == (
        "every path delivers (1 problem(s) found off the path: see findings)")


# ------------------------------------------------------------------ ModelSimulator


def test_service_path_per_endpoint_with_dnat_and_named_port_delivery() -> None:
    result = ModelSimulator(via_service([API_1, API_2]), request("10.96.0.20", 80)).run()
    assert [p.id for p in result.paths] == ["p0", "p1"]
    for p, backend in zip(result.paths, ("10.244.2.10", "10.244.2.11"), strict=True):
        assert [h.kind for h in p.hops] == [HopKind.POD, HopKind.SERVICE, HopKind.POD]
        nat = p.hops[1].steps[0]
        assert nat.kind == StepKind.NAT and nat.action == StepAction.REWRITE
        assert (str(nat.packet_in.dst), nat.packet_in.dport) == ("10.96.0.20", 80)  # type: ignore[union-attr]
        assert (str(nat.packet_out.dst), nat.packet_out.dport) == (backend, 8080)  # type: ignore[union-attr]
        delivery = p.hops[-1].steps[-1]
        assert delivery.action == StepAction.DELIVER and "(a declared container port)" in delivery.detail
        assert p.final == D and p.cause is None
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.REACHABLE


def test_ingress_deny_drops_at_the_destination_pod_and_names_the_policy() -> None:
    result = ModelSimulator(direct(CLIENT, API_1, policies=(DENY_PROD_INGRESS,)), request("10.244.2.10", 8080)).run()
    (p,) = result.paths
    assert (p.final, p.cause) == (X, "NETWORK_POLICY_DENY")
    (deny,) = result.findings
    assert deny.hop == "pod:prod/api-1" and deny.severity == Severity.ERROR
    assert "prod/deny-ingress" in deny.message and "isolated for ingress" in deny.message
    assert hop_of(p, "pod:prod/api-1").status == HopStatus.ERROR
    assert hop_of(p, "pod:web/client").status == HopStatus.OK
    step = hop_of(p, "pod:prod/api-1").steps[0]
    assert (step.kind, step.action) == (StepKind.POLICY, StepAction.DROP)


def test_deny_where_the_cni_does_not_enforce_is_a_warning_and_the_path_delivers() -> None:
    report = direct(CLIENT, API_1, policies=(DENY_PROD_INGRESS,), enforced=False)
    result = ModelSimulator(report, request("10.244.2.10", 8080)).run()
    (p,) = result.paths
    assert p.final == D
    (deny,) = result.findings
    assert deny.severity == Severity.WARNING and hop_of(p, "pod:prod/api-1").status == HopStatus.WARNING
    assert hop_of(p, "pod:prod/api-1").steps[0].action == StepAction.INFO
    assert any("does not enforce NetworkPolicy" in a.text for a in result.assumptions)
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.REACHABLE


def test_unknown_cni_assumes_enforcement_and_says_so() -> None:
    report = direct(CLIENT, API_1, policies=(DENY_PROD_INGRESS,), enforced=None)
    result = ModelSimulator(report, request("10.244.2.10", 8080)).run()
    assert result.paths[0].final == X
    assert any("CNI is unknown" in a.text and a.could_change_outcome for a in result.assumptions)


def test_egress_deny_to_one_endpoint_leaves_the_other_path_clean() -> None:
    """The client may only talk to the stable track: the canary endpoint's path drops at the source,
    the stable one delivers, and the shared source hop is not marked failed on the delivering path."""
    result = ModelSimulator(via_service([API_2, API_1], policies=(ONLY_STABLE_EGRESS,)),
                            request("10.96.0.20", 80)).run()
    canary, stable = result.paths
    assert (stable.final, canary.final, canary.cause) == (D, X, "NETWORK_POLICY_DENY")
    (deny,) = result.findings
    assert deny.hop == "pod:web/client" and "10.244.2.11" in deny.message and "web/client-to-stable" in deny.message
    assert hop_of(canary, "pod:web/client").status == HopStatus.ERROR
    assert hop_of(stable, "pod:web/client").status == HopStatus.OK
    assert hop_of(stable, "pod:web/client").steps[-1].action == StepAction.ALLOW
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.AMBIGUOUS


def test_breaking_topology_finding_ends_the_path_at_its_hop() -> None:
    gone = finding("POD_NOT_RUNNING", "pod:prod/api-1", pod="prod/api-1", phase="Pending")
    result = ModelSimulator(direct(CLIENT, API_1, findings=(gone,)), request("10.244.2.10", 8080)).run()
    (p,) = result.paths
    assert (p.final, p.cause) == (X, "POD_NOT_RUNNING")
    assert hop_of(p, "pod:prod/api-1").status == HopStatus.ERROR


def test_not_ready_pod_by_its_ip_still_delivers() -> None:
    not_ready = finding("POD_NOT_READY", "pod:prod/api-1", pod="prod/api-1", containers="api")
    result = ModelSimulator(direct(CLIENT, API_1, findings=(not_ready,)), request("10.244.2.10", 8080)).run()
    (p,) = result.paths
    assert p.final == D and hop_of(p, "pod:prod/api-1").status == HopStatus.WARNING
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.REACHABLE


def test_service_without_endpoints_drops_at_the_service_hop() -> None:
    empty = finding("SERVICE_NO_ENDPOINT", "service:prod/api", service="prod/api", namespace="prod", name="api",
                    detail=" (EndpointSlices are empty)")
    result = ModelSimulator(via_service([], findings=(empty,)), request("10.96.0.20", 80)).run()
    (p,) = result.paths
    assert [h.id for h in p.hops] == ["pod:web/client", "service:prod/api"]
    assert (p.final, p.cause) == (X, "SERVICE_NO_ENDPOINT")
    assert hop_of(p, "service:prod/api").status == HopStatus.ERROR
    assert hop_of(p, "service:prod/api").steps[0].action == StepAction.DROP


def test_no_endpoint_is_not_policy_checked_against_the_service_address() -> None:
    """No DNAT happens, kube-proxy rejects the packet: an egress policy must not be evaluated (and blamed)
    against the ClusterIP, which no real dataplane does."""
    empty = finding("SERVICE_NO_ENDPOINT", "service:prod/api", service="prod/api", namespace="prod", name="api",
                    detail=" (EndpointSlices are empty)")
    result = ModelSimulator(via_service([], policies=(ONLY_STABLE_EGRESS,), findings=(empty,)),
                            request("10.96.0.20", 80)).run()
    (p,) = result.paths
    assert (p.final, p.cause) == (X, "SERVICE_NO_ENDPOINT")
    assert [f.code for f in result.findings] == ["SERVICE_NO_ENDPOINT"]
    assert hop_of(p, "pod:web/client").status == HopStatus.OK


def test_unknown_destination_aborts() -> None:
    unknown = finding("UNKNOWN_ADDRESS", "external:10.244.9.9", address="10.244.9.9")
    report = TopologyReport(
        source="test", src=endpoint(CLIENT), findings=[unknown],
        dst=Endpoint(address="10.244.9.9", kind=EndpointKind.UNKNOWN, description="private address"),
        paths=[CandidatePath(id="p0", src_node="node-1", dst_address="10.244.9.9", dst_port=80)],
        objects=ClusterObjects(pods=[CLIENT], namespaces=NAMESPACES))
    result = ModelSimulator(report, request("10.244.9.9", 80)).run()
    (p,) = result.paths
    assert (p.final, p.cause) == (A, "UNKNOWN_ADDRESS")
    assert p.hops[-1].id == unknown.hop and p.hops[-1].status == HopStatus.UNKNOWN
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.UNDETERMINED


async def test_diagnose_without_topology_is_undetermined_and_says_why() -> None:
    env = StageEnvelope(id=new_id(), created_at=now(), request=request("10.244.2.10", 8080))
    result = await diagnose(env)
    assert result.verdict == Verdict.UNDETERMINED and result.paths == []
    assert any(a.could_change_outcome and "no topology" in a.text for a in result.assumptions)
