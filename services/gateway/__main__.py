"""`python -m services.gateway --nats URL --port 8080` runs the gateway alone: the HTTP API and
UI, plus the result sink that stores completed diagnoses (replicas share its durable consumer).
Either NATS connection ending for good ends the process (exit 3), so Kubernetes restarts it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from services.gateway.app import create_app
from services.gateway.store import ResultSink
from shared.bus import Bus
from shared.config import Settings
from shared.health import Health
from shared.logs import setup_logging
from shared.service import run_service, run_until_lost
from shared.stage import StageRunner
from shared.telemetry import setup_process

log = logging.getLogger("netdiag.gateway")


async def serve(settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    setup_process("gateway", settings)
    if settings.signing_key() is None:
        log.warning("no result key (NETDIAG_RESULT_KEY[_FILE]): completed events are not authenticated; "
                    "any identity allowed to publish them could forge a verdict")
    bus = await Bus.connect(name="gateway", settings=settings)
    try:
        sink_bus = await Bus.connect(name="gateway-store", settings=settings)
    except BaseException:
        await bus.close()
        raise
    sink = StageRunner(sink_bus, ResultSink(sink_bus, settings))
    runner = web.AppRunner(create_app(bus, Health([bus, sink_bus], [sink])), access_log=None, shutdown_timeout=1.0)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        await run_until_lost(stop, [sink], [bus, sink_bus])
    finally:
        await runner.cleanup()
        await sink_bus.close()
        await bus.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    p.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log-level")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings.from_env(nats_url=args.nats_url)
    run_service("gateway", lambda: serve(settings, args.host, args.port))


if __name__ == "__main__":
    main()
