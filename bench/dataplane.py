"""Benchmark the dataplane engines: parse a kube-proxy ruleset and trace packets through it.

Prints, for 100 and 10,000 Services x 3 endpoints (~100,000 rules): parse time, tracer setup time,
the first packet to each of 50 distinct Services (median: its rules are compiled on that first visit),
the steady-state packet (median, rules already compiled), their 10,000/100 ratios, memory, and the
cost of a full garbage-collector pass (the tail a packet may pay when one lands in its trace).
Targets: parse < 3 s, < 20 ms per packet, ratio <= 3 (first packet and steady state alike).
Run: .venv/bin/python bench/dataplane.py [--services N] [--full-compile]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.kubeproxy import Config, Endpoint, ServicePort, ensured, payload
from services.simulator.dataplane.netfilter import (
    FlowState,
    TraceContext,
    Tracer,
    parse_iptables_save,
)

NODE_IP = "192.168.0.2"
DISTINCT = 50  # Services whose first packet is timed
WARM_ROUNDS = 4  # steady state: every timed Service traced again this many times


@dataclass
class Figures:
    services: int
    rules: int
    parse_s: float
    setup_s: float
    first_ms: list[float]  # one per distinct Service, its first packet
    warm_ms: list[float]
    rss_growth_mb: float  # resident memory added by parsing + setup (the generated text excluded)
    full_gc_ms: float  # one full garbage-collector pass with the ruleset loaded: the worst stall it adds
    gc_objects: int


def services(n: int) -> list[ServicePort]:
    out = []
    for i in range(n):
        vip = ipaddress.ip_address("172.30.0.0") + i + 1
        eps = tuple(Endpoint(str(ipaddress.ip_address("10.128.0.0") + 3 * i + k), 8080) for k in range(3))
        out.append(ServicePort(namespace=f"ns{i % 50}", name=f"svc{i}", port_name="http", port=80, cluster_ip=str(vip),
                               node_port=30000 + i % 2000 if i < 2000 else None, endpoints=eps))
    return out


def kube_proxy_save(ports: list[ServicePort]) -> str:
    """The node's kube-proxy rules: the jumps it ensures plus a full sync (lab.kubeproxy, upstream's shape)."""
    config = Config(node="node-1", node_ip=NODE_IP)
    return ensured(config).render() + payload(ports, config)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _trace_ms(tracer: Tracer, vip: ipaddress.IPv4Address, sport: int) -> float:
    st = FlowState(src=ipaddress.ip_address("10.0.0.2"), dst=vip, protocol="tcp", sport=sport, dport=80)
    t0 = time.perf_counter()
    branches = tracer.trace_node(st)
    ms = (time.perf_counter() - t0) * 1000
    assert len(branches) == 3 and all(b.dnat_destination for b in branches), branches
    return ms


def measure(n: int) -> Figures:
    text = kube_proxy_save(services(n))
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    rs = parse_iptables_save(text)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tracer = Tracer(rs, TraceContext.from_strings(node_ips=[NODE_IP]))
    setup_s = time.perf_counter() - t0
    rss_growth = _rss_mb() - rss0
    t0 = time.perf_counter()
    gc.collect()
    full_gc_ms = (time.perf_counter() - t0) * 1000
    # 7919 is prime and coprime with 100: DISTINCT Services spread over the whole chain, none repeated
    vips = [ipaddress.IPv4Address("172.30.0.0") + 1 + (k * 7919) % n for k in range(DISTINCT)]
    first = [_trace_ms(tracer, vip, 40000 + k) for k, vip in enumerate(vips)]
    warm = [_trace_ms(tracer, vip, 50000 + k) for _ in range(WARM_ROUNDS) for k, vip in enumerate(vips)]
    return Figures(n, rs.rule_count, parse_s, setup_s, first, warm, rss_growth, full_gc_ms, len(gc.get_objects()))


def full_compile_s(n: int) -> float:
    rs = parse_iptables_save(kube_proxy_save(services(n)))
    t0 = time.perf_counter()
    rs.unsupported_rules()  # compiles every rule
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--full-compile", action="store_true", help="also time compiling every rule (not needed "
                    "for tracing)")
    a = ap.parse_args()
    small, big = measure(100), measure(a.services)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"parse: {big.rules} rules ({big.services} Services x 3 endpoints) in {big.parse_s:.2f} s "
          f"(target < 3 s); {small.rules} rules in {small.parse_s * 1000:.1f} ms")
    print(f"tracer setup (dispatch indexes): {big.setup_s:.2f} s at {big.services} Services, "
          f"{small.setup_s * 1000:.1f} ms at {small.services}")
    for label, s_ms, b_ms in (("first packet to a Service", small.first_ms, big.first_ms),
                              ("steady state", small.warm_ms, big.warm_ms)):
        s_med, b_med = statistics.median(s_ms), statistics.median(b_ms)
        print(f"trace, {label} (median of {len(b_ms)}; max): {s_med:.3f} ms ({max(s_ms):.2f}) at {small.services} "
              f"Services, {b_med:.3f} ms ({max(b_ms):.2f}) at {big.services} (target < 20 ms): "
              f"ratio {b_med / s_med:.2f}x (target <= 3x)")
    print(f"memory: parse + setup of {big.services} Services added {big.rss_growth_mb:.0f} MB RSS; "
          f"peak RSS {peak_mb:.0f} MB (generated save text included)")
    print(f"garbage collector: a full pass takes {big.full_gc_ms:.1f} ms over {big.gc_objects} tracked objects with "
          f"{big.services} Services loaded ({small.full_gc_ms:.1f} ms at {small.services}); compiled rules add "
          "about 120 per Service traced")
    if a.full_compile:
        print(f"compiling every rule eagerly (not needed for tracing): {full_compile_s(a.services):.2f} s")


if __name__ == "__main__":
    main()
