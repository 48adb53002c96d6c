"""Run one or more stages as a standalone service: `python -m services.<stage> --nats URL`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.bus import Bus, BusUnavailable
from shared.config import Settings
from shared.health import Health
from shared.logs import setup_logging
from shared.stage import Stage, StageRunner
from shared.telemetry import setup_process, shutdown_tracing

log = logging.getLogger("netdiag.service")

StageFactory = Callable[[Bus, Settings], Stage]
EXIT_BUS_LOST = 3  # the NATS connection ended for good: the orchestrator restarts the process
EXIT_NO_BUS = 2  # NATS unreachable at start-up


class BusLost(RuntimeError):
    """A connection ended for good: the service stops (run_service turns it into exit EXIT_BUS_LOST).
    Not a SystemExit, which asyncio would let escape the event loop from inside a task."""


def service_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"netdiag {name} service")
    p.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    p.add_argument("--snapshot", type=Path, help="serve diagnoses from this snapshot directory")
    p.add_argument("--kubeconfig", type=Path)
    p.add_argument("--log-level")
    return p


async def start_health_server(health: Health, port: int | None) -> web.AppRunner | None:
    """/healthz and /readyz on `port` (the chart's probes), when one is configured."""
    if port is None:
        return None
    app = web.Application()
    health.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # the kubelet probes the pod address
    return runner


async def run_until_lost(stop: asyncio.Event, runners: list[StageRunner], buses: list[Bus]) -> None:
    """Run the stage runners until `stop`, or until a connection ends for good: then stop them and
    raise BusLost (a process exit with EXIT_BUS_LOST), since only a new process reconnects."""
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    lost = [asyncio.create_task(b.lost.wait()) for b in buses]
    try:
        await asyncio.wait([*tasks, *lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        for t in lost:
            t.cancel()
        await asyncio.gather(*tasks, *lost, return_exceptions=True)
    dead = next((b for b in buses if b.lost.is_set()), None)
    if dead is not None:
        raise BusLost(dead.lost_reason)


async def serve(factory: StageFactory, settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    name = getattr(factory, "name", "service")
    spans = setup_process(name, settings)
    bus = await Bus.connect(name=name, settings=settings)
    runner = StageRunner(bus, factory(bus, settings))
    web_runner = await start_health_server(Health([bus], [runner]), settings.health_port)
    try:
        await run_until_lost(stop, [runner], [bus])
    finally:
        if web_runner is not None:
            await web_runner.cleanup()
        await bus.close()
        await shutdown_tracing(spans)


def run_service(name: str, main: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """asyncio.run(main()) with the two ways a service ends for NATS said plainly."""
    try:
        asyncio.run(main())
    except BusUnavailable as exc:
        print(f"netdiag {name}: {exc}. Check NETDIAG_NATS_URL / --nats and that NATS is running.", file=sys.stderr)
        raise SystemExit(EXIT_NO_BUS) from None
    except BusLost as exc:
        print(f"netdiag {name}: {exc}; exiting so the process is restarted", file=sys.stderr)
        raise SystemExit(EXIT_BUS_LOST) from None


def main(name: str, factory: StageFactory, argv: list[str] | None = None) -> None:
    args = service_parser(name).parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings.from_env(nats_url=args.nats_url, snapshot=args.snapshot, kubeconfig=args.kubeconfig)
    run_service(name, lambda: serve(factory, settings))
