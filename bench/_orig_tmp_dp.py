"""Benchmark the dataplane engines: parse a kube-proxy ruleset and trace packets through it.

Prints: parse time for 10,000 Services x 3 endpoints (~100,000 rules), time per traced packet at
100 and 10,000 Services (targets: parse < 3 s, < 20 ms per packet, ratio <= 3), and peak RSS.
Run: .venv/bin/python bench/dataplane.py [--services N]
"""

from __future__ import annotations

import argparse
import ipaddress
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.simulator.dataplane.netfilter import (
    FlowState,
    TraceContext,
    Tracer,
    parse_iptables_save,
)
from tests.simulator.dataplane.kubeproxy_rules import Endpoint, Service, kube_proxy_save

NODE_IP = "192.168.0.2"


def services(n: int) -> list[Service]:
    out = []
    for i in range(n):
        vip = ipaddress.ip_address("172.30.0.0") + i + 1
        eps = [Endpoint(str(ipaddress.ip_address("10.128.0.0") + 3 * i + k), 8080) for k in range(3)]
        out.append(Service(f"ns{i % 50}/svc{i}:http", str(vip), 80, node_port=30000 + i % 2000 if i < 2000 else None,
                           endpoints=eps))
    return out


def per_packet_ms(n: int, packets: int = 200) -> tuple[list[float], float, int, float]:
    """Per-packet ms (first visits compile the rules they touch), parse s, rules, index-build s."""
    text = kube_proxy_save(services(n), node_ip=NODE_IP)
    t0 = time.perf_counter()
    rs = parse_iptables_save(text)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tracer = Tracer(rs, TraceContext.from_strings(node_ips=[NODE_IP]))
    index_s = time.perf_counter() - t0
    vips = [ipaddress.ip_address("172.30.0.0") + 1 + (k * 7919) % n for k in range(packets)]
    times = []
    for _ in ("cold: first visits compile their rules", "warm"):
        t0 = time.perf_counter()
        for k, vip in enumerate(vips):
            st = FlowState(src=ipaddress.ip_address("10.0.0.2"), dst=vip, protocol="tcp", sport=40000 + k, dport=80)
            branches = tracer.trace_node(st)
            assert len(branches) == 3 and all(b.dnat_destination for b in branches), branches
        times.append((time.perf_counter() - t0) * 1000 / packets)
    return times, parse_s, rs.rule_count, index_s


def full_compile_s(n: int) -> float:
    rs = parse_iptables_save(kube_proxy_save(services(n), node_ip=NODE_IP))
    t0 = time.perf_counter()
    rs.unsupported_rules()  # compiles every rule
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    a = ap.parse_args()
    small_ms, _, small_rules, _ = per_packet_ms(100)
    big_ms, parse_s, big_rules, index_s = per_packet_ms(a.services)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"parse: {big_rules} rules ({a.services} Services x 3 endpoints) in {parse_s:.2f} s (target < 3 s)")
    print(f"tracer setup (compiles + indexes the large chains): {index_s:.2f} s")
    print(f"compiling every rule eagerly (not needed for tracing): {full_compile_s(a.services):.2f} s")
    for label, i in (("cold", 0), ("warm", 1)):
        print(f"trace ({label}): {small_ms[i]:.3f} ms/packet at 100 Services ({small_rules} rules), "
              f"{big_ms[i]:.3f} ms/packet at {a.services} Services (target < 20 ms): "
              f"ratio {big_ms[i] / small_ms[i]:.2f}x (target <= 3x)")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
