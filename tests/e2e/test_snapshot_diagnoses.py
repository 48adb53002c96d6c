"""Diagnoses end to end through the embedded stack (its own real nats-server, all five real
stages, the gateway's REST + SSE) in snapshot mode: the answers people read for the common
Kubernetes tickets, and golden results for the example snapshots.

Golden files hold results normalised (ids, timestamps, timings and the snapshot's location
removed) and are compared exactly; `NETDIAG_UPDATE_GOLDEN=1` rewrites them (review the diff).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from services.render import render_diagnosis
from shared.schemas import Diagnosis
from tests.e2e.cases import BASIC, BASIC_CASES, POLICY, POLICY_CASES, ROOT, SHOP, SHOP_CASES
from tests.e2e.helpers import diagnose_all, finals, first_failing, text_head

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
async def policy() -> dict[str, Diagnosis]:
    return await diagnose_all(POLICY, POLICY_CASES)


@pytest.fixture(scope="module")
async def basic() -> dict[str, Diagnosis]:
    return await diagnose_all(BASIC, BASIC_CASES)


@pytest.fixture(scope="module")
async def shop() -> dict[str, Diagnosis]:
    return await diagnose_all(SHOP, SHOP_CASES)


# ------------------------------------------------------------------ helpers


def codes_at(d: Diagnosis) -> set[tuple[str, str | None, str]]:
    assert d.result is not None
    return {(f.code, f.hop, f.severity.value) for f in d.result.findings}


def missing_nodes(*nodes: str) -> set[tuple[str, str | None, str]]:
    return {("DATA_MISSING", f"node:{n}", "warning") for n in nodes}


# ------------------------------------------------------------------ policy snapshot (calico enforces)


def test_ingress_deny_drops_at_the_destination_pod(policy: dict[str, Diagnosis]) -> None:
    d = policy["ingress_deny"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "NETWORK_POLICY_DENY")]
    # node data is missing (kubernetes/ only), the deny is certain anyway: it is stated, not hidden
    assert codes_at(d) == {("NETWORK_POLICY_DENY", "pod:secure/vault-0", "error")} | missing_nodes("node-1", "node-2")
    deny = next(f for f in d.result.findings if f.code == "NETWORK_POLICY_DENY")
    assert deny.message.startswith("network policy verdict of secure/default-deny-all: deny the packet from "
                                   "10.244.1.10 to 10.244.2.12:8200, because pod secure/vault-0 is isolated for "
                                   "ingress")
    assert "it has no ingress rules" in deny.message
    assert d.result.summary == deny.message
    first_failing(d, "UNREACHABLE", "secure/vault-0", "pod")


def test_allow_from_namespace_denies_another_namespace_and_says_why(policy: dict[str, Diagnosis]) -> None:
    d = policy["namespace_deny"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "NETWORK_POLICY_DENY")]
    deny = next(f for f in d.result.findings if f.code == "NETWORK_POLICY_DENY")
    assert deny.hop == "pod:prod/api-7d9f8b6c5-a1b2c"
    assert "network policy verdict of prod/allow-from-web, prod/default-deny-ingress: deny" in deny.message
    assert 'namespace "default" {kubernetes.io/metadata.name=default} does not match namespaceSelector team=web' \
        in deny.message
    first_failing(d, "UNREACHABLE", "prod/api-7d9f8b6c5-a1b2c", "pod")


def test_egress_deny_drops_at_the_source_pod(policy: dict[str, Diagnosis]) -> None:
    d = policy["egress_deny"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "NETWORK_POLICY_DENY")]
    assert codes_at(d) == {("NETWORK_POLICY_DENY", "pod:web/sandbox", "error")} | missing_nodes("node-1", "node-2")
    deny = next(f for f in d.result.findings if f.code == "NETWORK_POLICY_DENY")
    assert "web/sandbox-dns-only" in deny.message and "isolated for egress" in deny.message
    # the fix names the concrete change: the peer by its namespace's and pod's labels, and the port
    assert deny.suggestion.startswith("Add to policy web/sandbox-dns-only an egress peer namespaceSelector ")
    assert "+ podSelector " in deny.suggestion and "on port 8080/TCP" in deny.suggestion
    src = d.result.paths[0].hops[0]
    assert (src.id, src.status.value) == ("pod:web/sandbox", "error")
    assert [(s.kind.value, s.action.value) for s in src.steps] == [("classify", "INFO"), ("policy", "DROP")]
    first_failing(d, "UNREACHABLE", "web/sandbox", "pod")


def test_allowed_through_a_service_is_undetermined_without_node_data(policy: dict[str, Diagnosis]) -> None:
    """The model delivers (DNAT to the ready endpoint, named targetPort, policy allows), but no node was
    seen: the honest verdict is UNDETERMINED, and the summary says both."""
    d = policy["allow_via_service"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"
    assert codes_at(d) == missing_nodes("node-1", "node-2")  # nothing wrong found, nothing invented
    (p,) = d.result.paths  # the not-ready endpoint is not used by kube-proxy
    assert (p.final.value, p.cause) == ("DELIVER", None)
    assert [h.id for h in p.hops] == ["pod:web/frontend-6f7b8c9d5-h2k4p", "service:prod/api",
                                      "pod:prod/api-7d9f8b6c5-a1b2c"]
    nat = p.hops[1].steps[0]
    assert (str(nat.packet_out.dst), nat.packet_out.dport) == ("10.244.2.10", 8080)  # type: ignore[union-attr]
    allow, delivery = p.hops[2].steps
    assert allow.action.value == "ALLOW" and "allowed by prod/allow-from-web rule #0" in allow.detail
    assert delivery.action.value == "DELIVER"
    assert d.result.summary.startswith("every path delivers as far as the data goes, but not enough data to "
                                       "decide: network state of node")
    assert any(a.could_change_outcome and "node-2" in a.text for a in d.result.assumptions)
    assert text_head(d, 2)[1].startswith("verdict: UNDETERMINED — every path delivers as far as")


def test_service_without_endpoints(policy: dict[str, Diagnosis]) -> None:
    d = policy["no_endpoints"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "SERVICE_NO_ENDPOINT")]
    assert codes_at(d) == {("SERVICE_NO_ENDPOINT", "service:prod/reports", "error")} | missing_nodes("node-1")
    assert d.result.summary == "service prod/reports has no valid endpoint (EndpointSlices are empty)"
    first_failing(d, "UNREACHABLE", "prod/reports", "service")


def test_pod_not_running(policy: dict[str, Diagnosis]) -> None:
    d = policy["not_running"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "POD_NOT_RUNNING")]
    assert ("POD_NOT_RUNNING", "pod:web/batch-worker-7c6d5f4b8-m3n4p", "error") in codes_at(d)
    assert "(phase Pending)" in d.result.summary
    first_failing(d, "UNREACHABLE", "web/batch-worker-7c6d5f4b8-m3n4p", "pod")


def test_pod_not_ready_still_answers_on_its_ip(policy: dict[str, Diagnosis]) -> None:
    d = policy["not_ready"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"  # node-1 not seen
    assert finals(d) == [("DELIVER", None)]
    assert codes_at(d) == {("POD_NOT_READY", "pod:prod/api-7d9f8b6c5-d3e4f", "error")} | missing_nodes("node-1")
    dst = d.result.paths[0].hops[-1]
    assert dst.status.value == "warning"  # not ready removes it from Services, not from the network
    assert "first failing hop" not in render_diagnosis(d)


def test_unknown_address_is_undetermined_and_says_so(policy: dict[str, Diagnosis]) -> None:
    d = policy["unknown_address"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"
    assert finals(d) == [("ABORT", "UNKNOWN_ADDRESS")]
    assert ("UNKNOWN_ADDRESS", "external:10.244.3.77", "warning") in codes_at(d)
    assert d.result.paths[0].hops[-1].status.value == "unknown"
    # the summary names the real reason, not the missing node data
    assert d.result.summary == ("not enough data to decide: address 10.244.3.77 belongs to no pod, node or "
                                "Service known to the cluster")
    head = text_head(d, 4)
    assert head[2] == ("could not follow past: private address owned by no pod, node or Service (external) on "
                       "path p0")
    assert head[3].startswith("  fix:     Check the address")  # the summary above already says why


def test_dns_resolves_to_every_coredns_pod(policy: dict[str, Diagnosis]) -> None:
    d = policy["dns"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"  # no node data
    assert finals(d) == [("DELIVER", None), ("DELIVER", None)]
    targets = set()
    for p in d.result.paths:
        src, svc, dst = p.hops
        assert svc.id == "service:kube-system/kube-dns"
        out = svc.steps[0].packet_out
        assert out is not None and out.protocol == "udp" and out.dport == 53
        targets.add((dst.name, str(out.dst)))
        assert src.steps[-1].action.value == "ALLOW" and "web/sandbox-dns-only" in src.steps[-1].detail
        assert "(a declared container port)" in dst.steps[-1].detail
    assert targets == {("kube-system/coredns-5d78c9869d-q7x2b", "10.244.1.2"),
                       ("kube-system/coredns-5d78c9869d-v9k4m", "10.244.2.2")}
    assert codes_at(d) == missing_nodes("node-1", "node-2")


def test_one_endpoint_denied_is_ambiguous(policy: dict[str, Diagnosis]) -> None:
    """A Service whose endpoints differ under the policies: some connections work, some do not."""
    d = policy["one_endpoint_denied"]
    assert d.result is not None and d.result.verdict == "AMBIGUOUS"
    assert finals(d) == [("DELIVER", None), ("DROP", "NETWORK_POLICY_DENY")]
    assert ("NETWORK_POLICY_DENY", "pod:prod/search-1", "error") in codes_at(d)
    assert d.result.summary.startswith("1 of 2 paths deliver; network policy verdict of prod/default-deny-ingress: "
                                       "deny the packet from 10.244.1.10 to 10.244.2.14:9200")
    # the delivering path's hops are clean: the deny belongs to the other endpoint only
    assert all(h.status.value == "ok" for h in d.result.paths[0].hops)
    first_failing(d, "AMBIGUOUS", "prod/search-1", "pod", "p1")


# ------------------------------------------------------------------ basic snapshot (flannel: not enforced)


def test_policy_deny_where_the_cni_does_not_enforce_is_a_warning(basic: dict[str, Diagnosis]) -> None:
    d = basic["cni_not_enforcing"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"  # delivered by the model, nodes unseen
    assert finals(d) == [("DELIVER", None)]
    assert ("NETWORK_POLICY_DENY", "pod:prod/api-6d4b8c7f9-zz9zz", "warning") in codes_at(d)
    assert not any(f.severity == "error" for f in d.result.findings)
    step = d.result.paths[0].hops[-1].steps[0]
    assert (step.kind.value, step.action.value) == ("policy", "INFO")
    assert any("does not enforce NetworkPolicy" in a.text for a in d.result.assumptions)
    assert "the CNI does not enforce NetworkPolicy" in render_diagnosis(d)


# ------------------------------------------------------------------ golden results


def normalise(d: Diagnosis, snapshot: Path) -> dict[str, Any]:
    doc = json.loads(d.model_dump_json(exclude={"id", "created_at", "completed_at", "timings_ms"}))
    text = json.dumps(doc).replace(str(snapshot), "<snapshot>").replace(str(snapshot.relative_to(ROOT)), "<snapshot>")
    return json.loads(text)


def check_golden(name: str, results: dict[str, Diagnosis], snapshot: Path) -> None:
    actual = json.dumps({k: normalise(v, snapshot) for k, v in results.items()}, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("NETDIAG_UPDATE_GOLDEN") == "1":
        path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing: run with NETDIAG_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(path), "actual"))
        pytest.fail(f"{name} differs from its golden result (NETDIAG_UPDATE_GOLDEN=1 rewrites it):\n{diff[:6000]}")


def test_golden_policy(policy: dict[str, Diagnosis]) -> None:
    check_golden("policy", policy, POLICY)


def test_golden_basic(basic: dict[str, Diagnosis]) -> None:
    first_failing(basic["no_endpoints"], "UNREACHABLE", "default/empty", "service")
    assert [h.id for h in basic["named_target_port"].result.paths[0].hops] == [  # type: ignore[union-attr]
        "pod:default/client", "service:default/web", "pod:default/web-7c9f8d6b5-abcde"]
    check_golden("basic", basic, BASIC)


def test_golden_shop(shop: dict[str, Diagnosis]) -> None:
    """The lab capture has node dumps: the dataplane walk decides and the verdicts are confident."""
    assert {k: v.result.verdict.value for k, v in shop.items() if v.result} == {
        "service": "REACHABLE", "policy_deny": "UNREACHABLE", "policy_allow": "REACHABLE", "dns": "REACHABLE"}
    assert finals(shop["policy_deny"]) == [("DROP", "NETWORK_POLICY_DENY")]
    first_failing(shop["policy_deny"], "UNREACHABLE", "shop/db", "pod")
    check_golden("shop", shop, SHOP)


def test_walked_policy_drop_names_its_direction_pod_and_node(shop: dict[str, Diagnosis]) -> None:
    """The walk's DROP at a node's policy rule carries the policy engine's verdict (the direction, the pod it
    isolates) and puts the destination pod's hop on the node that enforced the deny."""
    d = shop["policy_deny"]
    assert d.result is not None
    db = next(h for h in d.result.paths[0].hops if h.id == "pod:shop/db")
    assert db.node == "node-2"
    (drop,) = db.steps
    assert (drop.kind.value, drop.action.value) == ("policy", "DROP")
    assert (drop.info.direction, drop.info.pod) == ("ingress", "shop/db")  # type: ignore[union-attr]
