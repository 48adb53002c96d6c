"""felix's policy layout (lab/felix.py) without namespaces: names and marks as felix's renderer makes them,
and agreement of the two judges the product has: the semantic policy evaluator and the netfilter tracer
walking felix's chains and ipsets, on every pod pair, port and protocol of a policy set."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from lab import felix
from lab.dataplane import node_ruleset, veth_name
from lab.objects import scenario_objects
from lab.scenario import ResolvedScenario, Scenario, resolve
from services.simulator.dataplane.netfilter import (
    Branch,
    FlowState,
    TraceContext,
    Tracer,
    parse_ipset_save,
    parse_iptables_save,
)
from services.simulator.dataplane.netfilter.felix import policies_behind, tier_drop_policies
from services.simulator.policy import PolicyIndex

PORTS = [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"},
         {"name": "metrics", "containerPort": 9090, "protocol": "UDP"}]


def _scenario(policies: list[dict[str, Any]], **extra: Any) -> ResolvedScenario:
    pods = [{"name": f"{role}-{i}", "namespace": ns, "node": "node-1", "labels": {"app": role},
             "containers": [{"name": "c", "ports": PORTS}]}
            for ns in ("shop", "web") for i, role in enumerate(("client", "api", "db"))]
    return resolve(Scenario.model_validate({
        "name": "felix", "cni": "calico", "nodes": [{"name": "node-1"}], "dns": False, "internet": False,
        "namespaces": [{"name": "shop", "labels": {"team": "shop"}}, {"name": "web", "labels": {"team": "web"}}],
        "pods": pods, "networkPolicies": policies, **extra}))


def _policy(name: str, spec: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


API = {"matchLabels": {"app": "api"}}
POLICY_SETS: dict[str, list[dict[str, Any]]] = {
    "deny_all_ingress": [_policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]})],
    "egress_only_api": [_policy("egress", {"podSelector": {"matchLabels": {"app": "client"}},
                                           "policyTypes": ["Egress"],
                                           "egress": [{"to": [{"podSelector": API}], "ports": [{"port": 8080}]}]})],
    "namespace_selector": [_policy("from-web", {"podSelector": API, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}, "podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["client", "db"]}]}}]}]})],
    "port_range_and_named": [_policy("ports", {"podSelector": API, "ingress": [{"ports": [
        {"port": 8000, "endPort": 8080}, {"port": "dns", "protocol": "UDP"}, {"port": "metrics"}]}]})],
    "ipblock_except": [_policy("cidr", {"podSelector": API, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.0.64/29", "10.244.0.72/32"]}}]}]})],
    "grouped_same_selector": [  # two policies with one selector: felix's cali-gi- group chain
        _policy("a-from-db", {"podSelector": API, "ingress": [{"from": [{"podSelector": {"matchLabels": {
            "app": "db"}}}]}]}),
        _policy("b-from-client", {"podSelector": API, "ingress": [{"from": [{"podSelector": {"matchLabels": {
            "app": "client"}}}], "ports": [{"port": "http"}]}]})],
    "egress_named_port_any": [_policy("named", {"podSelector": {}, "policyTypes": ["Egress"],
                                                "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]},
                                      ns="web")],
}


def _tracer(rs: ResolvedScenario) -> Tracer:
    node = felix.node(rs, "node-1", lambda key: veth_name(key, "calico"))
    text = node_ruleset(rs, "node-1").split("*nat")[0]
    return Tracer(parse_iptables_save(text), TraceContext.from_strings(
        node_ips=["172.30.0.2"], ipsets=parse_ipset_save(node.ipset_restore())))


@pytest.mark.parametrize("name", sorted(POLICY_SETS))
def test_felix_chains_and_the_policy_evaluator_agree(name: str) -> None:
    rs = _scenario(POLICY_SETS[name])
    tracer = _tracer(rs)
    index = PolicyIndex.build(scenario_objects(rs))
    pods = [p for p in rs.pods if not p.spec.host_network]
    wrong = []
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            for proto, port in (("tcp", 8080), ("tcp", 8000), ("tcp", 8081), ("udp", 53), ("udp", 9090)):
                st = FlowState(src=ipaddress.ip_address(src.ip), dst=ipaddress.ip_address(dst.ip), protocol=proto,
                               sport=40000, dport=port, iif=veth_name(src.spec.key, "calico"),
                               oif=veth_name(dst.spec.key, "calico"))
                (branch,) = tracer.run_hook([Branch(state=st)], "FORWARD")
                kernel = branch.verdict != "DROP"
                model = index.evaluate(src.ip, dst.ip, proto.upper(), port).allowed
                if kernel != model:
                    wrong.append(f"{src.spec.key} -> {dst.spec.key} {port}/{proto}: felix {kernel}, model {model}")
    assert not wrong, "\n".join(wrong)


def test_names_and_marks_follow_felix() -> None:
    rs = _scenario(POLICY_SETS["grouped_same_selector"] + POLICY_SETS["ipblock_except"])
    text = node_ruleset(rs, "node-1")
    iface = veth_name("shop/api-1", "calico")
    assert f"-i {iface} -g cali-fw-{iface}" in text and f"-o {iface} -g cali-tw-{iface}" in text
    assert '"Unknown interface" -j DROP' in text
    assert "-A cali-pi-knp/shop/cidr " in text  # cali-pi- + the policy ID when it fits 28 characters
    long = felix.policy_chain("ingress", felix.parse([_policy("a-policy-with-a-long-name", {"podSelector": {}})])[0])
    assert len(long) == 28 and long.startswith("cali-pi-_")  # hashed like libcalico-go GetLengthLimitedID
    assert "-A cali-gi-" in text  # the two same-selector policies share a group chain
    assert "-j MARK --set-xmark 0x10000/0x10000" in text  # the accept mark, IptablesMarkMask's first bit
    assert "-m mark --mark 0x0/0x20000" in text  # the pass mark
    assert '"End of tier default. Drop if no policies passed packet" -j DROP' in text
    assert "-j MARK --set-xmark 0x80000/0x180000" in text  # the except block starts with scratch-0 set
    assert all(len(n) <= 31 and n.startswith(("cali40s:", "cali40n:"))
               for n in felix.node(rs, "node-1", lambda k: veth_name(k, "calico")).ipsets)
    forward = [line for line in text.split("*nat")[0].splitlines() if line.startswith("-A FORWARD")]
    assert forward[0].endswith("-j cali-FORWARD") and forward[-1].endswith("-j MARK --set-xmark 0x10000/0x10000")


def test_felix_configuration_changes_the_layout() -> None:
    rs = _scenario(POLICY_SETS["deny_all_ingress"], felix={
        "iptablesMarkMask": "0xff000000", "chainInsertMode": "append", "defaultEndpointToHostAction": "DROP"})
    text = node_ruleset(rs, "node-1").split("*nat")[0]
    assert "-j MARK --set-xmark 0x1000000/0x1000000" in text and "--mark 0x0/0x2000000" in text
    forward = [line for line in text.splitlines() if line.startswith("-A FORWARD")]
    assert "-j KUBE-" in forward[0] and any(line.endswith("-j cali-FORWARD") for line in forward[1:])
    assert '"Configured DefaultEndpointToHostAction" -j DROP' in text
    with pytest.raises(ValueError, match="fewer than the 5 mark bits"):
        _scenario([], felix={"iptablesMarkMask": "0xf0000"})


def test_the_walk_reads_the_policies_behind_a_tier_drop() -> None:
    rs = _scenario(POLICY_SETS["grouped_same_selector"])
    parsed = parse_iptables_save(node_ruleset(rs, "node-1").split("*nat")[0])
    chain = f"cali-tw-{veth_name('shop/api-1', 'calico')}"
    assert policies_behind(parsed, "filter", chain) == ["shop/a-from-db", "shop/b-from-client"]
    tw = parsed.chain("filter", chain)
    assert tw is not None
    drop = next(line for line in tw.lines if "End of tier" in line)
    assert tier_drop_policies([parsed], "filter", chain, drop) == ["shop/a-from-db", "shop/b-from-client"]
    assert tier_drop_policies([parsed], "filter", chain, "-A x -j DROP") == []  # only the tier drop speaks for them


def test_older_felix_names_are_read_too() -> None:
    """Calico < v3.30 (v3.28 here): k8s policies are `<ns>/knp.default.<name>`, chain names hashed, "Drop if no
    policies passed packet" without the tier."""
    save = """*filter
:cali-tw-cali1234 - [0:0]
:cali-pi-_Eh9OFfGuG6iGsr2WyRk - [0:0]
-A cali-tw-cali1234 -m comment --comment "cali:x" -m mark --mark 0x0/0x20000 -j cali-pi-_Eh9OFfGuG6iGsr2WyRk
-A cali-tw-cali1234 -m comment --comment "cali:y" -m comment --comment "Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
-A cali-pi-_Eh9OFfGuG6iGsr2WyRk -m comment --comment "cali:z" -m comment --comment "Policy shop/knp.default.deny ingress"
COMMIT
"""  # noqa: E501
    parsed = parse_iptables_save(save)
    tw = parsed.chain("filter", "cali-tw-cali1234")
    assert tw is not None
    drop = tw.lines[1]
    assert tier_drop_policies([parsed], "filter", "cali-tw-cali1234", drop) == ["shop/deny"]
