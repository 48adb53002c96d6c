"""Start-up time of the command-line entry points, and what they import.

    .venv/bin/python bench/cli_startup.py [--runs 7]

Prints the median wall time of `netdiag --help` and `kubectl-netdiag --help` (target <= 0.3 s),
of `netdiag diagnose --server URL ...` to its first output byte and to its exit against a
running `netdiag up --snapshot examples/snapshots/shop` (target <= 0.5 s to first output), and
the ten costliest imports of each (`python -X importtime`, cumulative microseconds).

Before the thin client (services/client.py) and lazy imports: `--help` 1.5-1.9 s, both entry
points; every command imported aiohttp, networkx, kubernetes and every service up front.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "snapshots" / "shop"
REQUEST = ["--src", "10.244.1.3", "--dst", "10.244.2.3", "--port", "5432", "--protocol", "tcp"]


def entry(name: str, module: str) -> list[str]:
    """The installed console script when there is one (what a user runs), else `python -m`."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def wall(argv: list[str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout or stderr, seconds to exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = None
    streams = [proc.stdout, proc.stderr]
    while streams:
        ready, _, _ = select.select(streams, [], [])
        for s in ready:
            chunk = os.read(s.fileno(), 65536)
            if not chunk:
                streams.remove(s)
            elif first is None:
                first = time.perf_counter() - t0
    proc.wait()
    end = time.perf_counter() - t0
    if proc.returncode not in (0, 1, 2):
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return (first if first is not None else end), end


def import_profile(code: str, top: int = 10) -> list[tuple[int, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, capture_output=True,
                         text=True).stderr
    rows = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and not m.group(2).strip(" ") and len(m.group(2)) <= 1:  # top-level imports only
            rows.append((int(m.group(1)), m.group(3)))
    total = sum(us for us, _ in rows)
    return [(total, "(all)"), *sorted(rows, reverse=True)[:top]]


def server_seconds(url: str) -> float:
    """POST to result as the gateway sees it, with no CLI at all (the part start-up cannot shorten)."""
    import json

    body = json.dumps(dict(zip(REQUEST[::2], REQUEST[1::2], strict=True))).replace('"--', '"').encode()
    body = body.replace(b'"5432"', b"5432")
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/api/v1/diagnoses", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        location = resp.headers["Location"]
    with urllib.request.urlopen(f"{url}{location}/events", timeout=30) as resp:
        for line in resp:
            if line.startswith(b"event: result"):
                break
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_shop(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*entry("netdiag", "services.cli"), "up", "--port", str(port), "--data-dir", data_dir,
                             "--snapshot", str(SHOP)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("netdiag up did not become ready")


def main(runs: int) -> None:
    print(f"median of {runs} runs (wall time, this machine's load included)")
    figures: dict[str, float] = {}
    floor = [wall([sys.executable, "-c", "pass"])[1] for _ in range(runs)]
    print(f"{'python -c pass (the floor)':<34} {statistics.median(floor):6.3f} s")
    for name, module in (("netdiag", "services.cli"), ("kubectl-netdiag", "services.kubectl")):
        argv = [*entry(name, module), "--help"]
        times = [wall(argv)[1] for _ in range(runs)]
        figures[f"{name} --help"] = statistics.median(times)
        print(f"{name + ' --help':<34} {statistics.median(times):6.3f} s  (min {min(times):.3f})")
    data_dir = tempfile.mkdtemp(prefix="netdiag-bench-")
    server, url = serve_shop(data_dir)
    try:
        argv = [*entry("netdiag", "services.cli"), "diagnose", "--server", url, *REQUEST, "--output", "json"]
        wall(argv)  # warm-up: the first diagnosis of a stack loads the snapshot
        pairs = [wall(argv) for _ in range(runs)]
        first = statistics.median(p[0] for p in pairs)
        done = statistics.median(p[1] for p in pairs)
        figures["diagnose --server first output"] = first
        gateway_s = statistics.median(server_seconds(url) for _ in range(runs))
        print(f"{'diagnose --server: first output':<34} {first:6.3f} s   exit {done:.3f} s   "
              f"(of which the gateway's own POST-to-result {gateway_s:.3f} s)")
    finally:
        server.terminate()
        server.wait(15)
        shutil.rmtree(data_dir, ignore_errors=True)
    for label, code in (("netdiag --help imports", "import services.cli; services.cli.build_parser()"),
                        ("diagnose --server --output json imports",
                         "import services.cli, services.client, http.client, secrets, urllib.parse")):
        print(f"\n{label} (cumulative µs, top level):")
        for us, mod in import_profile(code):
            print(f"  {us:>9}  {mod}")
    ok = (figures["netdiag --help"] <= 0.3 and figures["kubectl-netdiag --help"] <= 0.3
          and figures["diagnose --server first output"] <= 0.5)
    print(f"\ntargets (--help <= 0.3 s, first output <= 0.5 s): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    main(parser.parse_args().runs)
