"""The nft-side cache (services/collector/reader/netfilter.py, `NftCache`) against real
namespaces: reused while the ruleset is unchanged, and every kind of change — an iptables-nft
rule, a native nft table, legacy tables appearing — is seen by the very next dump."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from services.collector.agent import NodeAgent, request_dump
from services.collector.reader import collect_node, commands, netfilter, netlink, netns
from shared.bus import Bus
from shared.config import Settings
from shared.netstack import decode_dump
from tests.collector.netns_fixture import sh

pytestmark = pytest.mark.lab

RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.10:8080
COMMIT
"""


@pytest.fixture
def nodes() -> Iterator[tuple[str, str]]:
    """Two node namespaces loaded the same way, so their nft generation ids are equal."""
    prefix = f"nc{uuid.uuid4().hex[:6]}"
    made: list[str] = []
    try:
        for name, backend_ip in ((f"{prefix}-a", "10.244.1.10"), (f"{prefix}-b", "10.244.1.20")):
            sh("ip", "netns", "add", name)
            made.append(name)
            sh("ip", "netns", "exec", name, "iptables-nft-restore", input=RULES.replace("10.244.1.10", backend_ip))
        yield made[0], made[1]
    finally:
        for name in made:
            sh("ip", "netns", "del", name)


@pytest.fixture
def tool_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tools the reader ran (it still runs them: this only records argv[0])."""
    runs: list[str] = []
    real = commands.run

    def recording(argv: list[str], **kwargs: object) -> str:
        runs.append(argv[0])
        return real(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(commands, "run", recording)
    netfilter.NFT_CACHE.clear()
    return runs


def generation(node: str) -> int | None:
    def read() -> int | None:
        with netlink.Netlink(netlink.NETLINK_NETFILTER) as sock:
            return netfilter.nft_generation(sock)

    return netns.run_in(netns.host_ref(node), read)


def nft_save(node: str) -> str:
    dump = collect_node("n", node)
    return next(s.save for s in dump.host.netfilter.iptables if s.backend == "nft")


def test_unchanged_ruleset_is_read_once(nodes: tuple[str, str], tool_runs: list[str]) -> None:
    a, _ = nodes
    first = nft_save(a)
    assert tool_runs == ["iptables-nft-save"]
    assert nft_save(a) == first and tool_runs == ["iptables-nft-save"]


def test_every_change_is_seen_by_the_next_dump(nodes: tuple[str, str], tool_runs: list[str]) -> None:
    a, _ = nodes
    assert "--dport 443" not in nft_save(a)
    sh("ip", "netns", "exec", a, "iptables-nft", "-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.0.11/32",
       "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", "10.244.1.11:8443")
    assert "--dport 443 -j DNAT --to-destination 10.244.1.11:8443" in nft_save(a)
    sh("ip", "netns", "exec", a, "iptables-nft", "-t", "nat", "-D", "KUBE-SERVICES", "1")
    assert "10.96.0.10/32" not in nft_save(a)

    # a native nft table is part of the same generation
    sh("ip", "netns", "exec", a, "nft", "add", "table", "inet", "extra")
    ruleset = collect_node("n", a).host.netfilter.nft_ruleset
    assert ruleset and [i["table"]["name"] for i in ruleset["nftables"] if "table" in i] == ["extra"]

    # legacy tables do not bump the nft generation, but iptables-nft-save mentions them
    sh("ip", "netns", "exec", a, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT")
    runs_before = len(tool_runs)
    nf = collect_node("n", a).host.netfilter
    assert "iptables-nft-save" in tool_runs[runs_before:] and nf.mixed_backends
    assert tool_runs.count("iptables-nft-save") == 5  # one per dump: no change was served from the cache
    assert len(netfilter.NFT_CACHE) == 1  # each new version replaced the namespace's old one


def test_concurrent_readers_share_one_read(nodes: tuple[str, str], tool_runs: list[str]) -> None:
    a, _ = nodes
    more = "".join(f"-A KUBE-SERVICES -d 10.97.{i // 250}.{i % 250}/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"
                   for i in range(2000))  # long enough a read for the three to overlap
    sh("ip", "netns", "exec", a, "iptables-nft-restore", "--noflush", input=f"*nat\n{more}COMMIT\n")
    start = threading.Barrier(3)

    def read() -> str:
        start.wait()
        errors: list[str] = []
        state = netfilter.read_netfilter(errors)
        assert errors == []
        return state.iptables[0].save

    ref = netns.host_ref(a)
    saves = netns.run_many([(ref, read)] * 3, workers=3)
    assert len(set(saves)) == 1 and "10.97.7.249/32" in str(saves[0]) and tool_runs == ["iptables-nft-save"]


def test_namespaces_with_equal_generations_do_not_share_entries(nodes: tuple[str, str], tool_runs: list[str]) -> None:
    a, b = nodes
    assert generation(a) == generation(b)
    assert "--to-destination 10.244.1.10:8080" in nft_save(a)
    assert "--to-destination 10.244.1.20:8080" in nft_save(b)
    assert "--to-destination 10.244.1.10:8080" in nft_save(a) and tool_runs == ["iptables-nft-save"] * 2


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_agent_reads_changed_rules_ahead_of_requests(nodes: tuple[str, str], tool_runs: list[str],
                                                          nats_url: str) -> None:
    a, _ = nodes
    bus = await Bus.connect(nats_url, name="nft-cache-test", settings=Settings(nats_url=nats_url))
    agent = NodeAgent(bus, "node-a", a, nft_refresh_s=0.2)
    try:
        await agent.start()
        await wait_for(lambda: tool_runs.count("iptables-nft-save") == 1)  # read at start
        sh("ip", "netns", "exec", a, "iptables-nft", "-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.0.12/32",
           "-p", "tcp", "--dport", "9090", "-j", "DNAT", "--to-destination", "10.244.1.12:9090")
        await wait_for(lambda: tool_runs.count("iptables-nft-save") == 2)  # read again after the change
        reply = await request_dump(bus, "node-a", 10.0)
        assert reply.ok and reply.blob is not None, reply.error
        assert tool_runs.count("iptables-nft-save") == 2  # the request found it read
        dump = decode_dump(await bus.get_blob(reply.blob))
        save = next(s.save for s in dump.host.netfilter.iptables if s.backend == "nft")
        assert "--dport 9090 -j DNAT --to-destination 10.244.1.12:9090" in save
    finally:
        await agent.stop()
        await bus.close()
