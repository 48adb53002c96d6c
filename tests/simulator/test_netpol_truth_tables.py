"""Upstream Kubernetes e2e NetworkPolicy truth tables, transcribed.

Source: kubernetes/kubernetes test/e2e/network/netpol/network_policy.go (policies.go for the
helpers, model.go for the model, reachability.go for Expect*). Every scenario runs on the full
x/y/z by a/b/c model and checks ALL 72 non-loopback pairs (upstream ignores loopback too)
twice: through the matrix fast path and through the explained `evaluate`.
Where a newer upstream test uses fewer pods, the expectation is the same rule extended to
the 9-pod model (said in the scenario's comment). Scenarios marked "netdiag" are in the
upstream style but not in upstream (endPort has no e2e truth table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from services.simulator.matrix import compute_matrix
from services.simulator.policy import PolicyIndex
from tests.simulator.netpol_model import (
    ALL_PODS,
    Reachability,
    make_large_cidr_for_ip,
    model_objects,
    pod_ip,
    policy,
)

NS_KEY = "kubernetes.io/metadata.name"
R = Reachability
UDP53 = {"protocol": "UDP", "port": 53}


def labels(**kv: str) -> dict[str, Any]:
    return {"matchLabels": kv}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}


def ing(ns: str, name: str, target: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    """GenNetworkPolicyWithName...(SetSpecIngressRules(rules...)): policyTypes [Ingress]."""
    return policy(ns, name, {"podSelector": target, "policyTypes": ["Ingress"], "ingress": list(rules)})


def egr(ns: str, name: str, target: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    return policy(ns, name, {"podSelector": target, "policyTypes": ["Egress"], "egress": list(rules)})


POD_A = labels(pod="a")


@dataclass
class Case:
    port: int
    protocol: str
    expected: Reachability


@dataclass
class Scenario:
    policies: list[dict[str, Any]]
    cases: list[Case]
    pod_labels: dict[str, dict[str, str]] | None = None
    ns_labels: dict[str, dict[str, str]] | None = None


def tcp(port: int, expected: Reachability) -> Case:
    return Case(port, "TCP", expected)


SCENARIOS: dict[str, Callable[[], Scenario]] = {}


def scenario(fn: Callable[[], Scenario]) -> Callable[[], Scenario]:
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def default_deny_ingress() -> Scenario:
    return Scenario([ing("x", "deny-ingress", {})], [tcp(80, R().expect_peer(None, None, "x", None, False))])


@scenario
def default_deny_all() -> Scenario:
    p = policy("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                 "ingress": [], "egress": []})
    return Scenario([p], [tcp(80, R().expect_peer(None, None, "x", None, False)
                                  .expect_peer("x", None, None, None, False))])


@scenario
def deny_all_tcp_allow_dns() -> Scenario:
    # policies.go GetDenyAllWithEgressDNS
    p = policy("x", "deny-all-tcp-allow-dns", {"podSelector": {}, "policyTypes": ["Egress", "Ingress"],
                                                "ingress": [], "egress": [{"ports": [UDP53]}]})
    return Scenario([p], [tcp(80, R().expect_peer(None, None, "x", None, False)
                                  .expect_peer("x", None, None, None, False))])


@scenario
def allow_from_pods_in_server_namespace_by_pod_selector() -> Scenario:
    p = ing("x", "x-a-allows-x-b", POD_A, {"from": [{"podSelector": labels(pod="b")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))])


@scenario
def allow_ingress_for_a_target() -> Scenario:
    # deny-all in x plus allow-all-to-a; x/c follows x/b on the 9-pod model
    allow = ing("x", "allow-all-to-a", POD_A, {"from": [{"podSelector": {}, "namespaceSelector": {}}]})
    return Scenario([ing("x", "deny-all", {}), allow], [tcp(80, R().expect_all_ingress("x/a", True)
                                                              .expect_all_ingress("x/b", False)
                                                              .expect_all_ingress("x/c", False))])


@scenario
def allow_ingress_from_all_namespaces() -> Scenario:
    p = ing("x", "allow-from-another-ns", POD_A, {"from": [{"namespaceSelector": {"matchLabels": {}}}]})
    return Scenario([p], [tcp(80, R())])


@scenario
def allow_only_from_different_namespace_by_namespace_selector() -> Scenario:
    p = ing("x", "allow-client-a-via-ns-selector", POD_A, {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"})}]})
    return Scenario([p], [tcp(80, R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False))])


@scenario
def pod_selector_match_expressions() -> Scenario:
    p = ing("x", "x-a-allows-x-b", POD_A, {"from": [{"podSelector": expr("pod", "In", "b")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))])


@scenario
def namespace_selector_match_expressions() -> Scenario:
    p = ing("x", "allow-ns-y-match-selector", POD_A, {"from": [{"namespaceSelector": expr(NS_KEY, "In", "y")}]})
    return Scenario([p], [tcp(80, R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False))])


@scenario
def pod_selector_or_namespace_selector() -> Scenario:
    p = ing("x", "allow-ns-y-match-selector", POD_A,
            {"from": [{"namespaceSelector": expr(NS_KEY, "NotIn", "x")}, {"podSelector": labels(pod="b")}]})
    return Scenario([p], [tcp(80, R().expect("x/a", "x/a", False).expect("x/c", "x/a", False))])


@scenario
def pod_selector_and_namespace_selector() -> Scenario:
    p = ing("x", "allow-ns-y-podselector-and-nsselector", POD_A,
            {"from": [{"namespaceSelector": expr(NS_KEY, "NotIn", "x"), "podSelector": labels(pod="b")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True)
                              .expect("z/b", "x/a", True))])


@scenario
def multiple_pod_selectors_and_namespace_selectors() -> Scenario:
    # pods {b,c} in namespaces other than x; on 9 pods: y/b, y/c, z/b, z/c
    p = ing("x", "allow-ns-y-z-pod-b-c", POD_A,
            {"from": [{"namespaceSelector": expr(NS_KEY, "NotIn", "x"), "podSelector": expr("pod", "In", "b", "c")}]})
    expected = R().expect_all_ingress("x/a", False)
    for src in ("y/b", "y/c", "z/b", "z/c"):
        expected.expect(src, "x/a", True)
    return Scenario([p], [tcp(80, expected)])


@scenario
def any_pod_selectors() -> Scenario:
    p = ing("x", "allow-ns-x-pod-b-c", POD_A,
            {"from": [{"podSelector": labels(pod="b")}, {"podSelector": labels(pod="c")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
                              .expect("x/c", "x/a", True))])


@scenario
def pod_in_different_namespace_by_pod_and_namespace_selector() -> Scenario:
    p = ing("x", "allow-ns-y-pod-a-via-namespace-pod-selector", POD_A,
            {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"}), "podSelector": labels(pod="a")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))])


def _port81_from_y() -> dict[str, Any]:
    return ing("x", "allow-client-a-via-ns-selector", POD_A,
               {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"})}], "ports": [{"port": 81, "protocol": "TCP"}]})


def _allow_from_y_on_81() -> Reachability:
    return (R().expect_peer("x", None, "x", "a", False).expect_peer("y", None, "x", "a", True)
            .expect_peer("z", None, "x", "a", False))


@scenario
def ports() -> Scenario:
    return Scenario([_port81_from_y()], [tcp(81, _allow_from_y_on_81()), tcp(80, R().expect_all_ingress("x/a", False))])


@scenario
def stacked_policies_with_overlapping_pod_selectors() -> Scenario:
    port80 = ing("x", "allow-client-a-via-ns-selector-80", POD_A,
                 {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"})}], "ports": [{"port": 80, "protocol": "TCP"}]})
    return Scenario([_port81_from_y(), port80], [tcp(81, _allow_from_y_on_81()), tcp(80, _allow_from_y_on_81())])


@scenario
def allow_all_policy() -> Scenario:
    # GetAllowIngress: no policyTypes (defaulted to Ingress), ingress: [{}]
    p = policy("x", "allow-all", {"podSelector": {"matchLabels": {}}, "ingress": [{}]})
    return Scenario([p], [tcp(80, R()), tcp(81, R())])


@scenario
def ingress_on_one_named_port() -> Scenario:
    p = ing("x", "allow-all", {"matchLabels": {}}, {"ports": [{"port": "serve-81-tcp"}]})
    return Scenario([p], [tcp(81, R()), tcp(80, R().expect_peer(None, None, "x", None, False))])


@scenario
def ingress_from_namespace_on_one_named_port() -> Scenario:
    p = ing("x", "allow-client-a-via-ns-selector-80", POD_A,
            {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"})}],
             "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]})
    return Scenario([p], [
        tcp(80, R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False)),
        tcp(81, R().expect_all_ingress("x/a", False)),
    ])


@scenario
def egress_on_one_named_port_with_dns() -> Scenario:
    # policies.go GetAllowEgressByPort: the named port plus UDP 53 for DNS
    p = egr("x", "allow-egress", {"matchLabels": {}}, {"ports": [{"port": "serve-80-tcp"}, UDP53]})
    return Scenario([p], [tcp(80, R()), tcp(81, R().expect_peer("x", None, None, None, False))])


@scenario
def updated_policy_to_deny_all() -> Scenario:
    # the allow-all policy after its update to `ingress: []`
    p = ing("x", "allow-all-mutate-to-deny-all", {"matchLabels": {}})
    return Scenario([p], [tcp(81, R().expect_peer(None, None, "x", None, False))])


@scenario
def ingress_from_updated_namespace() -> Scenario:
    p = ing("x", "allow-client-a-via-ns-selector", POD_A, {"from": [{"namespaceSelector": labels(ns2="updated")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect_peer("y", None, None, None, True))],
                    ns_labels={"y": {"ns2": "updated"}})


@scenario
def ingress_from_updated_pod() -> Scenario:
    p = ing("x", "allow-client-a-via-pod-selector", POD_A,
            {"from": [{"podSelector": labels(pod="b", pod2="updated")}]})
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
                    pod_labels={"x/b": {"pod2": "updated"}})


@scenario
def deny_ingress_from_pods_in_other_namespaces() -> Scenario:
    p = ing("x", "deny-empty-policy", {}, {"from": [{"podSelector": {"matchLabels": {}}}]})
    expected = R().expect_peer("y", None, "x", None, False).expect_peer("z", None, "x", None, False)
    return Scenario([p], [tcp(80, expected)])


@scenario
def deny_ingress_to_updated_pod() -> Scenario:
    p = ing("x", "deny-ingress-via-label-selector", labels(target="isolated"))
    return Scenario([p], [tcp(80, R().expect_all_ingress("x/a", False))], pod_labels={"x/a": {"target": "isolated"}})


@scenario
def deny_egress_from_pod_a() -> Scenario:
    return Scenario([egr("x", "deny-egress-pod-a", POD_A)], [tcp(80, R().expect_all_egress("x/a", False))])


@scenario
def deny_egress_from_all_pods_in_namespace() -> Scenario:
    return Scenario([egr("x", "deny-egress-ns-x", {})], [tcp(80, R().expect_peer("x", None, None, None, False))])


@scenario
def ingress_and_egress_together() -> Scenario:
    p = policy("x", "allow-client-a-via-pod-selector", {
        "podSelector": POD_A, "policyTypes": ["Egress", "Ingress"],
        "ingress": [{"from": [{"podSelector": labels(pod="b")}]}],
        "egress": [{"ports": [{"port": 80}]}],
    })
    return Scenario([p], [
        tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
        tcp(81, R().expect_all_ingress("x/a", False).expect_all_egress("x/a", False).expect("x/b", "x/a", True)),
    ])


@scenario
def egress_denied_on_client_even_if_server_allows() -> Scenario:
    peer = {"namespaceSelector": labels(**{NS_KEY: "y"}), "podSelector": labels(pod="a")}
    from_xa = {"from": [{"namespaceSelector": labels(**{NS_KEY: "x"}), "podSelector": labels(pod="a")}]}
    return Scenario(
        [egr("x", "allow-to-ns-y-pod-a", POD_A, {"to": [peer]}),
         ing("y", "allow-from-xa-on-ya-match-selector", POD_A, from_xa),
         ing("y", "allow-from-xa-on-yb-match-selector", labels(pod="b"), from_xa)],
        [tcp(80, R().expect_peer("x", "a", None, None, False).expect_peer(None, None, "y", "a", False)
             .expect_peer("x", "a", "y", "a", True).expect_peer(None, None, "y", "b", False))],
    )


@scenario
def egress_to_server_in_other_namespace_by_pod_and_namespace_selector() -> Scenario:
    peer = {"namespaceSelector": labels(**{NS_KEY: "y"}), "podSelector": labels(pod="a")}
    return Scenario([egr("x", "allow-to-ns-y-pod-a", POD_A, {"to": [peer]})],
                    [tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "y/a", True))])


@scenario
def ingress_any_port_on_specific_protocol() -> Scenario:
    p = ing("x", "allow-ingress-by-proto", POD_A, {"ports": [{"protocol": "TCP"}]})
    return Scenario([p], [tcp(80, R()), Case(80, "UDP", R().expect_peer(None, None, "x", "a", False))])


@scenario
def ingress_allow_all_takes_precedence() -> Scenario:
    only80 = ing("x", "allow-ingress-port-80", {"matchLabels": {}}, {"ports": [{"port": 80}]})
    allow_all = ing("x", "allow-ingress", {"matchLabels": {}}, {})
    return Scenario([only80, allow_all], [tcp(81, R())])


@scenario
def ingress_port_80_only_before_allow_all() -> Scenario:
    only80 = ing("x", "allow-ingress-port-80", {"matchLabels": {}}, {"ports": [{"port": 80}]})
    return Scenario([only80], [tcp(81, R().expect_peer(None, None, "x", None, False))])


@scenario
def egress_allow_all_takes_precedence() -> Scenario:
    only80 = egr("x", "allow-egress-port-80", {"matchLabels": {}}, {"ports": [{"port": 80}]})
    allow_all = egr("x", "allow-egress", {"matchLabels": {}}, {})
    return Scenario([only80, allow_all], [tcp(81, R())])


@scenario
def egress_port_80_only_before_allow_all() -> Scenario:
    only80 = egr("x", "allow-egress-port-80", {"matchLabels": {}}, {"ports": [{"port": 80}]})
    return Scenario([only80], [tcp(81, R().expect_peer("x", None, None, None, False))])


@scenario
def egress_to_server_in_cidr_block() -> Scenario:
    # GetAllowEgressByCIDR: the pod's /32 plus a DNS rule
    p = egr("x", "allow-client-a-via-cidr-egress-rule", POD_A,
            {"to": [{"ipBlock": {"cidr": f"{pod_ip('y/b')}/32"}}]}, {"ports": [UDP53]})
    return Scenario([p], [tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "y/b", True))])


@scenario
def egress_cidr_except_clause() -> Scenario:
    block = {"cidr": make_large_cidr_for_ip(pod_ip("x/b")), "except": [f"{pod_ip('x/b')}/32"]}
    p = egr("x", "allow-client-a-via-cidr-egress-rule", POD_A, {"to": [{"ipBlock": block}]})
    return Scenario([p], [tcp(80, R().expect("x/a", "x/b", False))])


@scenario
def egress_cidr_overlapping_except_after_update() -> Scenario:
    # the same-named policy updated to allow only x/b's /32
    p = egr("x", "allow-client-a-via-cidr-egress-rule", POD_A, {"to": [{"ipBlock": {"cidr": f"{pod_ip('x/b')}/32"}}]})
    return Scenario([p], [tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "x/b", True))])


@scenario
def ingress_and_egress_controlled_independently() -> Scenario:
    allow_egress = egr("x", "allow-egress-for-target", POD_A, {})
    deny_ingress = ing("x", "deny-ingress-via-label-selector", POD_A)
    return Scenario([allow_egress, deny_ingress], [tcp(80, R().expect_all_ingress("x/a", False))])


@scenario
def sctp_is_not_tcp() -> Scenario:
    sctp = ing("x", "allow-only-sctp-ingress-on-port-81", POD_A, {"ports": [{"port": 81, "protocol": "SCTP"}]})
    return Scenario([ing("x", "deny-ingress", {}), sctp], [tcp(81, R().expect_peer(None, None, "x", None, False))])


@scenario
def sctp_policy_isolates_for_tcp() -> Scenario:
    sctp = ing("x", "allow-only-sctp-ingress-on-port-80", POD_A, {"ports": [{"port": 80, "protocol": "SCTP"}]})
    return Scenario([sctp], [tcp(81, R().expect_all_ingress("x/a", False))])


@scenario
def udp_only_policy_denies_tcp() -> Scenario:
    udp = ing("x", "allow-only-udp-ingress-on-port-81", POD_A, {"ports": [{"port": 81, "protocol": "UDP"}]})
    return Scenario([udp], [tcp(81, R().expect_all_ingress("x/a", False)), Case(81, "UDP", R())])


@scenario
def namespace_selector_default_ns_label() -> Scenario:
    p = ing("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", POD_A,
            {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"})}]})
    return Scenario([p], [tcp(80, R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False))])


@scenario
def egress_namespace_selector_not_in_default_ns_label() -> Scenario:
    p = egr("x", "allow-ns-y-match-selector-for-immutable-ns-label", POD_A,
            {"to": [{"namespaceSelector": expr(NS_KEY, "NotIn", "y")}]})
    return Scenario([p], [tcp(80, R().expect_peer("x", "a", "y", None, False))])


@scenario
def udp_default_deny_ingress() -> Scenario:
    return Scenario([ing("x", "deny-all", {})], [Case(80, "UDP", R().expect_peer(None, None, "x", None, False))])


@scenario
def sctp_pod_and_namespace_selector() -> Scenario:
    p = ing("x", "allow-ns-y-pod-a-via-namespace-pod-selector", POD_A,
            {"from": [{"namespaceSelector": labels(**{NS_KEY: "y"}), "podSelector": labels(pod="a")}]})
    return Scenario([p], [Case(80, "SCTP", R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))])


@scenario
def netdiag_end_port_range() -> Scenario:
    # netdiag: ports 80-81 from namespace y; a second policy on x/b allows only 80-80
    rng = ing("x", "allow-y-80-81", POD_A, {"from": [{"namespaceSelector": labels(ns="y")}],
                                             "ports": [{"port": 80, "endPort": 81}]})
    single = ing("x", "allow-80-80", labels(pod="b"), {"ports": [{"port": 80, "endPort": 80}]})
    from_y = R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False)
    return Scenario([rng, single], [
        tcp(80, from_y),
        tcp(81, R().expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False)
            .expect_all_ingress("x/b", False)),
    ])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_truth_table(name: str) -> None:
    sc = SCENARIOS[name]()
    objects = model_objects(sc.policies, sc.pod_labels, sc.ns_labels)
    index = PolicyIndex.build(objects)
    assert not index.problems
    for case in sc.cases:
        matrix = compute_matrix(index, port=case.port, protocol=case.protocol)
        assert sorted(matrix.pods) == sorted(ALL_PODS)
        wrong = []
        for src in ALL_PODS:
            for dst in ALL_PODS:
                if src == dst:
                    continue  # upstream ignores loopback (ignoreLoopback = true)
                want = case.expected.expected[(src, dst)]
                fast = matrix.get(src, dst)
                explained = index.evaluate(pod_ip(src), pod_ip(dst), case.protocol, case.port)
                if fast != want or explained.allowed != want:
                    wrong.append(f"{src}->{dst}: want {want}, matrix {fast}, evaluate {explained.allowed} "
                                 f"({explained.egress.explanation} / {explained.ingress.explanation})")
        assert not wrong, f"{name} {case.port}/{case.protocol}:\n" + "\n".join(wrong) + "\n" + matrix.to_text()


def test_at_least_fifteen_upstream_scenarios() -> None:
    assert len([n for n in SCENARIOS if not n.startswith("netdiag")]) >= 15
