"""Shared pieces of the deploy tests: a static bearer token and the real gateway app on its own bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway.app import create_app
from shared.bus import Bus
from shared.config import Settings

TOKEN = "s3cret-token-0123456789"


async def serve(settings: Settings) -> AsyncIterator[str]:
    """The gateway on a random loopback port, its URL yielded once (`async for url in serve(...)`)."""
    bus = await Bus.connect(name="gateway", settings=settings)
    runner = web.AppRunner(create_app(bus), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await bus.close()
