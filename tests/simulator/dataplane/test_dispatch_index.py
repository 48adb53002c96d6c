"""The dispatch index of large chains (KUBE-SERVICES): keys read from the rule text without compiling,
and tracing through an indexed chain gives exactly what scanning it rule by rule gives."""

from __future__ import annotations

import ipaddress
import random

import pytest

from services.simulator.dataplane.netfilter import Branch, FlowState, TraceContext, Tracer, parse_iptables_save
from services.simulator.dataplane.netfilter.parser import dispatch_key
from services.simulator.dataplane.netfilter.tracer import INDEX_MIN_RULES

IP = ipaddress.ip_address


@pytest.mark.parametrize(("text", "key"), [
    ('-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 '
     "-j KUBE-SVC-XPGD46QRK7WJZT7O", ("172.30.0.41", "tcp", 80)),
    ("-A X -d 172.30.0.1 -j A", ("172.30.0.1", None, None)),
    ("-A X -p all -d 172.30.0.1 -j A", ("172.30.0.1", None, None)),
    ("-A X -p udp --dport 53 -j A", (None, "udp", 53)),
    ("-A X -p 6 -m tcp --destination-port 8080 -j A", (None, "tcp", 8080)),
    ("-A X -d fd00::1/128 -p tcp -j A", ("fd00::1", "tcp", None)),
    ("-A X -d 10.0.0.1/255.255.255.255 -p sctp -m sctp --dport 9 -j A", ("10.0.0.1", "sctp", 9)),
    ("-A X -d 172.30.0.0/24 -p tcp --dport 80 -j A", (None, "tcp", 80)),  # a network: the port still keys
    # nothing every matching packet must carry, or nothing read safely: scanned
    ("-A X ! -d 172.30.0.1/32 -j A", None),
    ("-A X -d 172.30.0.0/24 -j A", None),
    ("-A X -p tcp ! --dport 80 -j A", None),
    ("-A X -p tcp --dport ! 80 -j A", None),  # the old `--opt ! value` syntax
    ("-A X -p tcp --dport 80:90 -j A", None),
    ("-A X -p tcp -m multiport --dports 80 -j A", None),
    ("-A X --dport 80 -j A", None),  # no protocol: not a port match to the compiler either
    ("-A X -p tcp -m icmp --dport 80 -j A", None),  # the option belongs to -m icmp
    ('-A X -m comment --comment "-d 10.0.0.1" -j A', None),
    ("-A X -j DNAT --to-destination 10.0.0.1:80 -d 10.0.0.1", None),  # after the target: its options
    ("-A X -s bogus -d 10.0.0.1 -j A", None),  # unreadable: the compiler forks on the whole rule
    ("-A X -d", None),
])
def test_dispatch_key_from_text(text: str, key: tuple | None) -> None:
    expected = None if key is None else (IP(key[0]) if key[0] else None, key[1], key[2])
    assert dispatch_key(text) == expected


DSTS = ["", "-d 172.30.0.1/32", "-d 172.30.0.2", "! -d 172.30.0.1/32", "-d 172.30.0.0/30", "-d 10.0.0.5"]
PROTOS = ["", "-p tcp", "-p udp", "! -p tcp", "-p tcp -m tcp", "-m tcp -p tcp", "-m udp -p udp", "-p all"]
PORTS = ["", "--dport 80", "--dport 53", "! --dport 80", "--dport 80:81", "-m multiport --dports 80,53"]
EXTRAS = ["", "-s 10.0.0.0/8", "! -s 10.0.0.2", "-m mark --mark 0x1", '-m comment --comment "x -d 172.30.0.2"',
          "-m statistic --mode random --probability 0.5", "-m foo --bar"]
EXTRA_WEIGHTS = [60, 6, 6, 6, 6, 2, 1]  # forking matches rare: every fork doubles the branches
TARGETS = ["-j ACCEPT", "-j DROP", "-j RETURN", "-j MARK --or-mark 0x1", "-j SUB", "-g SUB", "-j REJECT", ""]
TARGET_WEIGHTS = [2, 2, 2, 4, 3, 1, 1, 6]


def _random_save(seed: int, n: int) -> str:
    rng = random.Random(seed)
    rules = []
    for _ in range(n):
        port = rng.choice(PORTS)
        proto = rng.choice(PROTOS[1:] if port else PROTOS)
        parts = [rng.choice(DSTS), proto, port, rng.choices(EXTRAS, EXTRA_WEIGHTS)[0],
                 rng.choices(TARGETS, TARGET_WEIGHTS)[0]]
        rules.append("-A BIG " + " ".join(p for p in parts if p))
    return ("*filter\n:FORWARD DROP [0:0]\n:BIG - [0:0]\n:SUB - [0:0]\n-A FORWARD -j BIG\n-A FORWARD -j ACCEPT\n"
            + "\n".join(rules) + "\n-A SUB -p udp -j RETURN\n-A SUB -m mark --mark 0x1 -j DROP\nCOMMIT\n")


def _outcome(tracer: Tracer, st: FlowState) -> list[tuple]:
    branches = tracer.run_hook([Branch(state=st)], "FORWARD")
    return sorted((b.verdict, round(b.probability, 9), b.state.mark, tuple((h.chain, h.position) for h in b.hits),
                   tuple(b.assumptions), tuple((h.chain, h.position) for h in b.unsupported)) for b in branches)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indexed_chain_traces_exactly_like_a_scanned_one(seed: int) -> None:
    save = _random_save(seed, 3 * INDEX_MIN_RULES)
    ctx = TraceContext.from_strings(node_ips=["192.168.0.2"])
    indexed = Tracer(parse_iptables_save(save), ctx)
    big = indexed.rs.chain("filter", "BIG")
    assert big is not None and big.index is not None and big.index.keyed and big.index.unkeyed
    assert big.built is None  # indexed from the text: no rule built, none compiled
    # the walk's per-hook Tracer shares the index
    assert getattr(Tracer(indexed.rs, ctx).rs.chain("filter", "BIG"), "index", None) is big.index
    scanned = Tracer(parse_iptables_save(save), ctx)
    scanned_big = scanned.rs.chain("filter", "BIG")
    assert scanned_big is not None
    scanned_big.index = None
    packets = [FlowState(src=IP(src), dst=IP(dst), protocol=proto, sport=40000, dport=port, mark=mark)
               for src in ("10.0.0.2", "192.168.1.9") for dst in ("172.30.0.1", "172.30.0.2", "172.30.0.3", "10.0.0.5")
               for proto, port in (("tcp", 80), ("tcp", 53), ("udp", 53), ("udp", 81), ("icmp", None))
               for mark in (0, 1)]
    for st in packets:
        copy = FlowState(**{k: getattr(st, k) for k in st.__slots__})
        assert _outcome(indexed, st) == _outcome(scanned, copy), st.describe()
