"""Collector benchmark: one node namespace carrying 110 pod namespaces and kube-proxy-style
iptables rules for 5,000 Services (2 endpoints each), read by a real node agent over NATS.

Prints, per iptables backend: collection time (agent-side and request round trip, best and
median of 5 repeated requests); as round trips, the first request to a fresh agent (it may
wait for the agent's read-ahead of the nft rules at start) and the request right after a
rule change (a cache miss: the rules are read again); compressed dump size; the agent's peak
RSS (VmHWM) over all of them. The machine is shared: the load average is printed too.
Targets: collection < 1 s, dump < 5 MB compressed, agent RSS < 100 MB.

    sudo .venv/bin/python bench/collector.py [--services 5000] [--pods 110] [--backend legacy|nft|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats

from services.collector.agent import request_dump
from shared.bus import Bus
from shared.config import Settings
from shared.natsserver import NatsServer


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(list(argv), input=input, check=True, capture_output=True, text=True)


def kube_proxy_rules(services: int) -> str:
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    rules = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
             "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
             "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
             "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
             "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully"]
    for i in range(services):
        vip, svc = f"10.96.{i // 250}.{i % 250 + 1}", f"KUBE-SVC-{i:016X}"
        chains.append(f":{svc} - [0:0]")
        rules.append(f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"ns/svc{i}:http cluster IP\" "
                     f"-m tcp --dport 80 -j {svc}")
        for e in range(2):
            sep, n = f"KUBE-SEP-{i:014X}{e:02X}", i * 2 + e
            ep = f"10.244.{n // 250 % 250}.{n % 250 + 1}"
            chains.append(f":{sep} - [0:0]")
            prob = " -m statistic --mode random --probability 0.50000000000" if e == 0 else ""
            rules.append(f"-A {svc} -m comment --comment \"ns/svc{i}:http -> {ep}:8080\"{prob} -j {sep}")
            rules.append(f"-A {sep} -s {ep}/32 -m comment --comment \"ns/svc{i}:http\" -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} -p tcp -m comment --comment \"ns/svc{i}:http\" -m tcp "
                         f"-j DNAT --to-destination {ep}:8080")
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]"]
    return "\n".join([*head, *chains, *rules, "COMMIT", ""])


def build(prefix: str, pods: int, services: int, backend: str) -> list[str]:
    node = f"{prefix}-node"
    made = [node]
    sh("ip", "netns", "add", node)
    sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", node, "addr", "add", "10.244.0.1/16", "dev", "cni0")
    sh("ip", "-n", node, "link", "set", "cni0", "up")
    for i in range(pods):
        pod = f"{prefix}-p{i}"
        sh("ip", "netns", "add", pod)
        made.append(pod)
        sh("ip", "-n", node, "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", node, "link", "set", f"veth{i}", "master", "cni0", "up")
        batch = (f"addr add 10.244.{1 + i // 250}.{i % 250 + 1}/16 dev eth0\nlink set eth0 up\nlink set lo up\n"
                 "route add default via 10.244.0.1\n")
        sh("ip", "-n", pod, "-batch", "-", input=batch)
    sh("ip", "netns", "exec", node, f"iptables-{backend}-restore", input=kube_proxy_rules(services))
    return made


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def measure(nats_url: str, node_ns: str, runs: int, backend: str) -> dict[str, float]:
    agent = subprocess.Popen([sys.executable, "-m", "services.collector", "agent", "--node", "bench-node",
                              "--netns", node_ns, "--nats", nats_url], cwd=Path(__file__).resolve().parent.parent)
    bus = await Bus.connect(nats_url, name="bench", settings=Settings(nats_url=nats_url))
    try:
        for _ in range(100):  # until the agent subscribes; its first answer is the cold one
            try:
                t = time.perf_counter()
                cold = await request_dump(bus, "bench-node", 60.0, pod_ips={"10.244.1.1": "default/p0"})
                cold_round_ms = (time.perf_counter() - t) * 1000
                break
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.1)
        assert cold.ok, cold.error
        agent_ms, round_ms = [], []
        reply = None
        for _ in range(runs):
            t = time.perf_counter()
            reply = await request_dump(bus, "bench-node", 30.0)
            round_ms.append((time.perf_counter() - t) * 1000)
            assert reply.ok, reply.error
            agent_ms.append(reply.duration_ms)
        assert reply is not None and reply.blob is not None
        # one rule more, as kube-proxy adds when a Service appears: nothing may be reused
        sh("ip", "netns", "exec", node_ns, f"iptables-{backend}", "-t", "nat", "-A", "KUBE-SERVICES", "-d",
           "10.97.0.1/32", "-p", "tcp", "--dport", "80", "-j", "KUBE-MARK-MASQ")
        t = time.perf_counter()
        changed = await request_dump(bus, "bench-node", 30.0)
        changed_round_ms = (time.perf_counter() - t) * 1000
        assert changed.ok, changed.error
        return {"agent_ms_best": min(agent_ms), "agent_ms_median": statistics.median(agent_ms),
                "round_trip_ms_median": statistics.median(round_ms), "namespaces": reply.namespaces,
                "cold_ms": cold_round_ms, "changed_ms": changed_round_ms,
                "dump_bytes": reply.size, "compressed_bytes": reply.blob.size,
                "agent_rss_mb": vm_hwm_kb(agent.pid) / 1024}
    finally:
        await bus.close()
        agent.terminate()
        agent.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=5000)
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", choices=("legacy", "nft", "both"), default="both")
    args = p.parse_args()
    backends = ("legacy", "nft") if args.backend == "both" else (args.backend,)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp))
        server.start()
        try:
            for backend in backends:
                prefix = f"cb{uuid.uuid4().hex[:6]}"
                made: list[str] = []
                try:
                    t = time.perf_counter()
                    made = build(prefix, args.pods, args.services, backend)
                    built_s = time.perf_counter() - t
                    r = asyncio.run(measure(server.url, made[0], args.runs, backend))
                finally:
                    for ns in reversed(made):
                        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                ok = lambda good: "ok" if good else "OVER TARGET"  # noqa: E731
                print(f"[{backend} iptables] {args.pods} pods, {args.services} Services "
                      f"(built in {built_s:.1f}s), {r['namespaces']:.0f} namespaces dumped")
                print(f"  collection (agent)   best {r['agent_ms_best']:.0f} ms, median {r['agent_ms_median']:.0f} ms"
                      f"  [{ok(r['agent_ms_median'] < 1000)} < 1000 ms]")
                print(f"  round trip, cold     {r['cold_ms']:.0f} ms first request to a fresh agent, "
                      f"{r['changed_ms']:.0f} ms right after a rule change")
                print(f"  request round trip   median {r['round_trip_ms_median']:.0f} ms (incl. gzip + object store)")
                print(f"  dump size            {r['dump_bytes'] / 1e6:.2f} MB JSON, "
                      f"{r['compressed_bytes'] / 1e6:.2f} MB gzip  [{ok(r['compressed_bytes'] < 5e6)} < 5 MB]")
                print(f"  agent peak RSS       {r['agent_rss_mb']:.0f} MB  [{ok(r['agent_rss_mb'] < 100)} < 100 MB]")
        finally:
            server.stop()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
