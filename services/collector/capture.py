"""Snapshot capture, node part: `<out>/nodes/<node>.json` for each node, from its live agent.

The file is the node dump as plain JSON (docs/node-dump.md) — the same document the
collector stage reads back in snapshot mode.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from shared.bus import Bus
from shared.collect import request_dump
from shared.netstack import decode_dump


async def capture_nodes(bus: Bus, nodes: list[str], out_dir: Path, *, timeout_s: float = 10.0,
                        pod_ips: dict[str, str] | None = None) -> dict[str, str | None]:
    """Write one file per node that answered; return node → None (written) or the reason it is not."""
    target = Path(out_dir) / "nodes"
    target.mkdir(parents=True, exist_ok=True)

    async def one(node: str) -> str | None:
        try:
            reply = await request_dump(bus, node, timeout_s, diagnosis_id=f"snapshot-{node}", pod_ips=pod_ips)
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            return f"no answer from the agent of {node} within {timeout_s}s ({type(exc).__name__})"
        if not reply.ok or reply.blob is None:
            return f"the agent of {node} failed: {reply.error}"
        dump = decode_dump(await bus.get_blob(reply.blob))
        path = target / f"{node}.json"
        await asyncio.to_thread(path.write_text, dump.model_dump_json(indent=1, exclude_none=True))
        return None

    results = await asyncio.gather(*(one(n) for n in nodes))
    return dict(zip(nodes, results, strict=True))
