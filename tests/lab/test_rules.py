"""Pure rule generators: kube-proxy naming/semantics and NetworkPolicy translation, without namespaces."""

from __future__ import annotations

from lab import kubeproxy, netpol
from lab.dataplane import node_ruleset
from lab.iptables import chain_hash
from lab.scenario import Scenario, resolve
from tests.lab.conftest import example


def _resolved(name: str):
    return resolve(Scenario.load(example(name)))


def test_chain_names_match_upstream_kube_proxy() -> None:
    # The kube-dns chains every kubeadm cluster shows in `iptables-save`.
    assert chain_hash("KUBE-SVC-", "kube-system/kube-dns:dns", "udp") == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert chain_hash("KUBE-SVC-", "kube-system/kube-dns:dns-tcp", "tcp") == "KUBE-SVC-ERIFXISQEP7F7OF4"


def test_service_rules_basic() -> None:
    text = kubeproxy.restore_text(_resolved("basic"), "node-1")
    assert '-m comment --comment "shop/api:http cluster IP"' in text
    assert "--probability 0.5000000000" in text
    assert "-j DNAT --to-destination 10.244.2.2:8080" in text
    assert "-A KUBE-NODEPORTS -m comment --comment shop/api:http -m tcp -p tcp --dport 30000" in text
    nat = text.split("*nat")[1]
    assert nat.strip().splitlines()[-2].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")


def test_no_endpoints_and_local_policy_legacy() -> None:
    sc = _resolved("legacy")
    node3 = kubeproxy.restore_text(sc, "node-3")
    assert '"prod/nothing has no endpoints" -m tcp -p tcp -d 10.96.0.103 --dport 80 -j REJECT' in node3
    assert '"prod/web:http has no local endpoints"' in node3  # web-3 on node-3 is not ready
    node1 = kubeproxy.restore_text(sc, "node-1")
    assert "KUBE-SVL-" in node1 and "-s 203.0.113.16/28" in node1
    assert "10.244.3.2:80" not in node1  # the not-ready endpoint is never a DNAT target
    assert "web-headless" not in node1


def test_label_selector_operators() -> None:
    sel = netpol.LabelSelector.model_validate({"matchLabels": {"app": "a"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["x", "y"]},
        {"key": "legacy", "operator": "DoesNotExist"},
    ]})
    assert sel.matches({"app": "a", "tier": "x"})
    assert not sel.matches({"app": "a", "tier": "z"})
    assert not sel.matches({"app": "a", "tier": "x", "legacy": "1"})
    assert netpol.LabelSelector().matches({"anything": "goes"})


def test_policy_types_default() -> None:
    ingress_only = netpol.PolicySpec.model_validate({"podSelector": {}, "egress": []})
    assert ingress_only.types() == {"Ingress"}
    both = netpol.PolicySpec.model_validate({"podSelector": {}, "egress": [{}]})
    assert both.types() == {"Ingress", "Egress"}


def test_policy_rules_name_the_policy_and_resolve_named_ports() -> None:
    sc = _resolved("dns-internet")
    text = node_ruleset(sc, "node-2")
    assert "-j KUBE-ROUTER-FORWARD" in text.split("*nat")[0].split("-A FORWARD")[1]  # first in FORWARD
    assert '"apps/app-egress egress rule 0"' in text
    coredns = sc.pod("kube-system/coredns").ip
    assert f"-d {coredns}/32 -p udp -m udp --dport 53" in text  # named port "dns" on the peer pod
    assert "-d 10.0.0.0/8 -j RETURN" in text  # ipBlock except
    assert '"egress of apps/app denied by apps/app-egress" -j DROP' in text
    assert "KUBE-PODIN-" not in text  # nothing selects a pod for ingress
