"""kube-proxy nftables mode in the lab: real probes, and the nftables tracer over the collected `nft -j` agrees.

The node's netfilter state is read by the collector's own reader inside the node namespace (iptables-nft
save text for flannel/policy rules, `nft -j` for the `ip kube-proxy` table) and traced with
`hooks.run_hook` through PREROUTING → INPUT | FORWARD → POSTROUTING.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from lab import kubeproxy_nft, netns
from lab.dataplane import Lab
from lab.scenario import Scenario, resolve
from services.collector.reader.netfilter import NftCache, read_netfilter
from services.simulator.dataplane.hooks import run_hook
from services.simulator.dataplane.netfilter import Branch, FlowState, TraceContext, Tracer, parse_iptables_save
from services.simulator.dataplane.nftables import parse_nft_json
from tests.lab.conftest import MakeLab, example

OUTCOME = {"connected": "ACCEPT", "reply": "ACCEPT", "refused": "REJECT", "timeout": "DROP"}


@pytest.fixture(scope="module")
def lab(make_module_lab: MakeLab) -> Lab:
    return make_module_lab("nftables")


def test_generator_matches_upstream_layout() -> None:
    sc = resolve(Scenario.load(example("nftables")))
    script = kubeproxy_nft.nft_script(sc, "node-1")
    for needle in ("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ;",
                   "ip daddr . meta l4proto . th dport vmap @service-ips",
                   "type nat hook prerouting priority -100 ;", "masquerade fully-random",
                   "numgen random mod 2 vmap",
                   "add chain ip kube-proxy service-NWBZK7IH-kube-system/kube-dns/tcp/dns-tcp",
                   ": goto reject-chain"):
        assert needle in script


def _trace(lab: Lab, node: str, src: str, dst: str, port: int, proto: str) -> list[Branch]:
    errors: list[str] = []
    where = lab.netns_of(node)
    state = netns.call_in(where, lambda: read_netfilter(errors, NftCache()))
    assert not errors, errors
    assert state.nft_ruleset and "ip kube-proxy" not in state.nft_tables_via_iptables
    addresses: dict[str, list[str]] = {}
    for link in json.loads(lab.exec(node, ["ip", "-j", "addr"])):
        addresses[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                     if a["family"] == "inet"]
    ctx = TraceContext.from_strings(addresses=addresses)
    tracers = [Tracer(parse_iptables_save(s.save), ctx) for s in state.iptables if s.has_rules]
    nft = parse_nft_json(state.nft_ruleset)
    st = FlowState(src=ipaddress.ip_address(src), dst=ipaddress.ip_address(dst), protocol=proto, sport=40000,
                   dport=port, iif="eth0")
    branches = run_hook(tracers, nft, [Branch(state=st)], "PREROUTING", ctx=ctx)
    done = [b for b in branches if b.verdict != "ACCEPT"]
    local = [b for b in branches if b.verdict == "ACCEPT" and ctx.is_local(b.state.dst)]
    fwd = [b for b in branches if b.verdict == "ACCEPT" and not ctx.is_local(b.state.dst)]
    for b in fwd:  # routing after DNAT, asked of the node's kernel
        b.state.oif = json.loads(lab.exec(node, ["ip", "-j", "route", "get", str(b.state.dst)]))[0]["dev"]
    forwarded = run_hook(tracers, nft, fwd, "FORWARD", ctx=ctx)
    return (done + run_hook(tracers, nft, local, "INPUT", ctx=ctx)
            + run_hook(tracers, nft, forwarded, "POSTROUTING", ctx=ctx))


def test_kernel_and_tracer_agree(lab: Lab) -> None:
    web = [f"{lab.pod(p).ip}:8080" for p in ("default/web-1", "default/web-2")]
    cases = [  # (from, to, port, protocol, node whose rules decide, expected kernel outcome)
        ("default/client", "svc:default/web", 80, "tcp", "node-1", "connected"),
        ("default/client", "svc:default/web", 53, "udp", "node-1", "reply"),
        ("ext", "node:node-1", 30080, "tcp", "node-1", "connected"),
        ("ext", "node:node-2", 30080, "tcp", "node-2", "connected"),
        ("default/client", "svc:default/empty", 80, "tcp", "node-1", "refused"),
        ("ext", "node:node-1", 30081, "tcp", "node-1", "refused"),
        ("default/client", "10.96.0.250", 80, "tcp", "node-1", "timeout"),  # unallocated ClusterIP
    ]
    mismatches = []
    for src, dst, port, proto, node, expected in cases:
        kernel = lab.probe(src, dst, port, proto, timeout=0.5).outcome
        branches = _trace(lab, node, lab.source_address(src), lab.address(dst), port, proto)
        verdicts = {b.verdict for b in branches}
        if kernel != expected or verdicts != {OUTCOME[expected]}:
            mismatches.append(f"{src}->{dst}:{port}/{proto}: kernel {kernel}, tracer {verdicts}")
        if port in (80, 30080) and expected == "connected":
            assert sorted(str(b.dnat_destination) for b in branches) == sorted(web)
            assert all(abs(b.probability - 0.5) < 1e-9 for b in branches)
        if dst.startswith("node:"):
            assert all(b.masquerade for b in branches if b.verdict == "ACCEPT")  # external → NodePort: masqueraded
    assert not mismatches, "\n".join(mismatches)


def test_kube_proxy_configmap_says_nftables(lab: Lab) -> None:
    from lab.objects import addon_objects

    cm = next(o for o in addon_objects(lab.resolved, "2026-01-01T00:00:00Z")
              if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kube-proxy")
    assert "mode: nftables" in cm["data"]["config.conf"]
