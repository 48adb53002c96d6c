"""What one object-store bucket per node costs NATS (docs/install.md, "Node dump buckets").

Each node's dumps go into its own JetStream object store, `netdiag-node-<node>` (shared/bus.py
`node_bucket`), which the collector creates before it first asks the node (`Bus.ensure_node_bucket`).
Every bucket is a stream of its own. This creates one bucket per node for `--nodes` nodes on a real
nats-server (file storage, the deployment's TTL, `--replicas` 1; 3 runs a 3-server JetStream cluster),
then prints: the time to create them and to look them all up from a fresh process (what a restarted
collector pays once per node it asks), the server's resident memory and store size before and after,
the same after a restart of the server(s) with all the buckets in place, and how long that restart took
until JetStream answered again.

    .venv/bin/python bench/node_buckets.py [--nodes 5000] [--replicas 1|3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.bus import Bus, BusUnavailable
from shared.config import Settings
from shared.natsserver import NatsServer
from tests.deploy.natscluster import NatsCluster

CONCURRENCY = 16  # replicas of the collector stage asking new nodes at once


def rss_mb(servers: list[NatsServer]) -> float:
    total = 0
    for server in servers:
        assert server.proc is not None
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return total / 1024


def store_mb(root: Path) -> float:
    out = subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


async def connect(url: str, settings: Settings, timeout: float = 120.0) -> Bus:
    """JetStream answers once every stream is recovered (and, clustered, a meta leader is elected)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Bus.connect(name="bench-buckets", settings=settings)
        except (BusUnavailable, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def ensure_all(bus: Bus, nodes: list[str]) -> float:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(node: str) -> None:
        async with slots:
            await bus.ensure_node_bucket(node)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in nodes))
    return time.perf_counter() - started


async def main(count: int, replicas: int) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}; {count} nodes, stream replicas {replicas}")
    nodes = [f"node-{i:05d}" for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="netdiag-buckets-") as tmp:
        root = Path(tmp)
        cluster = NatsCluster(root, size=3) if replicas > 1 else None
        servers = cluster.servers if cluster else [NatsServer(root / "n0")]
        for server in servers:
            server.start()
        url = ",".join(s.url for s in servers)
        settings = Settings(nats_url=url, stream_replicas=replicas)
        try:
            bus = await connect(url, settings)
            base_rss, base_disk = rss_mb(servers), store_mb(root)
            print(f"before: server RSS {base_rss:.0f} MB, store {base_disk:.1f} MB (stream, results, blobs)")
            created = await ensure_all(bus, nodes)
            info = await bus.js.account_info()
            rss, disk = rss_mb(servers), store_mb(root)
            print(f"created {count} buckets in {created:.1f} s ({created / count * 1000:.1f} ms each, "
                  f"{CONCURRENCY} at once); account streams {info.streams}")
            print(f"after:  server RSS {rss:.0f} MB (+{(rss - base_rss) * 1024 / count:.1f} KB per bucket), "
                  f"store {disk:.1f} MB (+{(disk - base_disk) * 1024 / count:.1f} KB per bucket)")
            await bus.close()

            fresh = await connect(url, settings)
            looked = await ensure_all(fresh, nodes)
            print(f"a fresh process looks every bucket up in {looked:.1f} s ({looked / count * 1000:.1f} ms each)")
            await fresh.close()

            for server in servers:
                server.stop()
            started = time.perf_counter()
            for server in servers:
                server.start(timeout=600)  # it opens its client port only once JetStream has recovered
            bus = await connect(url, settings)
            await bus.ensure_node_bucket(nodes[-1])
            restart = time.perf_counter() - started
            print(f"restart with every bucket in place: JetStream answers after {restart:.1f} s; "
                  f"server RSS {rss_mb(servers):.0f} MB")
            await bus.close()
        finally:
            for server in servers:
                server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--replicas", type=int, choices=(1, 3), default=1)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.replicas))
