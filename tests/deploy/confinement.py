"""What every agent login (per-node user, the chart's shared user, the auth callout) must allow and refuse."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from services.collector.agent import NodeAgent, request_dump
from shared.bus import STREAM, SUBJECT_COMPLETED, Bus, node_collect_subject


async def assert_confined(stages: Bus, agent_bus: Bus, url: str, *, node: str = "node-a", other: str | None = "node-b",
                          forged: tuple[str, ...] = (SUBJECT_COMPLETED,), **login: Any) -> None:
    """The agent on `agent_bus` collects for `node` (a real dump, written to the blob store); a second
    connection with the same `login` is refused by the server when it publishes any `forged` subject, when
    it listens to other clients' replies (`_INBOX.>`) and, when `other` is given, when it subscribes to
    that node's collect subject — nothing reaches the stream, and nobody answers for `other`."""
    agent = NodeAgent(agent_bus, node)
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    intruder = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **login)
    try:
        await agent.start()
        reply = await request_dump(stages, node, 10.0, diagnosis_id="confinement-test")
        assert reply.ok and reply.blob is not None, reply.error
        assert len(await stages.get_blob(reply.blob)) == reply.blob.size

        before = (await stages.js.stream_info(STREAM)).state.messages
        expected = [f'publish to "{subject}"'.lower() for subject in forged]
        await intruder.subscribe("_INBOX.>")  # every other client's replies
        expected.append('subscription to "_inbox.>"')
        if other is not None:
            await intruder.subscribe(node_collect_subject(other))
            expected.append(f'subscription to "{node_collect_subject(other)}"'.lower())
        for subject in forged:
            await intruder.publish(subject, b'{"forged": true}')
        await intruder.flush()
        for _ in range(60):
            if all(any(e in v for v in violations) for e in expected):
                break
            await asyncio.sleep(0.05)
        for e in expected:
            assert any(e in v for v in violations), (e, violations)
        assert (await stages.js.stream_info(STREAM)).state.messages == before  # nothing reached the stream
        if other is not None:
            with pytest.raises((nats.errors.NoRespondersError, TimeoutError)):  # nobody answers for it
                await request_dump(stages, other, 1.0)
    finally:
        await agent.stop()
        await intruder.close()
