"""Cloud fixtures: the OpenAPI emulator (in-process, own thread) and the real SDK provider."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator, load_state
from services.cloud.alibaba import AlibabaProvider, Credentials
from shared.cloud import CloudInventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cloud"
REGION = "cn-hangzhou"


def node(name: str, instance: str, region: str = REGION) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/region": region}},
            "spec": {"providerID": f"{region}.{instance}"},
            "status": {"addresses": []}}


NODES = [node("node-1", "i-node1"), node("node-2", "i-node2"), node("node-3", "i-node3")]


def healthy() -> dict[str, Any]:
    return copy.deepcopy(load_state(EXAMPLES / "healthy.json"))


@pytest.fixture(scope="session")
def emulator() -> Iterator[CloudEmulator]:
    with CloudEmulator(healthy()) as emu:
        yield emu


@pytest.fixture
def provider(emulator: CloudEmulator) -> AlibabaProvider:
    emulator.set_state(healthy())
    emulator.throttle(0)
    return AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET), endpoint=f"http://{emulator.endpoint}",
                           backoff_s=0.01)


@pytest.fixture
def collect(emulator: CloudEmulator, provider: AlibabaProvider):
    """Load a state (dict or file) into the emulator and collect it through the real SDK."""

    def run(state: dict[str, Any] | Path, nodes: list[dict[str, Any]] | None = None) -> CloudInventory:
        emulator.set_state(load_state(state) if isinstance(state, Path) else state)
        inventory = provider.collect(NODES if nodes is None else nodes)
        json.loads(inventory.model_dump_json())  # JSON-serialisable, always
        return inventory

    return run
