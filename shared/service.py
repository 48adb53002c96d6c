"""Run one or more stages as a standalone service: `python -m services.<stage> --nats URL`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

from shared.bus import Bus
from shared.config import Settings
from shared.logs import setup_logging
from shared.stage import Stage, run_stages
from shared.telemetry import setup_process, shutdown_tracing

StageFactory = Callable[[Bus, Settings], Stage]


def service_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"netdiag {name} service")
    p.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    p.add_argument("--snapshot", type=Path, help="serve diagnoses from this snapshot directory")
    p.add_argument("--kubeconfig", type=Path)
    p.add_argument("--log-level")
    return p


async def serve(factory: StageFactory, settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    name = getattr(factory, "name", "service")
    spans = setup_process(name, settings)
    bus = await Bus.connect(name=name, settings=settings)
    try:
        await run_stages(bus, [factory(bus, settings)], stop)
    finally:
        await bus.close()
        await shutdown_tracing(spans)


def main(name: str, factory: StageFactory, argv: list[str] | None = None) -> None:
    args = service_parser(name).parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings.from_env(nats_url=args.nats_url, snapshot=args.snapshot, kubeconfig=args.kubeconfig)
    asyncio.run(serve(factory, settings))
