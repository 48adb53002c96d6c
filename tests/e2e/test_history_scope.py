"""History is per cluster: `netdiag up` keeps its JetStream data (~/.netdiag), so a second `up` against
another cluster must not list, or feed the pickers with, the first one's diagnoses."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from services.stack import EmbeddedStack
from shared.config import Settings
from tests.e2e.cases import BASIC, POLICY
from tests.foundation.helpers import get_json, run_to_end


async def test_history_lists_the_cluster_served_now(tmp_path: Path) -> None:
    data = tmp_path / "netdiag"
    first = {"src": "10.244.1.20", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}
    second = {"src": "10.244.1.11", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}
    async with aiohttp.ClientSession() as http:
        async with EmbeddedStack(Settings(snapshot=BASIC), data_dir=data) as stack:
            old = await run_to_end(http, stack.url, first, timeout=30)
        async with EmbeddedStack(Settings(snapshot=POLICY), data_dir=data) as stack:
            new = await run_to_end(http, stack.url, second, timeout=30)
            mine = await get_json(http, f"{stack.url}/api/v1/diagnoses")
            everything = await get_json(http, f"{stack.url}/api/v1/diagnoses?source=all")
            theirs = await get_json(http, f"{stack.url}/api/v1/diagnoses?source=snapshot:{BASIC}")
            kept = await get_json(http, f"{stack.url}/api/v1/diagnoses/{old['id']}")  # permalinks still work
    assert old["source"] == f"snapshot:{BASIC}" and new["source"] == f"snapshot:{POLICY}"
    assert [d["id"] for d in mine["items"]] == [new["id"]] and mine["next"] is None
    assert [d["id"] for d in everything["items"]] == [new["id"], old["id"]]
    assert [d["id"] for d in theirs["items"]] == [old["id"]]
    assert kept["id"] == old["id"]
