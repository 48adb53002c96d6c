"""Unit tests: policy routing rules, table lookup, route types, source selection, ECMP."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import pytest

from services.simulator.dataplane.routing import RouteDecision, Router, route_text, rule_text
from shared.netstack import Route, Rule

IP = ipaddress.ip_address
ADDRS = {"lo": ["127.0.0.1/8"], "eth0": ["192.168.0.2/24", "192.168.0.9/24"], "eth1": ["172.16.0.2/24"],
         "cni0": ["10.244.1.1/24"]}
MAIN = [
    Route(dst="default", gateway="192.168.0.1", dev="eth0"),
    Route(dst="10.244.0.0/16", gateway="192.168.0.3", dev="eth0", metric=100),
    Route(dst="10.244.0.0/16", gateway="172.16.0.3", dev="eth1", metric=50),
    Route(dst="10.244.1.0/24", dev="cni0", scope="link", protocol="kernel", prefsrc="10.244.1.1"),
    Route(dst="10.244.9.0/24", dev="eth0", gateway="10.99.0.1", onlink=True),
    Route(dst="10.96.0.0/12", type="blackhole"),
    Route(dst="10.97.0.0/16", type="unreachable"),
    Route(dst="10.98.0.0/16", type="prohibit"),
    Route(table=255, type="local", dst="192.168.0.2/32", dev="eth0", prefsrc="192.168.0.2", scope="host"),
    Route(table=255, type="local", dst="127.0.0.0/8", dev="lo", prefsrc="127.0.0.1", scope="host"),
    Route(table=255, type="broadcast", dst="192.168.0.255/32", dev="eth0", prefsrc="192.168.0.2", scope="link"),
]


def router(extra: Iterable[Route] = (), rules: Iterable[Rule] = ()) -> Router:
    return Router.from_strings([*MAIN, *extra], rules, ADDRS)


def one(r: Router, dst: str, **kw: Any) -> RouteDecision:
    (d,) = r.lookup(IP(dst), **kw)
    return d


def test_longest_prefix_then_metric() -> None:
    d = one(router(), "10.244.1.7")
    assert (d.type, d.dev, d.gateway, d.src) == ("unicast", "cni0", None, IP("10.244.1.1"))
    d = one(router(), "10.244.2.7")
    assert (d.dev, d.gateway) == ("eth1", IP("172.16.0.3"))  # metric 50 beats 100
    d = one(router(), "8.8.8.8")
    assert (d.gateway, d.src, d.table) == (IP("192.168.0.1"), IP("192.168.0.2"), 254)
    assert d.route == "default via 192.168.0.1 dev eth0"


@pytest.mark.parametrize(("dst", "kind"), [("10.96.0.10", "blackhole"), ("10.97.1.1", "unreachable"),
                                           ("10.98.1.1", "prohibit"), ("192.168.0.2", "local"),
                                           ("127.0.0.5", "local"), ("192.168.0.255", "broadcast")])
def test_route_types(dst: str, kind: str) -> None:
    d = one(router(), dst)
    assert d.type == kind
    if kind in ("blackhole", "unreachable", "prohibit"):
        assert d.drops and (d.route or "").startswith(kind)


def test_onlink_and_source_selection_in_gateway_subnet() -> None:
    d = one(router(), "10.244.9.4")
    assert d.gateway == IP("10.99.0.1") and (d.route or "").endswith("onlink")
    r = Router.from_strings([Route(dst="default", gateway="192.168.5.1", dev="eth2")],
                            addresses={"eth2": ["192.168.4.2/24", "192.168.5.7/24"]})
    assert one(r, "1.1.1.1").src == IP("192.168.5.7")  # the address in the gateway's subnet


def test_no_route() -> None:
    r = Router.from_strings([Route(dst="10.0.0.0/8", dev="eth0")], addresses=ADDRS)
    d = one(r, "8.8.8.8")
    assert d.type == "no_route" and d.drops and len(d.rules) == 3  # local, main, default walked


def test_policy_rules_fwmark_from_iif_not_goto_and_actions() -> None:
    rules = [Rule(priority=0, table=255), Rule(priority=100, fwmark=0x100, fwmask=0xF00, table=100),
             Rule(priority=110, src="10.244.1.0/24", iif="cni0", table=101),
             Rule(priority=120, invert=True, dst="10.0.0.0/8", action="goto", goto=200),
             Rule(priority=130, dst="10.50.0.0/16", action="prohibit"),
             Rule(priority=200, tos=0x10, action="blackhole"),
             Rule(priority=32766, table=254)]
    extra = [Route(table=100, dst="default", gateway="172.16.0.1", dev="eth1"),
             Route(table=101, dst="default", gateway="192.168.0.254", dev="eth0")]
    r = router(extra, rules)
    assert one(r, "8.8.8.8", fwmark=0x1FF).gateway == IP("172.16.0.1")
    assert one(r, "8.8.8.8", src=IP("10.244.1.5"), iif="cni0").gateway == IP("192.168.0.254")
    assert one(r, "10.50.0.1").type == "prohibit"
    assert one(r, "8.8.8.8", tos=0x10).type == "blackhole"  # `not to 10/8` goes to 200
    d = one(r, "8.8.8.8")
    assert d.gateway == IP("192.168.0.1") and d.rules[-1] == "32766: from all lookup main"
    assert rule_text(rules[3]) == "120: not from all to 10.0.0.0/8 goto 200"


def test_throw_and_suppress_prefixlength() -> None:
    rules = [Rule(priority=10, table=100, suppress_prefixlength=0), Rule(priority=20, table=200),
             Rule(priority=32766, table=254)]
    extra = [Route(table=100, dst="default", dev="eth1", gateway="172.16.0.1"),
             Route(table=100, dst="10.244.0.0/16", dev="eth1", gateway="172.16.0.9"),
             Route(table=200, type="throw", dst="10.0.0.0/8")]
    r = router(extra, rules)
    assert one(r, "10.244.3.3").gateway == IP("172.16.0.9")  # /16 survives suppress_prefixlength 0
    assert one(r, "8.8.8.8").gateway == IP("192.168.0.1")  # default suppressed → main
    assert one(r, "10.5.0.1").gateway == IP("192.168.0.1")  # throw in table 200 → continue to main


def test_ecmp_each_next_hop_is_a_branch() -> None:
    r = Router.from_strings([Route(dst="default", multipath=[
        {"gateway": "192.168.0.1", "dev": "eth0", "weight": 1},
        {"gateway": "172.16.0.1", "dev": "eth1", "weight": 3}])], addresses=ADDRS)
    hops = r.lookup(IP("8.8.8.8"))
    assert [(str(h.gateway), h.dev, h.src, h.probability) for h in hops] == [
        ("192.168.0.1", "eth0", IP("192.168.0.2"), 0.25), ("172.16.0.1", "eth1", IP("172.16.0.2"), 0.75)]


def test_ipv6_family_neutral() -> None:
    r = Router.from_strings([Route(family=6, dst="default", gateway="fd00::1", dev="eth0"),
                             Route(family=6, dst="fd00:10::/64", dev="cni0")],
                            addresses={"eth0": ["fd00::2/64"], "cni0": ["fd00:10::1/64"]})
    assert one(r, "2001:db8::1").src == IP("fd00::2")
    assert one(r, "fd00:10::5").dev == "cni0"
    assert route_text(Route(family=6, dst="fd00:10::5/128", dev="cni0")) == "fd00:10::5 dev cni0"
