"""`netdiag diagnose --snapshot examples/snapshots/shop --batch` at scale: throughput and memory.

    .venv/bin/python bench/batch.py [--lines 10000] [--concurrency 16] [--trivial 500]

Writes LINES requests over the shop snapshot (every pod to every pod and Service address on the
ports in use, cycled), runs the real CLI on them as a subprocess (embedded stack, every stage
real) and reads its output as it streams: lines/s overall and after the first 10 %, the CLI
process's and nats-server's CPU per diagnosis (what the machine's load does not change), the CLI
process's RSS sampled through the run (flat memory: RSS at 25 %, 50 %, 75 % and the end, and
the peak), then, in the same run, bench/pipeline.py's trivial-stage throughput and the ratio.
Target on this 2-core machine: >= 150 diagnoses/s and flat memory for 10,000 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import pipeline

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "snapshots" / "shop"


def requests(n: int) -> list[str]:
    """Pod → pod and pod → Service requests of the shop snapshot, cycled to n lines."""
    pods = json.loads((SHOP / "kubernetes" / "pods.json").read_text())
    services = json.loads((SHOP / "kubernetes" / "services.json").read_text())
    items = lambda doc: doc["items"] if isinstance(doc, dict) else doc  # noqa: E731
    ips = [p["status"]["podIP"] for p in items(pods) if p.get("status", {}).get("podIP")
           and not p["spec"].get("hostNetwork")]
    targets: list[tuple[str, int, str]] = []
    for s in items(services):
        for port in s["spec"].get("ports", []):
            protocol = port.get("protocol", "TCP").lower()
            if s["spec"].get("clusterIP") not in (None, "None") and protocol in ("tcp", "udp"):
                targets.append((s["spec"]["clusterIP"], port["port"], protocol))
    targets += [(ip, port, "tcp") for ip in ips for port in (80, 5432, 8080)]
    pairs = [(src, dst, port, proto) for src in ips for dst, port, proto in targets if src != dst]
    return [json.dumps({"src": s, "dst": d, "port": p, "protocol": pr})
            for s, d, p, pr in itertools.islice(itertools.cycle(pairs), n)]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def run_batch(lines: list[str], concurrency: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    samples: list[tuple[int, float]] = []
    done = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "diagnose", "--snapshot", str(SHOP), "--batch",
                             fh.name, "--concurrency", str(concurrency)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((done, rss_mb(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    first_at = tenth_at = None
    kids: list[int] = []
    cpu_at_tenth = cpu_at_end = (0.0, 0.0)
    verdicts: dict[str, int] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        done += 1
        now = time.perf_counter()
        first_at = first_at or now
        if done == max(1, len(lines) // 10):
            tenth_at = now
            # CPU from here on: what a diagnosis costs, whatever share of the cores the machine's load leaves us
            kids = children(proc.pid)
            cpu_at_tenth = (cpu_s(proc.pid), sum(cpu_s(k) for k in kids))
        if done == len(lines):
            cpu_at_end = (cpu_s(proc.pid), sum(cpu_s(k) for k in kids))
        doc = json.loads(line)
        key = doc["result"]["verdict"] if doc.get("result") else "error"
        verdicts[key] = verdicts.get(key, 0) + 1
        if done % max(1, len(lines) // 10) == 0:  # a figure every 10 %, so a cut run still reports
            print(f"  {done:>6} lines  {done / (now - t0):6.1f}/s  RSS {rss_mb(proc.pid):5.0f} MB", flush=True)
    proc.wait()
    end = time.perf_counter()
    stop.set()
    sampler.join()
    os.unlink(fh.name)
    assert done == len(lines), f"{done} of {len(lines)} lines answered"
    assert first_at is not None and tenth_at is not None
    steady = (done - len(lines) // 10) / max(end - tenth_at, 1e-9)
    print(f"batch: {done} lines in {end - t0:.1f} s ({done / (end - t0):.1f}/s overall, {steady:.1f}/s after the "
          f"first 10 %; first result after {first_at - t0:.1f} s); verdicts {verdicts}")
    counted = max(1, done - len(lines) // 10)
    cli_ms, nats_ms = ((b - a) / counted * 1000 for a, b in zip(cpu_at_tenth, cpu_at_end, strict=True))
    print(f"CPU per diagnosis after the first 10 %: {cli_ms:.2f} ms in the CLI process (every stage, the gateway, "
          f"the client), {nats_ms:.2f} ms in nats-server; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")

    def at(fraction: float) -> float:
        want = fraction * len(lines)
        return next((mb for n, mb in samples if n >= want), samples[-1][1] if samples else 0.0)

    peak = max((mb for _, mb in samples), default=0.0)
    print(f"RSS of the CLI process: {at(0.25):.0f} MB at 25 %, {at(0.5):.0f} MB at 50 %, {at(0.75):.0f} MB at 75 %, "
          f"{samples[-1][1] if samples else 0:.0f} MB at the end; peak {peak:.0f} MB")
    return {"throughput_per_s": steady, "overall_per_s": done / (end - t0), "rss_25": at(0.25), "rss_end": at(1.0),
            "peak_mb": peak}


def main(n: int, concurrency: int, trivial: int) -> None:
    lines = requests(n)
    print(f"{n} requests over {SHOP.relative_to(ROOT)} ({len(set(lines))} distinct), concurrency {concurrency}")
    batch = run_batch(lines, concurrency)
    print(f"\nbench/pipeline.py, trivial stages, {trivial} diagnoses, 20 clients (same run):")
    figures = asyncio.run(pipeline.main(runs=20, clients=20, total=trivial))
    ratio = batch["throughput_per_s"] / figures["throughput_per_s"]
    print(f"\nbatch {batch['throughput_per_s']:.1f}/s vs trivial pipeline {figures['throughput_per_s']:.1f}/s: "
          f"ratio {ratio:.2f}")
    flat = batch["rss_end"] <= batch["rss_25"] * 1.25 + 20
    ok = batch["throughput_per_s"] >= 150 and flat
    print(f"targets (>= 150/s, flat memory): {'met' if ok else 'MISSED'} (memory {'flat' if flat else 'GROWS'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--trivial", type=int, default=500, help="diagnoses for the trivial-pipeline comparison")
    args = parser.parse_args()
    main(args.lines, args.concurrency, args.trivial)
