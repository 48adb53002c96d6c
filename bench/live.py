"""Live confirmation's cost on the basic lab (issue 15's targets), with real agents and a real kernel.

    sudo .venv/bin/python bench/live.py [--runs 10] [--flood-s 5] [--pps 20000]

1. Tracer start-up: spawning bpftrace until its probes are attached (paid once per agent process).
2. Added latency of `live: true` over the same diagnosis without it (median of paired runs):
   a delivered TCP path (target < 150 ms) and a dropped one (target: the probe timeout + < 150 ms).
3. Drop-metrics overhead while a lab node forwards a steady UDP flood between two pods (target < 3 %
   of one core): the BPF program's own run time (kernel.bpf_stats_enabled) plus bpftrace's user
   and system CPU, per second of flood; once with the flood delivered, once with every packet dropped
   (the worst case: each drop updates the kernel map).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `lab` is the package, not bench/lab.py

import contextlib

from bench.labstack import lab_stack, timed
from lab.dataplane import Lab, new_prefix
from lab.faults import BY_NAME
from lab.scenario import Scenario, resolve
from services.collector.droptrace import DropCounter, DropTracer
from services.collector.reader import netns

ROOT = Path(__file__).resolve().parent.parent
BODY = {"src": "pod:web/client", "dst": "pod:shop/api-2", "port": 8080, "protocol": "tcp"}
FLOOD_PORT = 9099
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


async def paired(session: aiohttp.ClientSession, url: str, body: dict, runs: int, timeout_s: float
                 ) -> tuple[float, float, str]:
    plain, live = [], []
    outcome = "?"
    for _ in range(runs):
        ms, _ = await timed(session, url, body)
        plain.append(ms)
        ms, doc = await timed(session, url, {**body, "options": {"live": True, "live_timeout_s": timeout_s}})
        live.append(ms)
        outcome = f"{doc['result']['live']['probe']['outcome']} ({doc['result']['live']['agreement']})"
        await asyncio.sleep(1.0)  # stay under the agent's probe rate limit
    return statistics.median(plain), statistics.median(live), outcome


async def latency(lab: Lab, runs: int) -> None:
    body = {**BODY, "src": lab.address(str(BODY["src"])), "dst": lab.address(str(BODY["dst"]))}
    async with lab_stack(lab, live_probe=True) as stack, aiohttp.ClientSession() as session:
        for agent in stack.node_agents:
            status = await agent.tracing_ready()
        print(f"tracer: {status}")
        await timed(session, stack.url, body)  # warm caches
        p, lv, outcome = await paired(session, stack.url, body, runs, 2.0)
        print(f"delivered tcp path: without live {p:.0f} ms, with live {lv:.0f} ms → added {lv - p:.0f} ms "
              f"(target < 150 ms); probe {outcome}")
        await asyncio.to_thread(BY_NAME["forward_drop"].inject, lab)
        timeout = 1.0
        p, lv, outcome = await paired(session, stack.url, body, runs, timeout)
        print(f"dropped tcp path: without live {p:.0f} ms, with live {lv:.0f} ms → added {lv - p:.0f} ms = probe "
              f"timeout {timeout * 1000:.0f} ms + {lv - p - timeout * 1000:.0f} ms (target < 150 ms); probe {outcome}")


def startup() -> None:
    t = DropTracer()
    started = time.perf_counter()
    status = t._bt.start()
    print(f"tracer start-up: {(time.perf_counter() - started) * 1000:.0f} ms ({status})")
    t._bt.stop()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bpf_run_ns() -> int:
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout)
    return sum(p.get("run_time_ns", 0) for p in progs if p.get("type") == "tracepoint" and
               "kfree_skb" in str(p.get("name", "")))


def flood(lab: Lab, seconds: float, pps: int) -> int:
    """UDP from web/client to shop/api-2 across node-1 and node-2 at `pps`; packets sent."""
    dst = lab.address("pod:shop/api-2")
    ref = netns.NetnsRef(f"/var/run/netns/{lab.netns_of('web/client')}", 0)
    sent = 0

    def run() -> None:
        nonlocal sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            end = time.monotonic() + seconds
            gap = 1.0 / pps
            nxt = time.monotonic()
            while time.monotonic() < end:
                try:
                    s.sendto(b"x" * 64, (dst, FLOOD_PORT))
                    sent += 1
                except OSError:
                    pass
                nxt += gap
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    netns.run_in(ref, run)
    return sent


def overhead(lab: Lab, seconds: float, pps: int) -> None:
    sink = netns.run_in(netns.NetnsRef(f"/var/run/netns/{lab.netns_of('shop/api-2')}", 0),
                        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sink.bind(("0.0.0.0", FLOOD_PORT))
    stop = threading.Event()

    def drain() -> None:
        sink.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sink.recv(2048)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    counter = DropCounter(interval_s=1)
    status = counter.start()
    if not status.available:
        print(f"drop metrics unavailable: {status.reason}")
        return
    print(f"drop-metrics tracer start-up: {status.startup_ms:.0f} ms")
    time.sleep(2)  # not count the end of bpftrace's own start-up
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        for label, inject in (("delivered flood", None), ("dropped flood (FORWARD DROP on node-2)", "forward_drop")):
            if inject:
                lab.exec("node-2", [lab.expand("{iptables}"), "-I", "FORWARD", "1", "-p", "udp", "--dport",
                                    str(FLOOD_PORT), "-j", "DROP"])
            assert counter._bt.proc is not None
            cpu0, bpf0, t0 = _cpu_s(counter._bt.proc.pid), _bpf_run_ns(), time.perf_counter()
            sent = flood(lab, seconds, pps)
            wall = time.perf_counter() - t0
            cpu = _cpu_s(counter._bt.proc.pid) - cpu0
            bpf = (_bpf_run_ns() - bpf0) / 1e9
            share = (cpu + bpf) / wall * 100
            print(f"{label}: {sent / wall:.0f} pps for {wall:.1f} s — BPF program {bpf * 1000:.1f} ms, bpftrace "
                  f"process {cpu * 1000:.0f} ms → {share:.2f} % of one core (target < 3 %)")
    finally:
        STATS.write_text(old)
        stop.set()
        drainer.join()
        sink.close()
        counter.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--flood-s", type=float, default=5.0)
    p.add_argument("--pps", type=int, default=20000)
    args = p.parse_args()
    startup()
    lab = Lab.up(resolve(Scenario.load(ROOT / "examples" / "lab" / "basic.yaml")), prefix=new_prefix())
    try:
        overhead(lab, args.flood_s, args.pps)
        asyncio.run(latency(lab, args.runs))
    finally:
        lab.down()


if __name__ == "__main__":
    main()
