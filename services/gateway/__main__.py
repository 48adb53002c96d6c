"""`python -m services.gateway --nats URL [--host H] [--port P]`: the HTTP API, the UI and the
result sink (the durable consumer that stores completed diagnoses), as one Deployment."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

from services.gateway.app import create_app
from services.gateway.store import ResultSink
from shared.bus import Bus
from shared.config import Settings
from shared.logs import setup_logging
from shared.service import service_parser
from shared.stage import StageRunner


async def serve(settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(name="gateway", settings=settings)
    runner = web.AppRunner(create_app(bus), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await StageRunner(bus, ResultSink(bus, settings)).run(stop)
    finally:
        await runner.cleanup()
        await bus.close()


def main(argv: list[str] | None = None) -> None:
    parser = service_parser("gateway")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings.from_env(nats_url=args.nats_url)
    asyncio.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    main()
