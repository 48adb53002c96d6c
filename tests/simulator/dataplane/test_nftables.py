"""nftables engine: unit tests per expression kind, then the kernel as the judge.

Kernel-differential cases: a client and a server namespace joined by a veth; an nft ruleset is loaded
into the server with `nft -f`, read back by the collector's own netfilter reader (`nft -j`, plus the
iptables-nft save text for tables iptables owns), traced through PREROUTING → INPUT with
`hooks.run_hook`, and compared with real TCP/UDP probes: ACCEPT ↔ connected/answered, DROP ↔ timeout,
REJECT ↔ refused. Random (numgen) cases compare the set of outcomes over repeated probes.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.collector.reader.netfilter import NftCache, read_netfilter
from services.simulator.dataplane.hooks import run_hook, stages
from services.simulator.dataplane.netfilter import Branch, FlowState, TraceContext, Tracer, parse_iptables_save
from services.simulator.dataplane.nftables import NftEvaluator, NftParseError, parse_nft_json

CLIENT_IP, SERVER_IP = "10.78.0.1", "10.78.0.2"
CLONE_NEWNET = 0x40000000

# ------------------------------------------------------------------ unit tests (pure)

IP = {"payload": {"protocol": "ip", "field": "saddr"}}
DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
DPORT = {"payload": {"protocol": "th", "field": "dport"}}
L4 = {"meta": {"key": "l4proto"}}


def doc(rules: dict[str, list[list[dict[str, Any]]]], *, sets: list[dict[str, Any]] | None = None,
        base: dict[str, tuple[str, str, int | str, str]] | None = None, family: str = "ip") -> dict[str, Any]:
    """A `nft -j`-shaped document: one table `t`, chains with rules; `base` gives (type, hook, prio, policy)."""
    base = base if base is not None else {"c": ("filter", "input", 0, "accept")}
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}},
                                   {"table": {"family": family, "name": "t", "handle": 1}}]
    for s in sets or []:
        kind = "map" if "map" in s else "set"
        items.append({kind: {"family": family, "table": "t", **s}})
    for name in rules:
        chain: dict[str, Any] = {"family": family, "table": "t", "name": name}
        if name in base:
            t, hook, prio, policy = base[name]
            chain.update(type=t, hook=hook, prio=prio, policy=policy)
        items.append({"chain": chain})
    for name, exprs_list in rules.items():
        for exprs in exprs_list:
            items.append({"rule": {"family": family, "table": "t", "chain": name, "expr": exprs}})
    return {"nftables": items}


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def flow(src: str = "10.0.0.1", dst: str = "10.0.0.2", proto: str = "tcp", dport: int = 80, **kw: Any) -> FlowState:
    return FlowState(src=ipaddress.ip_address(src), dst=ipaddress.ip_address(dst), protocol=proto, sport=40000,
                     dport=dport, **kw)


def trace(d: dict[str, Any], st: FlowState, hook: str = "INPUT", ctx: TraceContext | None = None) -> list[Branch]:
    return run_hook(None, parse_nft_json(d), [Branch(state=st)], hook, ctx=ctx)


def verdicts(branches: list[Branch]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in branches:
        verdict = str(b.verdict)
        out[verdict] = round(out.get(verdict, 0.0) + b.probability, 6)
    return out


def test_payload_match_with_negation_and_prefix() -> None:
    d = doc({"c": [[match(IP, {"prefix": {"addr": "10.0.0.0", "len": 8}}, "!="), {"drop": None}]]})
    assert verdicts(trace(d, flow(src="192.168.1.1"))) == {"DROP": 1.0}
    assert verdicts(trace(d, flow(src="10.9.9.9"))) == {"ACCEPT": 1.0}


def test_transport_dependency_is_not_negated() -> None:
    # `udp dport != 53` does not match TCP: the implicit `meta l4proto udp` dependency fails
    d = doc({"c": [[match({"payload": {"protocol": "udp", "field": "dport"}}, 53, "!="), {"drop": None}]]})
    assert verdicts(trace(d, flow(proto="tcp", dport=80))) == {"ACCEPT": 1.0}
    assert verdicts(trace(d, flow(proto="udp", dport=80))) == {"DROP": 1.0}
    assert verdicts(trace(d, flow(proto="udp", dport=53))) == {"ACCEPT": 1.0}


def test_meta_ct_and_flags() -> None:
    d = doc({"c": [
        [match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}],
        [match({"meta": {"key": "iifname"}}, "veth*"), match(L4, "tcp"),
         match({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "syn"),
         {"reject": {"type": "tcp reset"}}],
    ]})
    assert verdicts(trace(d, flow(iif="veth12"))) == {"REJECT": 1.0}
    assert trace(d, flow(iif="veth12"))[0].reject_with == "tcp-reset"
    assert verdicts(trace(d, flow(iif="eth0"))) == {"ACCEPT": 1.0}
    assert verdicts(trace(d, flow(iif="veth12", ctstate="ESTABLISHED", tcp_flags=frozenset({"ACK"})))) == {
        "ACCEPT": 1.0}


def test_mark_set_and_binop_match() -> None:
    mark = {"meta": {"key": "mark"}}
    d = doc({"c": [
        [{"mangle": {"key": mark, "value": {"|": [mark, 16384]}}}],
        [match({"&": [mark, 16384]}, 0), {"return": None}],
        [{"drop": None}],
    ]})
    out = trace(d, flow())
    assert verdicts(out) == {"DROP": 1.0} and out[0].state.mark == 0x4000


def test_anonymous_and_named_sets_with_intervals_and_concatenations() -> None:
    allow = {"name": "allow", "type": ["ipv4_addr", "inet_service"], "flags": ["interval"],
             "elem": [{"concat": [{"prefix": {"addr": "10.0.0.0", "len": 24}}, {"range": [8000, 8100]}]}]}
    d = doc({"c": [
        [match({"concat": [IP, DPORT]}, "@allow"), {"accept": None}],
        [match(DPORT, {"set": [22, {"range": [30000, 32767]}]}), {"accept": None}],
        [{"drop": None}],
    ]}, sets=[allow])
    assert verdicts(trace(d, flow(dport=8080))) == {"ACCEPT": 1.0}
    assert verdicts(trace(d, flow(src="10.0.1.1", dport=8080))) == {"DROP": 1.0}
    assert verdicts(trace(d, flow(src="10.0.1.1", dport=31000))) == {"ACCEPT": 1.0}


def test_vmap_jump_goto_return() -> None:
    svc = {"name": "svc", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
           "elem": [[{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "g"}}],
                    [{"elem": {"val": {"concat": ["10.96.0.2", "tcp", 80]}, "comment": "x"}},
                     {"jump": {"target": "g"}}]]}
    d = doc({"c": [
        [{"vmap": {"key": {"concat": [DADDR, L4, DPORT]}, "data": "@svc"}}],
        [{"drop": None}],
    ], "g": [[{"return": None}]]}, sets=[svc])
    # goto: g's return ends the base chain (policy accept); jump: back to c, then drop; a miss: next rule
    assert verdicts(trace(d, flow(dst="10.96.0.1"))) == {"ACCEPT": 1.0}
    assert verdicts(trace(d, flow(dst="10.96.0.2"))) == {"DROP": 1.0}
    assert verdicts(trace(d, flow(dst="10.96.0.3"))) == {"DROP": 1.0}


def test_numgen_vmap_dnat_branches() -> None:
    vm = {"vmap": {"key": {"numgen": {"mode": "random", "mod": 3, "offset": 0}},
                   "data": {"set": [[i, {"goto": {"target": f"e{i}"}}] for i in range(3)]}}}
    chains: dict[str, Any] = {"pre": [[vm]]}
    for i in range(3):
        chains[f"e{i}"] = [[match(L4, "tcp"), {"dnat": {"addr": f"10.1.0.{i + 1}", "port": 8080}}]]
    d = doc(chains, base={"pre": ("nat", "prerouting", -100, "accept")})
    out = trace(d, flow(dst="10.96.0.1"), "PREROUTING")
    assert sorted(str(b.dnat_destination) for b in out) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    assert all(abs(b.probability - 1 / 3) < 1e-9 and b.verdict == "ACCEPT" for b in out)
    # nat chains see only a connection's first packet
    assert trace(d, flow(dst="10.96.0.1", ctstate="ESTABLISHED"), "PREROUTING")[0].dnat_destination is None


def test_dnat_map_and_numgen_map_and_masquerade() -> None:
    dn = {"name": "dn", "type": "ipv4_addr", "map": "ipv4_addr", "elem": [["1.1.1.1", "2.2.2.2"]]}
    d = doc({"pre": [
        [{"dnat": {"addr": {"map": {"key": DADDR, "data": "@dn"}}}}],
        [{"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                                    "data": {"set": [[0, "10.0.0.7"], [1, "10.0.0.8"]]}}}}}],
    ], "post": [[{"masquerade": {"flags": "fully-random"}}]]}, sets=[dn],
        base={"pre": ("nat", "prerouting", -100, "accept"), "post": ("nat", "postrouting", 100, "accept")})
    assert trace(d, flow(dst="1.1.1.1"), "PREROUTING")[0].dnat_destination == "2.2.2.2:80"
    assert sorted(str(b.dnat_destination) for b in trace(d, flow(dst="5.5.5.5"), "PREROUTING")) == [
        "10.0.0.7:80", "10.0.0.8:80"]
    ctx = TraceContext.from_strings({"eth0": ["192.168.0.2/24"]})
    out = trace(d, flow(oif="eth0"), "POSTROUTING", ctx)
    assert out[0].masquerade and str(out[0].state.src) == "192.168.0.2"


def test_fib_addrtype_and_jhash() -> None:
    ctx = TraceContext.from_strings({"eth0": ["192.168.0.2/24"]})
    d = doc({"c": [
        [match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), {"accept": None}],
        [{"vmap": {"key": {"jhash": {"mod": 2, "seed": 0, "expr": IP}},
                   "data": {"set": [[0, {"accept": None}], [1, {"drop": None}]]}}}],
    ]})
    assert verdicts(trace(d, flow(dst="192.168.0.2"), ctx=ctx)) == {"ACCEPT": 1.0}
    out = trace(d, flow(dst="10.5.5.5"), ctx=ctx)
    assert verdicts(out) == {"ACCEPT": 0.5, "DROP": 0.5}
    assert any("jhash" in a for a in out[0].assumptions)


def test_unknown_expressions_fork_both_ways() -> None:
    d = doc({"c": [
        [match({"meta": {"key": "skuid"}}, 0), {"drop": None}],
        [{"queue": {"num": 1}}],
    ]})
    out = trace(d, flow())
    assert verdicts(out) == {"DROP": 2.0, "ACCEPT": 1.0}  # each fork keeps the branch's probability
    assert all(b.unsupported for b in out)
    assert any("meta skuid" in a for b in out for a in b.assumptions)


def test_hook_interleaves_iptables_and_nftables_by_priority() -> None:
    ipt = Tracer(parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n*mangle\n"
                                     ":INPUT ACCEPT [0:0]\n-A INPUT -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n"),
                 TraceContext())
    mark = {"meta": {"key": "mark"}}
    d = parse_nft_json(doc({"early": [[match(mark, 1), {"drop": None}]],
                            "late": [[match(mark, 1), {"drop": None}]]},
                           base={"early": ("filter", "input", -200, "accept"),
                                 "late": ("filter", "input", 10, "accept")}))
    names = [s.name for s in stages([ipt], NftEvaluator(d), "INPUT", 4)]
    assert names == ["nft ip t early", "iptables mangle", "iptables filter", "nft ip t late"]
    out = run_hook(ipt, d, [Branch(state=flow())], "INPUT")
    # iptables' ACCEPT ends only its table: the later nft chain still drops
    assert out[0].verdict == "DROP" and out[0].decided_by is not None and out[0].decided_by.chain == "late"


def test_first_nat_binding_wins_across_iptables_and_nftables() -> None:
    ipt = Tracer(parse_iptables_save("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT "
                                     "--to-destination 10.9.9.9\nCOMMIT\n"), TraceContext())
    d = parse_nft_json(doc({"n": [[{"dnat": {"addr": "10.8.8.8"}}]]},
                           base={"n": ("nat", "prerouting", -150, "accept")}))
    out = run_hook(ipt, d, [Branch(state=flow())], "PREROUTING")
    assert out[0].dnat_destination == "10.8.8.8:80" and len(out[0].nat) == 1


def test_inet_family_and_priority_names() -> None:
    d = doc({"c": [[match({"payload": {"protocol": "ip6", "field": "daddr"}}, "fd00::2"), {"drop": None}]]},
            base={"c": ("filter", "input", "filter + 5", "accept")}, family="inet")
    rs = parse_nft_json(d)
    table = rs.table("inet", "t")
    assert table is not None and table.chains["c"].priority == 5
    assert verdicts(trace(d, flow(src="fd00::1", dst="fd00::2"))) == {"DROP": 1.0}
    assert verdicts(trace(d, flow())) == {"ACCEPT": 1.0}  # IPv4: the ip6 dependency fails


def test_parse_errors_are_clear() -> None:
    with pytest.raises(NftParseError, match="unknown chain"):
        parse_nft_json({"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "x", "expr": []}}]})
    with pytest.raises(NftParseError, match="priority"):
        parse_nft_json(doc({"c": []}, base={"c": ("filter", "input", "bogus", "accept")}))


# ------------------------------------------------------------------ the kernel as the judge


def sh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a thread switched into netns `name` (sockets it creates stay in that namespace)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


TCP_PORTS, UDP_PORT = (80, 8080, 8081), 5300


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    prefix = f"ndn{uuid.uuid4().hex[:6]}"
    cli, srv = f"{prefix}c", f"{prefix}s"
    sockets: list[socket.socket] = []
    try:
        for ns in (cli, srv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", cli, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv)
        for ns, ip in ((cli, CLIENT_IP), (srv, SERVER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

        def listen() -> None:
            for port in TCP_PORTS:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(64)
                sockets.append(s)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", UDP_PORT))
            sockets.append(u)
        in_netns(srv, listen)
        udp = sockets[-1]

        def echo() -> None:
            try:
                while True:
                    data, peer = udp.recvfrom(512)
                    udp.sendto(data, peer)
            except OSError:  # closed at teardown
                return
        threading.Thread(target=echo, daemon=True).start()
        yield cli, srv
    finally:
        for s in sockets:
            s.close()
        for ns in (cli, srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def probe(cli: str, port: int, proto: str) -> str:
    def tcp() -> str:
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect((SERVER_IP, port))
            return "ACCEPT"
        except ConnectionRefusedError:
            return "REJECT"
        except TimeoutError:
            return "DROP"
        finally:
            s.close()

    def udp() -> str:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:
            s.connect((SERVER_IP, port))
            s.send(b"ping")
            s.recv(64)
            return "ACCEPT"
        except ConnectionRefusedError:
            return "REJECT"
        except TimeoutError:
            return "DROP"
        finally:
            s.close()
    return in_netns(cli, tcp if proto == "tcp" else udp)


def simulate(srv: str, port: int, proto: str) -> tuple[dict[str, float], list[Branch]]:
    """Collect the server's netfilter state as the node agent does, then trace PREROUTING → INPUT."""
    errors: list[str] = []
    state = in_netns(srv, lambda: read_netfilter(errors, NftCache()))
    assert not errors, errors
    tracers = [Tracer(parse_iptables_save(s.save), TraceContext()) for s in state.iptables if s.has_rules]
    ctx = TraceContext.from_strings(addresses={"eth0": [f"{SERVER_IP}/24"], "lo": ["127.0.0.1/8"]})
    tracers = [Tracer(t.rs, ctx) for t in tracers]
    nft = parse_nft_json(state.nft_ruleset)
    st = flow(src=CLIENT_IP, dst=SERVER_IP, proto=proto, dport=port, iif="eth0")
    branches = run_hook(tracers, nft, [Branch(state=st)], "PREROUTING", ctx=ctx)
    done = [b for b in branches if b.verdict != "ACCEPT"]
    branches = done + run_hook(tracers, nft, [b for b in branches if b.verdict == "ACCEPT"], "INPUT", ctx=ctx)
    return verdicts(branches), branches


def table(body: str, family: str = "ip") -> str:
    return f"table {family} nd {{\n{body}\n}}\n"


INPUT = "chain input {\n type filter hook input priority 0; policy accept;\n"
PRE_NAT = "chain pre {\n type nat hook prerouting priority dstnat; policy accept;\n"
CASES: dict[str, tuple[str, int, str]] = {
    "drop-tcp": (table(INPUT + " tcp dport 8080 drop\n }"), 8080, "tcp"),
    "reject-tcp-reset": (table(INPUT + " tcp dport { 22, 8080 } reject with tcp reset\n }"), 8080, "tcp"),
    "negated-prefix-accepts-client": (table(INPUT + " ip saddr != 10.78.0.0/24 drop\n }"), 8080, "tcp"),
    "negated-prefix-drops-client": (table(INPUT + " ip saddr != 10.99.0.0/24 drop\n }"), 8080, "tcp"),
    "udp-reject-icmp": (table(INPUT + " udp dport 5300 reject\n }"), UDP_PORT, "udp"),
    "udp-accept": (table(INPUT + " udp dport != 5300 drop\n }"), UDP_PORT, "udp"),
    "udp-dependency-not-negated": (table(INPUT + " udp dport != 5300 drop\n }"), 8080, "tcp"),
    "policy-drop-after-goto": (table("chain chk {\n tcp dport 80 return\n accept\n }\n" + INPUT.replace(
        "policy accept", "policy drop") + " iifname lo accept\n goto chk\n accept\n }"), 80, "tcp"),
    "jump-returns": (table("chain chk {\n tcp dport 80 return\n accept\n }\n" + INPUT + " jump chk\n drop\n }"),
                     80, "tcp"),
    "named-interval-concat-set": (table(
        "set allow {\n type ipv4_addr . inet_service; flags interval;\n"
        " elements = { 10.78.0.0/24 . 8000-8100 }\n }\n" + INPUT.replace("policy accept", "policy drop")
        + " ip saddr . tcp dport @allow accept\n ct state established,related accept\n }"), 8080, "tcp"),
    "named-set-miss-policy-drop": (table(
        "set allow {\n type ipv4_addr . inet_service; flags interval;\n"
        " elements = { 10.78.0.0/24 . 8000-8100 }\n }\n" + INPUT.replace("policy accept", "policy drop")
        + " ip saddr . tcp dport @allow accept\n ct state established,related accept\n }"), 80, "tcp"),
    "dnat-via-vmap-to-dropped-port": (table(
        "map svc {\n type ipv4_addr . inet_proto . inet_service : verdict;\n"
        f" elements = {{ {SERVER_IP} . tcp . 80 : goto ep }}\n }}\n"
        f"chain ep {{\n meta l4proto tcp dnat to {SERVER_IP}:8081\n }}\n"
        + PRE_NAT + " ip daddr . meta l4proto . th dport vmap @svc\n }\n"
        + INPUT + " tcp dport 8081 ct status dnat drop\n }"), 80, "tcp"),
    "mark-then-drop": (table(
        "chain pre {\n type filter hook prerouting priority mangle; policy accept;\n meta mark set 0x10\n }\n"
        + INPUT + " meta mark & 0x10 == 0x10 tcp dport 8080 drop\n }"), 8080, "tcp"),
    "ct-state-new-drop": (table(INPUT + " ct state established,related accept\n ct state new tcp dport 8080 drop\n }"),
                          8080, "tcp"),
    "fib-daddr-local-reject": (table(INPUT + " fib daddr type local tcp dport 8080 reject\n }"), 8080, "tcp"),
    "inet-table": (table(INPUT + " meta nfproto ipv4 th dport 8080 drop\n }", "inet"), 8080, "tcp"),
    "accept-does-not-stop-later-chain": (table(
        INPUT + " accept\n }\nchain late {\n type filter hook input priority 10; policy accept;\n"
        " tcp dport 8080 drop\n }"), 8080, "tcp"),
}


@pytest.mark.lab
def test_evaluator_agrees_with_kernel(pair: tuple[str, str]) -> None:
    cli, srv = pair
    mismatches = []
    for name, (ruleset, port, proto) in CASES.items():
        sh("ip", "netns", "exec", srv, "nft", "flush", "ruleset")
        sh("ip", "netns", "exec", srv, "nft", "-f", "-", stdin=ruleset)
        kernel = probe(cli, port, proto)
        simulated, branches = simulate(srv, port, proto)
        if simulated != {kernel: 1.0}:
            mismatches.append(f"{name}: kernel {kernel}, evaluator {simulated} {[b.assumptions for b in branches]}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.lab
def test_numgen_dnat_outcomes_match_kernel(pair: tuple[str, str]) -> None:
    """numgen random mod 2 → two endpoints, one of them dropped: the kernel shows both outcomes over
    repeated connections, the evaluator gives each a 0.5 branch."""
    cli, srv = pair
    ruleset = table(
        f"chain a {{\n meta l4proto tcp dnat to {SERVER_IP}:8080\n }}\n"
        f"chain b {{\n meta l4proto tcp dnat to {SERVER_IP}:8081\n }}\n"
        + PRE_NAT + " tcp dport 80 numgen random mod 2 vmap { 0 : goto a, 1 : goto b }\n }\n"
        + INPUT + " tcp dport 8081 drop\n }")
    sh("ip", "netns", "exec", srv, "nft", "-f", "-", stdin=ruleset)
    seen = {probe(cli, 80, "tcp") for _ in range(16)}  # P(one outcome only) = 2 * 0.5**16
    simulated, branches = simulate(srv, 80, "tcp")
    assert seen == {"ACCEPT", "DROP"}
    assert simulated == {"ACCEPT": 0.5, "DROP": 0.5}
    assert sorted(str(b.dnat_destination) for b in branches) == [f"{SERVER_IP}:8080", f"{SERVER_IP}:8081"]


@pytest.mark.lab
def test_iptables_nft_and_native_nft_together(pair: tuple[str, str]) -> None:
    """iptables (nft backend, read from its save text) accepts; a native nft chain after it drops."""
    cli, srv = pair
    sh("ip", "netns", "exec", srv, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
    sh("ip", "netns", "exec", srv, "nft", "-f", "-", stdin=table(
        "chain late {\n type filter hook input priority 10; policy accept;\n tcp dport 8080 drop\n }"))
    kernel = probe(cli, 8080, "tcp")
    simulated, branches = simulate(srv, 8080, "tcp")
    assert kernel == "DROP" and simulated == {"DROP": 1.0}
    hit = branches[0].decided_by
    assert hit is not None and hit.label == "ip nd" and hit.family == "ip"
