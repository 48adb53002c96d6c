"""What the lab benchmarks share (bench/diagnose_lab.py, bench/live.py): the full embedded stack on a lab
(its Kubernetes API, one node agent per lab node) and one diagnosis through the REST API, timed from the
POST until the stored result says it is done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from lab.dataplane import Lab
from services.stack import EmbeddedStack
from shared.config import Settings


@asynccontextmanager
async def lab_stack(lab: Lab, **settings: Any) -> AsyncIterator[EmbeddedStack]:
    """Every service embedded against `lab` (`settings`: further Settings fields, e.g. live_probe)."""
    api = lab.start_api()
    agents: dict[str, str | None] = {name: node.netns for name, node in lab.state.nodes.items()}
    async with EmbeddedStack(Settings(kubeconfig=api.kubeconfig, **settings), agents=agents) as stack:
        yield stack


async def timed(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(milliseconds, the diagnosis document) of one diagnosis, completed or failed."""
    started = time.perf_counter()
    async with session.post(f"{url}/api/v1/diagnoses", json=body) as resp:
        doc = await resp.json()
    while True:
        async with session.get(f"{url}/api/v1/diagnoses/{doc['id']}") as resp:
            got: dict[str, Any] = await resp.json()
        if got.get("status") in ("completed", "failed"):
            return (time.perf_counter() - started) * 1000, got
        await asyncio.sleep(0.005)
