"""A real 3-node nats-server cluster (JetStream, clustered) on loopback, built from NatsServer."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import nats

from shared.bus import Bus, BusUnavailable
from shared.config import Settings
from shared.natsserver import NatsServer

CLUSTER_NAME = "netdiag-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        route_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.servers = [
            NatsServer(root / f"n{i}", extra_args=[
                "--server_name", f"n{i}", "--cluster_name", CLUSTER_NAME,
                "--cluster", f"nats://127.0.0.1:{port}", "--routes", routes,
            ])
            for i, port in enumerate(route_ports)
        ]

    @property
    def url(self) -> str:
        """Every server, comma-separated: what NETDIAG_NATS_URL holds in a cluster."""
        return ",".join(s.url for s in self.servers)

    def start(self) -> NatsCluster:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self, name: str) -> None:
        """SIGKILL, not a graceful shutdown: the server vanishes mid-conversation."""
        server = self.servers[int(name.removeprefix("n"))]
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.proc = None

    async def connect_when_ready(self, settings: Settings, name: str, timeout: float = 20.0) -> Bus:
        """JetStream answers only once the cluster has elected a meta leader (a few seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await Bus.connect(name=name, settings=settings)
            except (BusUnavailable, nats.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
