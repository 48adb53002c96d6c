"""Unit tests: every match, target and chain-control feature of the netfilter engine."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from services.simulator.dataplane.netfilter import (
    Branch,
    FlowState,
    IptablesParseError,
    TraceContext,
    Tracer,
    parse_ipset_save,
    parse_iptables_save,
)

IP = ipaddress.ip_address


def pkt(src: str = "10.0.0.2", dst: str = "10.0.0.3", proto: str = "tcp", sport: int = 40000, dport: int = 80,
        **kw: Any) -> FlowState:
    return FlowState(src=IP(src), dst=IP(dst), protocol=proto, sport=sport, dport=dport, **kw)


def filter_rules(*rules: str, chain: str = "FORWARD", policy: str = "ACCEPT", extra: str = "") -> str:
    return f"*filter\n:{chain} {policy} [0:0]\n{extra}" + "".join(f"-A {chain} {r}\n" for r in rules) + "COMMIT\n"


def run(save: str, st: FlowState, hook: str = "FORWARD", family: int = 4, **ctx: Any) -> list[Branch]:
    ctx.setdefault("node_ips", ["192.168.0.2"])
    tr = Tracer(parse_iptables_save(save, family=family), TraceContext.from_strings(**ctx))
    return tr.run_hook([Branch(state=st)], hook)


def verdict(rule: str, st: FlowState, **ctx: Any) -> str:
    """DROP if `rule -j DROP` matches the packet, else ACCEPT (policy)."""
    (b,) = run(filter_rules(f"{rule} -j DROP"), st, **ctx)
    return str(b.verdict)


# ------------------------------------------------------------------ core matches


@pytest.mark.parametrize(("rule", "expected"), [
    ("-s 10.0.0.0/24", "DROP"), ("! -s 10.0.0.0/24", "ACCEPT"), ("-s 10.0.0.2", "DROP"), ("-d 10.0.0.4", "ACCEPT"),
    ("! -d 10.0.0.4/32", "DROP"), ("-p tcp", "DROP"), ("-p udp", "ACCEPT"), ("! -p udp", "DROP"), ("-p 6", "DROP"),
    ("-p all", "DROP"), ("-i eth+", "DROP"), ("-i eth1", "ACCEPT"), ("! -i eth0", "ACCEPT"), ("-o cni0", "DROP"),
    ("! -o cni+", "ACCEPT"), ("-f", "ACCEPT"), ("! -f", "DROP"),
])
def test_core_matches(rule: str, expected: str) -> None:
    assert verdict(rule, pkt(iif="eth0", oif="cni0")) == expected


@pytest.mark.parametrize(("rule", "expected"), [
    ("-p tcp -m tcp --dport 80", "DROP"), ("-p tcp -m tcp ! --dport 80", "ACCEPT"),
    ("-p tcp -m tcp --dport 70:90", "DROP"), ("-p tcp -m tcp --dport 81:", "ACCEPT"),
    ("-p tcp -m tcp --sport 40000", "DROP"), ("-p tcp --dport 80", "DROP"),
    ("-p udp -m udp --dport 80", "ACCEPT"), ("-m udp --dport 80", "ACCEPT"),
    ("-p tcp -m tcp --syn", "DROP"), ("-p tcp -m tcp ! --syn", "ACCEPT"),
    ("-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN", "DROP"), ("-p tcp -m tcp --tcp-flags SYN,ACK ACK", "ACCEPT"),
    ("-p tcp -m multiport --dports 22,80,443", "DROP"), ("-p tcp -m multiport --dports 1:79,81", "ACCEPT"),
    ("-p tcp -m multiport ! --dports 22,443", "DROP"), ("-p tcp -m multiport --ports 40000", "DROP"),
    ("-m comment --comment \"a b c\"", "DROP"),
])
def test_port_and_flag_matches(rule: str, expected: str) -> None:
    assert verdict(rule, pkt()) == expected


def test_icmp_types() -> None:
    echo = FlowState(src=IP("10.0.0.2"), dst=IP("10.0.0.3"), protocol="icmp", icmp_type=8, icmp_code=0)
    assert verdict("-p icmp -m icmp --icmp-type 8", echo) == "DROP"
    assert verdict("-p icmp -m icmp --icmp-type echo-request", echo) == "DROP"
    assert verdict("-p icmp -m icmp --icmp-type 0", echo) == "ACCEPT"
    assert verdict("-p icmp -m icmp ! --icmp-type 3/3", echo) == "DROP"
    assert verdict("-p icmp -m icmp --icmp-type any", echo) == "DROP"


def test_mark_connmark_and_conntrack() -> None:
    assert verdict("-m mark --mark 0x4000/0x4000", pkt(mark=0x4001)) == "DROP"
    assert verdict("-m mark ! --mark 0x4000/0x4000", pkt(mark=0x4001)) == "ACCEPT"
    assert verdict("-m mark --mark 0x1", pkt(mark=0x1)) == "DROP"
    assert verdict("-m connmark --mark 0x2/0xf", pkt(ctmark=0x12)) == "DROP"
    assert verdict("-m conntrack --ctstate NEW", pkt()) == "DROP"
    assert verdict("-m conntrack --ctstate RELATED,ESTABLISHED", pkt()) == "ACCEPT"
    assert verdict("-m state --state ESTABLISHED", pkt(ctstate="ESTABLISHED")) == "DROP"
    assert verdict("-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", pkt()) == "DROP"
    assert verdict("-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", pkt(ct_dnat=True)) == "ACCEPT"
    assert verdict("-m conntrack --ctstate INVALID", pkt()) == "ACCEPT"
    assert verdict("-m conntrack --ctorigdst 172.30.0.1 --ctorigdstport 443",
                   pkt(orig_dst=IP("172.30.0.1"), orig_dport=443)) == "DROP"


def test_addrtype_src_is_source_and_dst_is_destination() -> None:
    """KubeSkoop tested --src-type against the destination; we test each against its own address."""
    ctx = {"addresses": {"eth0": ["192.168.0.2/24"], "lo": ["127.0.0.1/8"]}}
    from_node = pkt(src="192.168.0.2", dst="10.0.0.3")
    assert verdict("-m addrtype --src-type LOCAL", from_node, **ctx) == "DROP"
    assert verdict("-m addrtype --dst-type LOCAL", from_node, **ctx) == "ACCEPT"
    assert verdict("-m addrtype ! --dst-type LOCAL", from_node, **ctx) == "DROP"
    assert verdict("-m addrtype --dst-type BROADCAST", pkt(dst="192.168.0.255"), **ctx) == "DROP"
    assert verdict("-m addrtype --dst-type MULTICAST", pkt(dst="224.0.0.5"), **ctx) == "DROP"
    assert verdict("-m addrtype --dst-type UNICAST", pkt(dst="8.8.8.8"), **ctx) == "DROP"
    assert verdict("-m addrtype --dst-type LOCAL", pkt(dst="127.0.0.9"), **ctx) == "DROP"
    # --limit-iface-in: the address must be local on the incoming device
    to_node = pkt(dst="192.168.0.2", iif="eth1")
    assert verdict("-m addrtype --dst-type LOCAL --limit-iface-in", to_node, **ctx) == "ACCEPT"
    assert verdict("-m addrtype --dst-type LOCAL --limit-iface-in", pkt(dst="192.168.0.2", iif="eth0"),
                   **ctx) == "DROP"


def test_iprange_physdev_rpfilter() -> None:
    assert verdict("-m iprange --src-range 10.0.0.1-10.0.0.5", pkt()) == "DROP"
    assert verdict("-m iprange ! --dst-range 10.0.0.1-10.0.0.5", pkt()) == "ACCEPT"
    assert verdict("-m physdev --physdev-is-bridged", pkt(), bridged=True, physdev_out="veth1") == "DROP"
    assert verdict("-m physdev --physdev-is-bridged", pkt()) == "ACCEPT"
    assert verdict("-m physdev --physdev-in veth+ ! --physdev-out veth2", pkt(), bridged=True, physdev_in="veth1",
                   physdev_out="veth3") == "DROP"
    (b,) = run(filter_rules("-m rpfilter --invert -j DROP"), pkt(), rpfilter_ok=False)
    assert b.verdict == "DROP"
    (b,) = run(filter_rules("-m rpfilter --invert -j DROP"), pkt())
    assert b.verdict == "ACCEPT" and any("rpfilter" in a for a in b.assumptions)


def test_assumed_matches_are_stated() -> None:
    (b,) = run(filter_rules("-m limit --limit 5/sec -j DROP"), pkt())
    assert b.verdict == "DROP" and any("limit" in a for a in b.assumptions)
    (b,) = run(filter_rules("-m socket -j DROP"), pkt())
    assert b.verdict == "ACCEPT"
    (b,) = run(filter_rules("-m recent --name X --rcheck --seconds 10 -j DROP"), pkt())
    assert b.verdict == "ACCEPT" and any("recent" in a for a in b.assumptions)


def test_ipset_types() -> None:
    sets = parse_ipset_save("""create ips hash:ip family inet hashsize 1024 maxelem 65536
add ips 10.0.0.2
create nets hash:net family inet
add nets 10.0.0.0/16
add nets 10.0.5.0/24 nomatch
create ipport hash:ip,port family inet
add ipport 10.0.0.3,tcp:80
add ipport 10.0.0.3,udp:53
create netport hash:net,port family inet
add netport 10.0.0.0/24,tcp:80
create ipportip hash:ip,port,ip family inet
add ipportip 10.0.0.3,tcp:80,10.0.0.2
create ipportnet hash:ip,port,net family inet
add ipportnet 10.0.0.3,tcp:80,10.0.0.0/8
create ports bitmap:port range 0-65535
add ports 80
""")
    assert not sets.warnings
    cases = [("ips src", True), ("ips dst", False), ("nets src", True), ("ipport dst,dst", True),
             ("ipport src,dst", False), ("netport dst,dst", True), ("ipportip dst,dst,src", True),
             ("ipportip dst,dst,dst", False), ("ipportnet dst,dst,src", True), ("ports dst", True),
             ("ports src", False)]
    for spec, expected in cases:
        got = verdict(f"-m set --match-set {spec} ", pkt(), ipsets=sets) == "DROP"
        assert got == expected, spec
    assert verdict("-m set --match-set nets src", pkt(src="10.0.5.1"), ipsets=sets) == "ACCEPT"  # nomatch
    assert verdict("-m set ! --match-set ips src", pkt(), ipsets=sets) == "ACCEPT"


def test_missing_ipset_is_unsupported_and_explored_both_ways() -> None:
    branches = run(filter_rules("-m set --match-set nosuch src -j DROP"), pkt())
    assert sorted(str(b.verdict) for b in branches) == ["ACCEPT", "DROP"]
    assert all(b.unsupported for b in branches)


# ------------------------------------------------------------------ unknown rules never discard the ruleset


def test_unknown_match_and_target_fork_both_ways() -> None:
    save = filter_rules("-m frobnicate --wibble 3 -j DROP", "-s 10.0.0.2 -j REJECT")
    branches = run(save, pkt())
    assert sorted(str(b.verdict) for b in branches) == ["DROP", "REJECT"]
    assert all("UNSUPPORTED_RULE" in " ".join(b.assumptions) for b in branches)
    branches = run(filter_rules("-j WEIRDTARGET --x 1", "-j ACCEPT"), pkt())
    assert sorted(str(b.verdict) for b in branches) == ["ACCEPT", "DROP"]
    rs = parse_iptables_save(save)
    assert [r.position for r in rs.unsupported_rules()] == [1]


def test_not_a_save_file() -> None:
    with pytest.raises(IptablesParseError):
        parse_iptables_save("hello world\n")


# ------------------------------------------------------------------ chain control


CHAINS = """*filter
:FORWARD DROP [0:0]
:A - [0:0]
:B - [0:0]
-A FORWARD -j A
-A FORWARD -g B
-A FORWARD -j ACCEPT
-A A -p udp -j RETURN
-A A -s 10.0.0.9 -j DROP
-A B -p tcp -j RETURN
-A B -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


def test_jump_returns_goto_does_not() -> None:
    (b,) = run(CHAINS, pkt())
    # A falls through back to FORWARD; goto B's RETURN goes to FORWARD's caller: the policy (DROP)
    assert b.verdict == "DROP" and b.decided_by is not None and b.decided_by.position == 0
    (b,) = run(CHAINS, pkt(proto="udp"))
    assert b.verdict == "REJECT" and b.reject_with == "icmp-host-prohibited"
    (b,) = run(CHAINS, pkt(src="10.0.0.9"))
    assert b.verdict == "DROP" and b.decided_by is not None and b.decided_by.chain == "A"


def test_policy_and_reject_default() -> None:
    (b,) = run(filter_rules(policy="DROP"), pkt())
    assert b.verdict == "DROP" and b.decided_by is not None and b.decided_by.rule == ":FORWARD DROP"
    (b,) = run(filter_rules("-j REJECT"), pkt())
    assert b.reject_with == "icmp-port-unreachable"


def test_log_nflog_trace_continue() -> None:
    (b,) = run(filter_rules('-j LOG --log-prefix "x: "', "-j NFLOG --nflog-group 2", "-j TRACE", "-j DROP"), pkt())
    assert b.verdict == "DROP" and len(b.hits) == 4


# ------------------------------------------------------------------ rewriting


def nat(chain: str, *rules: str) -> str:
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            + "".join(f"-A {chain} {r}\n" for r in rules) + "COMMIT\n")


def test_dnat_rewrites_and_later_rules_see_the_new_destination() -> None:
    save = nat("PREROUTING", "-d 172.30.0.1 -p tcp -j DNAT --to-destination 10.1.0.5:8080") + filter_rules(
        "-d 10.1.0.5 -p tcp -m tcp --dport 8080 -j DROP")
    (b,) = run(save, pkt(dst="172.30.0.1"), hook="PREROUTING")
    assert b.state.dst == IP("10.1.0.5") and b.state.dport == 8080 and b.state.ct_dnat
    (b,) = Tracer(parse_iptables_save(save), TraceContext.from_strings(node_ips=["192.168.0.2"])).trace_node(
        pkt(dst="172.30.0.1"))
    assert b.verdict == "DROP" and b.dnat_destination == "10.1.0.5:8080"


def test_dnat_address_range_branches_and_port_only() -> None:
    branches = run(nat("PREROUTING", "-j DNAT --to-destination 10.1.0.1-10.1.0.3"), pkt(), hook="PREROUTING")
    assert [str(b.state.dst) for b in branches] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert sum(b.probability for b in branches) == pytest.approx(1.0)
    (b,) = run(nat("PREROUTING", "-p tcp -j DNAT --to-destination :8080"), pkt(), hook="PREROUTING")
    assert (b.state.dst, b.state.dport) == (IP("10.0.0.3"), 8080)
    (b,) = run(nat("PREROUTING", "-p tcp -j DNAT --to-destination [fd00::5]:80"),
               pkt(src="fd00::2", dst="fd00::3"), hook="PREROUTING", family=6)
    assert b.dnat_destination == "[fd00::5]:80"


def test_snat_masquerade_redirect() -> None:
    (b,) = run(nat("POSTROUTING", "-j SNAT --to-source 192.168.0.100"), pkt(), hook="POSTROUTING")
    assert b.state.src == IP("192.168.0.100") and b.masquerade
    (b,) = run(nat("POSTROUTING", "-o eth0 -j MASQUERADE"), pkt(dst="8.8.8.8", oif="eth0"), hook="POSTROUTING",
               addresses={"eth0": ["192.168.0.2/24", "192.168.0.3/24"]})
    assert b.state.src == IP("192.168.0.2") and not b.assumptions
    (b,) = run(nat("PREROUTING", "-p tcp -j REDIRECT --to-ports 15001"), pkt(iif="eth0"), hook="PREROUTING",
               addresses={"eth0": ["192.168.0.2/24"]})
    assert (b.state.dst, b.state.dport) == (IP("192.168.0.2"), 15001)
    (b,) = run(nat("OUTPUT", "-p tcp -j REDIRECT --to-ports 15001"), pkt(), hook="OUTPUT")
    assert b.state.dst == IP("127.0.0.1")


def test_nat_only_for_new_connections() -> None:
    (b,) = run(nat("PREROUTING", "-j DNAT --to-destination 10.1.0.1"), pkt(ctstate="ESTABLISHED"),
               hook="PREROUTING")
    assert b.state.dst == IP("10.0.0.3")


@pytest.mark.parametrize(("target", "mark"), [
    ("--set-xmark 0x10/0xff", 0x1F10), ("--set-mark 0x10/0xff", 0x1F10), ("--or-mark 0x4000", 0x5F01),
    ("--and-mark 0xff", 0x01), ("--xor-mark 0x1", 0x1F00), ("--set-xmark 0x4000/0x4000", 0x5F01),
])
def test_mark_targets(target: str, mark: int) -> None:
    save = "*mangle\n:FORWARD ACCEPT [0:0]\n" + f"-A FORWARD -j MARK {target}\nCOMMIT\n"
    (b,) = run(save, pkt(mark=0x1F01))
    assert b.state.mark == mark


def test_connmark_save_restore_set() -> None:
    save = ("*mangle\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j CONNMARK --set-xmark 0x5/0xf\n"
            "-A FORWARD -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"
            "-A FORWARD -j MARK --set-xmark 0x7/0xffffffff\n"
            "-A FORWARD -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff\nCOMMIT\n")
    (b,) = run(save, pkt(ctmark=0x100))
    assert (b.state.mark, b.state.ctmark) == (0x7, 0x107)


def test_statistic_random_and_nth_fork_with_probabilities() -> None:
    save = filter_rules("-m statistic --mode random --probability 0.25 -j DROP",
                        "-m statistic --mode nth --every 2 --packet 0 -j REJECT")
    branches = run(save, pkt())
    probs = {b.verdict: b.probability for b in branches}
    assert probs == pytest.approx({"DROP": 0.25, "REJECT": 0.375, "ACCEPT": 0.375})


def test_tables_run_in_kernel_order_and_raw_notrack_skips_nat() -> None:
    save = ("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 172.30.0.9 -j CT --notrack\nCOMMIT\n"
            "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n"
            + nat("PREROUTING", "-m mark --mark 0x1 -j DNAT --to-destination 10.9.9.9"))
    (b,) = run(save, pkt(dst="172.30.0.1"), hook="PREROUTING")
    assert b.state.dst == IP("10.9.9.9") and [h.table for h in b.hits] == ["mangle", "nat"]
    (b,) = run(save, pkt(dst="172.30.0.9"), hook="PREROUTING")
    assert b.state.dst == IP("172.30.0.9") and b.state.ctstate == "UNTRACKED"


def test_counters_and_nft_backend_save_format() -> None:
    save = """# Generated by iptables-nft-save v1.8.9 (nf_tables) on Thu Nov 26 10:00:00 2026
*filter
:INPUT ACCEPT [10:600]
:FORWARD DROP [3:180]
:OUTPUT ACCEPT [0:0]
[5:300] -A FORWARD -s 10.0.0.0/8 -j ACCEPT
COMMIT
# Completed on Thu Nov 26 10:00:00 2026
"""
    rs = parse_iptables_save(save)
    chain = rs.chain("filter", "FORWARD")
    assert chain is not None and chain.policy == "DROP" and chain.counters == (3, 180) and len(chain.rules) == 1
    (b,) = run(save, pkt(src="192.168.9.9"))
    assert b.verdict == "DROP"


def test_ip6tables() -> None:
    save = ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s fd00::/64 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j DROP\n"
            "COMMIT\n")
    echo = FlowState(src=IP("fd00::2"), dst=IP("fd00::1"), protocol="icmpv6", icmp_type=128)
    (b,) = run(save, echo, hook="INPUT", family=6)
    assert b.verdict == "DROP"
