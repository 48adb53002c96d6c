"""What every agent login (per-node user, the chart's shared user, the auth callout) must allow and refuse.

`enumerate_grants` does not check a list of things that must be refused (which can never notice a grant
that is too wide): it tries everything in the subject space the product uses — every diagnosis subject,
every bucket's `$KV.`/`$O.` subjects, every JetStream API call on every stream (`$JS.API.>`), other
nodes' subjects, other clients' inboxes, the system account's — and reports what the server let through,
for the caller to compare with the intended grant exactly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import pytest

from services.collector.agent import NodeAgent, request_dump
from shared.bus import (
    BLOBS_BUCKET,
    PREFIX,
    RESULTS_BUCKET,
    STREAM,
    SUBJECT_COMPLETED,
    SUBJECT_STORED,
    Bus,
    agent_inbox_prefix,
    node_bucket,
    node_collect_subject,
    progress_subject,
)
from shared.cluster import CLUSTER_BUCKET
from shared.schemas import new_id

JS_STREAM_OPS = ("INFO", "UPDATE", "DELETE", "PURGE", "MSG.GET", "MSG.DELETE", "SNAPSHOT", "RESTORE", "CREATE",
                 "LEADER.STEPDOWN", "PEER.REMOVE")
JS_CONSUMER_OPS = ("CREATE.{s}", "CREATE.{s}.c", "CREATE.{s}.c.f", "DURABLE.CREATE.{s}.c", "INFO.{s}.c",
                   "DELETE.{s}.c", "LIST.{s}", "NAMES.{s}", "MSG.NEXT.{s}.c", "PAUSE.{s}.c", "LEADER.STEPDOWN.{s}.c")


def product_subjects(node: str, other: str) -> list[str]:
    """Every subject the product uses (and the API calls around them), one concrete subject each."""
    streams = [STREAM, f"KV_{RESULTS_BUCKET}", f"KV_{CLUSTER_BUCKET}", f"OBJ_{BLOBS_BUCKET}",
               f"OBJ_{node_bucket(node)}", f"OBJ_{node_bucket(other)}"]
    subjects = [f"{PREFIX}.{s}" for s in ("requested", "topology", "collected", "cloud", "completed")]
    subjects += [progress_subject(new_id()), SUBJECT_STORED, node_collect_subject(node), node_collect_subject(other),
                 f"$KV.{RESULTS_BUCKET}.{new_id()}", f"$KV.{CLUSTER_BUCKET}.summary",
                 "_INBOX.x.y", f"{agent_inbox_prefix(node)}.x", f"{agent_inbox_prefix(other)}.x",
                 "$SYS.REQ.USER.AUTH", "$SYS.REQ.SERVER.PING", "$SYS.REQ.ACCOUNT.PING.CONNZ", "unrelated.subject"]
    for bucket in (BLOBS_BUCKET, node_bucket(node), node_bucket(other)):
        subjects += [f"$O.{bucket}.C.x", f"$O.{bucket}.M.eA"]
    subjects += ["$JS.API.INFO", "$JS.API.STREAM.LIST", "$JS.API.STREAM.NAMES", "$JS.API.ACCOUNT.PURGE.x",
                 "$JS.API.SERVER.REMOVE", "$JS.API.META.LEADER.STEPDOWN"]
    for s in streams:
        subjects += [f"$JS.API.STREAM.{op}.{s}" for op in JS_STREAM_OPS]
        subjects += [f"$JS.API.DIRECT.GET.{s}", f"$JS.API.DIRECT.GET.{s}.x"]
        subjects += [f"$JS.API.CONSUMER.{op.format(s=s)}" for op in JS_CONSUMER_OPS]
        subjects += [f"$JS.ACK.{s}.c.1.1.1.1.0", f"$JS.FC.{s}.x"]
    return subjects


def wildcard_subscriptions(node: str, other: str) -> list[str]:
    return [">", "netdiag.>", f"{PREFIX}.>", "netdiag.node.*.collect", "$JS.API.>", "$JS.>", "$O.>", "$KV.>",
            f"$O.{node_bucket(node)}.>", f"$O.{node_bucket(other)}.>", "_INBOX.>", "_INBOX_AGENT.>",
            f"{agent_inbox_prefix(node)}.>", f"{agent_inbox_prefix(other)}.>", "$SYS.>"]


async def enumerate_grants(url: str, *, node: str = "node-a", other: str = "node-b", allow_unrestricted: bool = False,
                           **login: Any) -> tuple[set[str], set[str]]:
    """(publishable, subscribable): each candidate the server did not answer with a permissions
    violation. A publish to an allowed subject really happens: run this against a test server."""
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **login)
    try:
        publish = product_subjects(node, other)
        subscribe = publish + wildcard_subscriptions(node, other)
        for subject in publish:
            await nc.publish(subject, b"")
        subs = [await nc.subscribe(subject) for subject in subscribe]
        await nc.flush()  # the server answered every command before this PONG
        await asyncio.sleep(0.3)  # error callbacks run as tasks
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
    finally:
        await nc.close()
    text = "\n".join(violations).lower()
    can_publish = {s for s in publish if f'publish to "{s.lower()}"' not in text}
    can_subscribe = {s for s in subscribe if f'subscription to "{s.lower()}"' not in text}
    assert violations or allow_unrestricted, "no permissions violation at all: is the identity unrestricted?"
    return can_publish, can_subscribe


def intended_agent_grant(node: str) -> tuple[set[str], set[str]]:
    """What a per-node agent identity is meant to be able to do, among the enumerated candidates."""
    bucket = node_bucket(node)
    publish = {f"$O.{bucket}.C.x", f"$O.{bucket}.M.eA"}
    subscribe = {node_collect_subject(node), f"{agent_inbox_prefix(node)}.x", f"{agent_inbox_prefix(node)}.>"}
    return publish, subscribe


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
