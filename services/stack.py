"""The embedded stack (composition root): a nats-server child process plus every service
and the gateway in one process — the laptop, demo, CLI and test setup. Each service keeps
its own NATS connection, exactly as the separate Deployments do in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor

from services.cloud.handler import CloudStage
from services.collector.agent import NodeAgent
from services.collector.handler import CollectorStage
from services.collector.probe import ProbeLimits
from services.gateway.app import INTAKE, Intake, create_app
from services.gateway.store import ResultSink
from services.simulator.handler import SimulatorStage
from services.topology.handler import TopologyStage
from shared.bus import PUBLISHED, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.stage import Stage, StageRunner
from shared.telemetry import setup_tracing, shutdown_tracing

StageFactory = Callable[[Bus, Settings], Stage]

PIPELINE: tuple[StageFactory, ...] = (TopologyStage, CollectorStage, CloudStage, SimulatorStage, ResultSink)


class EmbeddedStack:
    """`async with EmbeddedStack(settings) as stack:` → `stack.url` is the gateway."""

    @property
    def node_agents(self) -> list[NodeAgent]:
        return list(self._agents)

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        data_dir: Path | None = None,
        nats_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway: bool = True,
        stages: tuple[StageFactory, ...] = PIPELINE,
        agents: Mapping[str, str | None] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None and nats_url is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="netdiag-")
            data_dir = Path(self._tmp.name)
        self.nats = NatsServer(data_dir / "nats") if nats_url is None and data_dir else None
        self._nats_url = nats_url
        self.host, self.port, self.with_gateway = host, port, gateway
        self.stage_factories = stages
        # node → its host netns (None: this process's own namespace); in a cluster agents are a DaemonSet
        self.agents = agents or {}
        self.stop_event = asyncio.Event()
        self.runners: list[StageRunner] = []
        self._agents: list[NodeAgent] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._buses: list[Bus] = []
        self._web: web.AppRunner | None = None
        self.gateway_bus: Bus | None = None
        self._spans: SpanProcessor | None = None  # the OTLP export, when configured

    @property
    def nats_url(self) -> str:
        return self.nats.url if self.nats else str(self._nats_url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def intake(self) -> Intake:
        """The gateway's own way in, for a client in this process (an embedded --batch)."""
        assert self._web is not None, "no gateway in this stack"
        return self._web.app[INTAKE]

    async def start(self) -> EmbeddedStack:
        self._spans = setup_tracing("stack")
        PUBLISHED.enabled = True  # every stage in this process: each may take what another published
        if self.nats:
            await asyncio.to_thread(self.nats.start)
        self.settings = self.settings.model_copy(update={"nats_url": self.nats_url})
        if self.settings.signing_key() is None:  # one process: its simulator and its sink share a fresh key
            self.settings = self.settings.model_copy(update={"result_key": secrets.token_hex(16)})
        for factory in self.stage_factories:
            bus = await Bus.connect(name=getattr(factory, "name", "stage"), settings=self.settings)
            self._buses.append(bus)
            runner = StageRunner(bus, factory(bus, self.settings))
            self.runners.append(runner)
            self._tasks.append(asyncio.create_task(runner.run(self.stop_event)))
        for node, netns in self.agents.items():
            # started here rather than as run_agent tasks so the stack is only "up" once every
            # agent is subscribed (a request right after start must not meet NoResponders)
            bus = await Bus.connect_agent(node, self.settings)
            self._buses.append(bus)
            agent = NodeAgent(bus, node, netns, live=self.settings.live_probe,
                              probe_limits=ProbeLimits.of(self.settings))
            await agent.start()
            self._agents.append(agent)
        if self.with_gateway:
            self.gateway_bus = await Bus.connect(name="gateway", settings=self.settings)
            self._buses.append(self.gateway_bus)
            # long-lived SSE handlers are cancelled after 1 s instead of aiohttp's 60 s default
            self._web = web.AppRunner(create_app(self.gateway_bus), access_log=None, shutdown_timeout=1.0)
            await self._web.setup()
            site = web.TCPSite(self._web, self.host, self.port)
            await site.start()
            self.port = self._web.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self._web:
            await self._web.cleanup()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for agent in self._agents:
            await agent.stop()
        for bus in self._buses:
            with contextlib.suppress(Exception):
                await bus.close()
        if self.nats:
            await asyncio.to_thread(self.nats.stop)
        if self._tmp:
            self._tmp.cleanup()
        await shutdown_tracing(self._spans)  # after the stages: their last spans have ended
        self._spans = None

    async def __aenter__(self) -> EmbeddedStack:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
