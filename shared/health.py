"""Liveness and readiness that mean something: every service's probes look at its NATS connection
and at its consumers actually pulling.

* alive (`/healthz`): no connection has ended for good and every stage runner's fetch loop still
  turns. A NATS outage keeps a service alive (it reconnects by itself; a restart would not help),
  a connection nats-py closed for good does not (only a new process gets a new one).
* ready (`/readyz`): alive, and the server answers a PING on every connection right now.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from shared.bus import Bus
from shared.stage import StageRunner

PROBE_TIMEOUT_S = 1.0


class Health:
    def __init__(self, buses: Sequence[Bus], runners: Sequence[StageRunner] = ()) -> None:
        self.buses = list(buses)
        self.runners = list(runners)

    def alive(self) -> tuple[bool, str]:
        for bus in self.buses:
            if bus.lost.is_set() or bus.nc.is_closed:
                return False, bus.lost_reason or f"the NATS connection was closed for good: {bus.nc.last_error}"
        for runner in self.runners:
            if not runner.alive:
                return False, f"stage {runner.stage.name} is not pulling messages"
        return True, "ok"

    async def ready(self) -> tuple[bool, str]:
        ok, reason = self.alive()
        if not ok:
            return ok, reason
        for bus in self.buses:
            if not await bus.round_trip(PROBE_TIMEOUT_S):
                return False, f"NATS does not answer within {PROBE_TIMEOUT_S:g}s"
        return True, "ok"

    async def healthz(self, _: web.Request) -> web.Response:
        ok, reason = self.alive()
        return web.json_response({"status": "ok" if ok else "dead", "reason": reason}, status=200 if ok else 503)

    async def readyz(self, _: web.Request) -> web.Response:
        ok, reason = await self.ready()
        return web.json_response({"ready": ok, "nats": "connected" if ok else "unreachable", "reason": reason},
                                 status=200 if ok else 503, headers=None if ok else {"Retry-After": "2"})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
