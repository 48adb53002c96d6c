"""What the cloud pipeline tests share: a snapshot written from lab objects, one embedded stack per
snapshot reading the emulated cloud through the real SDK, and a diagnosis run to its end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from lab.cloudemu import CloudEmulator
from services.stack import EmbeddedStack
from shared.config import Settings
from tests.foundation.helpers import run_to_end


def write_snapshot(root: Path, objects: list[dict[str, Any]]) -> Path:
    """A snapshot directory holding only Kubernetes objects (the cloud is read live from the emulator)."""
    (root / "kubernetes").mkdir(parents=True, exist_ok=True)
    (root / "kubernetes" / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                                  "items": objects}))
    return root


def cloud_settings(emulator_endpoint: str, credentials: Path, **settings: Any) -> Settings:
    return Settings(cloud_provider="alibaba", cloud_region="cn-hangzhou", cloud_endpoint=f"http://{emulator_endpoint}",
                    cloud_credentials_file=credentials, **settings)


@asynccontextmanager
async def cloud_stacks(snapshots: dict[str, Path], emulator: CloudEmulator,
                       credentials: Path) -> AsyncIterator[dict[str, EmbeddedStack]]:
    """One embedded stack per snapshot; the cloud is read live from the emulator on every diagnosis."""
    running: dict[str, EmbeddedStack] = {}
    try:
        for name, root in snapshots.items():
            running[name] = await EmbeddedStack(cloud_settings(emulator.endpoint, credentials,
                                                               snapshot=root)).start()
        yield running
    finally:
        for stack in running.values():
            await stack.stop()


async def diagnose(stack: EmbeddedStack, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        doc = await run_to_end(session, stack.url, body, timeout=20)
    assert doc["status"] == "completed", doc
    return doc["result"]
