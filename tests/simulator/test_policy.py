"""Unit tests of the NetworkPolicy engine, one per semantic point (pure functions)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from services.simulator.matrix import compute_matrix
from services.simulator.policy import PolicyIndex, deny_findings, policy_step
from shared.schemas import Severity, StepAction
from shared.selectors import SelectorError, compile_selector
from tests.simulator.netpol_model import model_objects, pod, pod_ip, policy

XA, XB, YA, ZA = pod_ip("x/a"), pod_ip("x/b"), pod_ip("y/a"), pod_ip("z/a")
NODE_IP = "192.168.0.10"
EXTERNAL = "203.0.113.9"


def index(*policies: dict[str, Any], **kw: Any) -> PolicyIndex:
    return PolicyIndex.build(model_objects(policies, **kw))


def deny_ingress_x() -> dict[str, Any]:
    return policy("x", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})


# ------------------------------------------------------------------ selectors


@pytest.mark.parametrize(("expr", "labels", "expected"), [
    ({"key": "pod", "operator": "In", "values": ["a", "b"]}, {"pod": "a"}, True),
    ({"key": "pod", "operator": "In", "values": ["a", "b"]}, {}, False),
    ({"key": "pod", "operator": "NotIn", "values": ["a"]}, {"pod": "c"}, True),
    ({"key": "pod", "operator": "NotIn", "values": ["a"]}, {}, True),  # absent key matches NotIn
    ({"key": "pod", "operator": "NotIn", "values": ["a"]}, {"pod": "a"}, False),
    ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
    ({"key": "tier", "operator": "Exists"}, {}, False),
    ({"key": "tier", "operator": "DoesNotExist"}, {}, True),
    ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "x"}, False),
])
def test_match_expressions(expr: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert compile_selector({"matchExpressions": [expr]}).matches(labels) is expected


def test_match_labels_and_expressions_are_anded_and_empty_matches_all() -> None:
    sel = compile_selector({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]})
    assert sel.matches({"app": "web", "env": "prod"}) and not sel.matches({"app": "web"})
    assert compile_selector({}).matches({"anything": "x"}) and compile_selector(None).empty
    with pytest.raises(SelectorError):
        compile_selector({"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["v"]}]})


@pytest.mark.parametrize("spec", [
    {"podSelector": {"matchExpressions": [{"key": "k", "operator": "Nope"}]}},
    {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
    {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {}}]}]},
    {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
])
def test_invalid_policy_is_reported_not_silently_dropped(spec: dict[str, Any]) -> None:
    ix = index(policy("x", "bad", spec))
    assert ix.problems and "x/bad" in ix.problems[0].text and ix.problems[0].could_change_outcome
    assert ix.evaluate(YA, XA, "tcp", 80).assumptions[0] is ix.problems[0]


# --------------------------------------------------------- isolation, defaults


def test_not_isolated_without_selecting_policy() -> None:
    v = index().evaluate(YA, XA, "tcp", 80)
    assert v.allowed and not v.ingress.isolated and not v.egress.isolated
    assert "not isolated" in v.ingress.explanation


def test_default_policy_types_ingress_always_egress_only_with_rules() -> None:
    no_types_empty_egress = policy("x", "p", {"podSelector": {}, "egress": []})
    v = index(no_types_empty_egress).evaluate(XA, YA, "tcp", 80)
    assert v.egress.allowed and not v.egress.isolated  # `egress: []` without policyTypes: Ingress only
    assert not index(no_types_empty_egress).evaluate(YA, XA, "tcp", 80).allowed  # but ingress isolated
    with_egress_rule = policy("x", "p", {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    v = index(with_egress_rule).evaluate(XA, YA, "tcp", 80)
    assert v.egress.isolated and not v.allowed
    assert index(with_egress_rule).evaluate(XA, YA, "udp", 53).egress.allowed


def test_policy_types_egress_only_does_not_isolate_ingress() -> None:
    p = policy("x", "egress-only", {"podSelector": {}, "policyTypes": ["Egress"], "ingress": []})
    v = index(p).evaluate(YA, XA, "tcp", 80)
    assert v.allowed and not v.ingress.isolated


@pytest.mark.parametrize(("rules", "allowed"), [
    ([], False),  # ingress: [] denies everything
    ([{}], True),  # one empty rule: allow all
    ([{"from": []}], True),  # from: [] is the same as absent from
    ([{"from": [{}]}], False),  # an empty peer (rejected by the API server) matches nothing
    ([{"ports": []}], True),  # ports: [] = all ports
])
def test_empty_forms(rules: list[dict[str, Any]], allowed: bool) -> None:
    p = policy("x", "p", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules})
    assert index(p).evaluate(YA, XA, "tcp", 80).allowed is allowed


def test_empty_peer_is_explained() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{}]}]})
    v = index(p).evaluate(YA, XA, "tcp", 80)
    assert "API server rejects" in v.ingress.denials[0].reason


def test_union_of_allows_names_the_deciding_rule_and_peer() -> None:
    allow = policy("x", "allow-y", {"podSelector": {"matchLabels": {"pod": "a"}},
                                    "ingress": [{"ports": [{"port": 81}]},
                                                {"from": [{"podSelector": {"matchLabels": {"pod": "zz"}}},
                                                          {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    v = index(deny_ingress_x(), allow).evaluate(YA, XA, "tcp", 80)
    assert v.allowed and v.ingress.isolated
    assert [str(p) for p in v.ingress.isolating] == ["x/deny-ingress", "x/allow-y"]
    m = v.ingress.allowed_by
    assert m is not None and (str(m.policy), m.rule_index, m.peer_index, m.port_index) == ("x/allow-y", 1, 1, None)


def test_both_egress_and_ingress_must_allow() -> None:
    deny_egress_y = policy("y", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    allow_all_x = policy("x", "allow", {"podSelector": {}, "ingress": [{}]})
    v = index(deny_egress_y, allow_all_x).evaluate(YA, XA, "tcp", 80)
    assert not v.allowed and v.ingress.allowed and not v.egress.allowed
    assert [d.policy.name for d in v.egress.denials] == ["deny-egress"]


# ------------------------------------------------------------------- peers


def test_pod_selector_alone_is_the_policy_namespace() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]})
    ix = index(p)
    assert ix.evaluate(XA, XB, "tcp", 80).allowed
    v = ix.evaluate(YA, XB, "tcp", 80)
    assert not v.allowed and 'namespace "x" only' in v.ingress.denials[0].reason


def test_namespace_and_pod_selector_in_one_peer_are_anded() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    ix = index(p)
    assert ix.evaluate(pod_ip("y/b"), XA, "tcp", 80).allowed
    reason = ix.evaluate(YA, XA, "tcp", 80).ingress.denials[0].reason
    assert "does not match podSelector pod=b" in reason
    reason = ix.evaluate(pod_ip("z/b"), XA, "tcp", 80).ingress.denials[0].reason
    assert 'namespace "z"' in reason and "namespaceSelector ns=y" in reason


def test_non_pod_addresses_match_only_ip_block() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}}, {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.9/32"]}}]}]})
    ix = index(p)
    v = ix.evaluate(NODE_IP, XA, "tcp", 80)
    assert not v.allowed and "not a pod, so only ipBlock peers can match it" in v.ingress.denials[0].reason
    assert ix.evaluate("203.0.113.8", XA, "tcp", 80).allowed
    v = ix.evaluate(EXTERNAL, XA, "tcp", 80)
    assert not v.allowed and "excluded by except 203.0.113.9/32" in v.ingress.denials[0].reason
    assert not v.egress.isolated and v.egress.subject is None


def test_ip_block_matches_pod_ips_with_an_assumption() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]})
    v = index(p).evaluate(YA, XA, "tcp", 80)
    assert v.allowed and v.ingress.allowed_by is not None and v.ingress.allowed_by.by_ip_block
    assert any("ipBlock" in a.text and a.could_change_outcome for a in v.assumptions)


def test_host_network_pod_is_its_node() -> None:
    host = pod("x/host", {"pod": "a"}, ip=NODE_IP)
    host["spec"]["hostNetwork"] = True
    allow_ns = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    ix = PolicyIndex.build([*model_objects([allow_ns]), host])
    assert ix.pod_at(NODE_IP) is None
    assert not ix.evaluate(NODE_IP, XA, "tcp", 80).allowed  # namespaceSelector {} does not cover it
    v = ix.evaluate(YA, NODE_IP, "tcp", 80)
    assert v.allowed and v.ingress.subject is None  # the pod selector of x/p does not isolate it


def test_missing_namespace_object_is_an_assumption() -> None:
    objs = [o for o in model_objects([]) if not (o["kind"] == "Namespace" and o["metadata"]["name"] == "y")]
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "y"}}}]}]})
    ix = PolicyIndex.build([*objs, p])
    assert any('namespace "y" object is missing' in a.text for a in ix.problems)
    assert ix.evaluate(YA, XA, "tcp", 80).allowed


# ------------------------------------------------------------------- ports


def test_protocol_defaults_to_tcp_and_end_port_ranges() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8080}]}]})
    ix = index(p)
    assert ix.evaluate(YA, XA, "tcp", 8000).allowed and ix.evaluate(YA, XA, "TCP", 8080).allowed
    assert not ix.evaluate(YA, XA, "tcp", 8081).allowed
    v = ix.evaluate(YA, XA, "udp", 8000)
    assert not v.allowed and "8000/UDP is not among 8000-8080/TCP" in v.ingress.denials[0].reason


def test_named_port_resolves_on_destination_pod_for_egress_too() -> None:
    p = policy("x", "p", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                          "egress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]})
    ix = index(p)
    assert ix.evaluate(XA, YA, "udp", 81).allowed
    assert not ix.evaluate(XA, YA, "udp", 80).allowed
    assert not ix.evaluate(XA, YA, "tcp", 81).allowed
    v = ix.evaluate(XA, EXTERNAL, "udp", 81)
    assert not v.allowed and "named ports never match a destination that is not a pod" in v.egress.denials[0].reason


def test_named_port_undefined_on_destination_is_explained() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]})
    v = index(p).evaluate(YA, XA, "tcp", 80)
    assert not v.allowed and "metrics=undefined" in v.ingress.denials[0].reason


# ---------------------------------------------------- replies, enforcement, findings


def test_replies_are_never_blocked() -> None:
    v = index(deny_ingress_x()).evaluate(YA, XA, "tcp", 80, is_reply=True)
    assert v.allowed and v.is_reply and "stateful" in v.ingress.explanation


def test_loopback_is_allowed_with_an_assumption() -> None:
    v = index(deny_ingress_x()).evaluate(XA, XA, "tcp", 80)
    assert v.allowed and any("loopback" in a.text for a in v.assumptions)


def test_unknown_enforcement_is_assumed_enforced() -> None:
    v = index(deny_ingress_x()).evaluate(YA, XA, "tcp", 80)
    assert v.dropped and any("assumed to be enforced" in a.text and a.could_change_outcome for a in v.assumptions)
    assert not index(deny_ingress_x()).evaluate(YA, XA, "tcp", 80, enforced=True).assumptions


def test_not_enforced_deny_is_a_warning_and_no_drop() -> None:
    v = index(deny_ingress_x()).evaluate(YA, XA, "tcp", 80, enforced=False)
    assert not v.allowed and not v.dropped
    [f] = deny_findings(v, "pod:y/a", "pod:x/a")
    assert f.severity == Severity.WARNING and f.hop == "pod:x/a"
    assert policy_step(v, v.ingress).action == StepAction.INFO


def test_deny_finding_names_objects_and_reason() -> None:
    allow_web = policy("x", "allow-web", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "web"}}}], "ports": [{"port": 8080}]}]})
    v = index(deny_ingress_x(), allow_web).evaluate(YA, XA, "tcp", 8080)
    [f] = deny_findings(v, "pod:y/a", "pod:x/a")
    assert f.code == "NETWORK_POLICY_DENY" and f.severity == Severity.ERROR and f.hop == "pod:x/a"
    assert f.message.startswith(f"network policy verdict of x/deny-ingress, x/allow-web: deny the packet from {YA} "
                                f"to {XA}:8080, because pod x/a is isolated for ingress and no rule allows source "
                                f"pod y/a")
    assert 'namespace "y"' in f.message and "namespaceSelector ns=web" in f.message
    assert "no ingress rules" in f.message
    assert f.evidence["direction"] == "ingress" and f.evidence["policy_verdict"]["isolated"]
    json.dumps(f.model_dump(mode="json"))
    assert policy_step(v, v.ingress).action == StepAction.DROP


def test_port_mismatch_is_told_apart_from_peer_mismatch() -> None:
    p = policy("x", "p", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}],
                                                          "ports": [{"port": 443}]}]})
    v = index(p).evaluate(YA, XA, "tcp", 80)
    assert v.ingress.denials[0].reason.startswith("rule #0 port mismatch (80/TCP is not among 443/TCP")


def test_icmp_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="TCP, UDP and SCTP"):
        index().evaluate(YA, XA, "icmp", 0)


# ------------------------------------------------------------ objects in, matrix out


def test_build_from_multi_document_yaml_with_api_lists() -> None:
    objs = model_objects([deny_ingress_x()])
    pods = [o for o in objs if o["kind"] == "Pod"]
    for o in pods:
        del o["kind"]  # API lists omit item kinds
    rest = [o for o in objs if o.get("kind")]
    text = yaml.safe_dump_all([{"kind": "PodList", "apiVersion": "v1", "items": pods},
                               {"kind": "List", "apiVersion": "v1", "items": rest}])
    ix = PolicyIndex.build(yaml.safe_load_all(text))
    assert len(ix.pods) == 9 and not ix.evaluate(YA, XA, "tcp", 80).allowed


def test_terminated_pod_ip_goes_to_the_live_pod() -> None:
    old = pod("y/old", ip=XA)
    old["status"] = {"phase": "Succeeded", "podIP": XA, "podIPs": [{"ip": XA}]}
    ix = PolicyIndex.build([old, *model_objects([])])
    live = ix.pod_at(XA)
    assert live is not None and live.key == "x/a"


def test_matrix_text_json_and_namespace_filter() -> None:
    m = compute_matrix(model_objects([deny_ingress_x()]), namespace="x", port=80, protocol="tcp")
    assert m.pods == ["x/a", "x/b", "x/c"] and m.protocol == "TCP"
    assert not m.get("x/a", "x/b") and m.get("x/a", "x/a")
    data = m.to_json()
    json.dumps(data)
    assert data["denied_count"] == 6 and data["denied"][0] == {"src": "x/a", "dst": "x/b", "denied_by": "ingress"}
    text = m.to_text()
    assert "x/a" in text and " X" in text and "80/TCP" in text


def test_matrix_skips_pods_without_ip() -> None:
    pending = pod("x/pending", ip="10.9.9.9")
    pending["status"] = {"phase": "Pending"}
    m = compute_matrix([*model_objects([]), pending])
    assert "x/pending" not in m.pods and m.skipped == ["x/pending (no pod IP)"]


def test_a_non_pod_end_is_named_by_its_own_side() -> None:
    """The egress side of a pod → external packet is the pod; the ingress side is the external address."""
    to_outside = index().evaluate(XA, EXTERNAL, "tcp", 80)
    assert to_outside.ingress.explanation == "the destination is not a pod: no ingress NetworkPolicy applies"
    from_outside = index().evaluate(EXTERNAL, XA, "tcp", 80)
    assert from_outside.egress.explanation == "the source is not a pod: no egress NetworkPolicy applies"


@pytest.mark.parametrize(("port", "protocol"), [(0, "tcp"), (70000, "tcp"), (True, "tcp"), ("80", "tcp"),
                                                (80, "icmp")])
def test_matrix_refuses_what_a_diagnosis_refuses(port: object, protocol: str) -> None:
    with pytest.raises(ValueError, match=r"port|protocol"):
        compute_matrix(model_objects([]), port=port, protocol=protocol)  # type: ignore[arg-type]
