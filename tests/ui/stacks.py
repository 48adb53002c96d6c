"""The two worlds the UI is shown against: a snapshot directory, or a network-namespace lab
(real dataplane, its Kubernetes API, real node agents) — both through the real embedded stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from lab.dataplane import Lab
from lab.scenario import Scenario, resolve
from services.stack import EmbeddedStack
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
LAB_SCENARIO = ROOT / "examples" / "lab" / "basic.yaml"


@asynccontextmanager
async def snapshot_stack(snapshot: Path) -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(Settings(snapshot=snapshot)) as stack:
        yield stack


@asynccontextmanager
async def lab_stack(prefix: str) -> AsyncIterator[tuple[Lab, EmbeddedStack]]:
    """The basic lab (needs root); swept by prefix afterwards even if the build failed half-way."""
    try:
        lab = Lab.up(resolve(Scenario.load(LAB_SCENARIO)), prefix=prefix, scenario_path=LAB_SCENARIO)
        api = lab.start_api()
        agents: dict[str, str | None] = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(Settings(kubeconfig=api.kubeconfig), agents=agents) as stack:
            yield lab, stack
    finally:
        Lab.sweep(prefix)
