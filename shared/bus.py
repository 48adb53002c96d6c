"""NATS JetStream wiring: the diagnosis stream, results KV, blob object store, progress.

Every service connects through `Bus`; `Bus.ensure()` creates (idempotently) the stream,
the KV bucket and the object store, so any service may start first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import propagate
from pydantic import BaseModel

from shared.cluster import CLUSTER_BUCKET
from shared.config import Settings
from shared.schemas import BlobRef, ProgressEvent
from shared.security import nats_connect_options, nats_servers

log = logging.getLogger("netdiag.bus")

STREAM = "NETDIAG"
RESULTS_BUCKET = "netdiag-results"
BLOBS_BUCKET = "netdiag-blobs"

PREFIX = "netdiag.diagnosis"
SUBJECT_REQUESTED = f"{PREFIX}.requested"
SUBJECT_TOPOLOGY = f"{PREFIX}.topology"
SUBJECT_COLLECTED = f"{PREFIX}.collected"
SUBJECT_CLOUD = f"{PREFIX}.cloud"
SUBJECT_COMPLETED = f"{PREFIX}.completed"
PROGRESS_PREFIX = f"{PREFIX}.progress"
# Live notification (core NATS, outside the stream: no replay) carrying the id of each diagnosis
# just stored; watchers read the result from the KV bucket.
SUBJECT_STORED = "netdiag.results.stored"

# JetStream drops a second publish with the same Nats-Msg-Id inside this window: this is
# what makes a redelivered, re-handled stage message publish its output exactly once.
DUPLICATE_WINDOW_S = 600.0


def progress_subject(diagnosis_id: str) -> str:
    return f"{PROGRESS_PREFIX}.{diagnosis_id}"


def node_collect_subject(node: str) -> str:
    return f"netdiag.node.{node}.collect"


def agent_inbox_prefix(node: str) -> str:
    """The replies to a node agent's own requests (its object-store writes) come back under this prefix,
    so the agent may subscribe to its own inbox only, never to `_INBOX.>` (every client's replies)."""
    return f"_INBOX_AGENT.{node}"


class BusUnavailable(RuntimeError):
    """NATS could not be reached; callers turn this into 503 / a clear CLI error."""


class Bus:
    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._kv: KeyValue | None = None
        self._blobs: ObjectStore | None = None
        self._cluster: KeyValue | None = None

    @classmethod
    async def connect(
        cls, url: str | None = None, *, name: str, settings: Settings | None = None, timeout: float = 5.0,
        inbox_prefix: str | None = None,
    ) -> Bus:
        """Connect, then keep reconnecting forever: a NATS outage pauses services, never kills them.
        `inbox_prefix`: where replies to this connection's requests go (agents: agent_inbox_prefix)."""
        settings = settings or Settings.from_env()
        nc = await connect_core(url or settings.nats_url, name, settings, timeout, inbox_prefix)
        bus = cls(nc, settings)
        try:
            await bus.ensure()
        except BaseException:  # e.g. JetStream not ready yet: no half-open connection left reconnecting
            await nc.close()
            raise
        return bus

    async def close(self) -> None:
        # close, not drain: stage runners have already stopped, and draining pull
        # subscriptions leaves cancelled futures behind in nats-py
        if not self.nc.is_closed:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def ensure(self) -> None:
        s = self.settings
        config = StreamConfig(
            name=STREAM, subjects=[f"{PREFIX}.>"], storage=StorageType.FILE, max_age=s.result_ttl_s,
            duplicate_window=min(DUPLICATE_WINDOW_S, s.result_ttl_s), num_replicas=s.stream_replicas,
        )
        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            # another service may create it between our two calls; anything else (a subject
            # overlap, a conflicting config) is re-raised by the check below
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await self.js.add_stream(config)
            info = await self.js.stream_info(STREAM)
            if info.config.subjects != config.subjects:
                raise BusUnavailable(f"stream {STREAM} exists with subjects {info.config.subjects}, "  # noqa: B904 - not a translation of the suppressed error
                                     f"expected {config.subjects}")
        try:
            self._kv = await self.js.key_value(RESULTS_BUCKET)
        except BucketNotFoundError:
            self._kv = await self.js.create_key_value(KeyValueConfig(
                bucket=RESULTS_BUCKET, history=1, ttl=s.result_ttl_s, storage=StorageType.FILE,
                replicas=s.stream_replicas,
            ))
        try:
            self._blobs = await self.js.object_store(BLOBS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            self._blobs = await self.js.create_object_store(BLOBS_BUCKET, ObjectStoreConfig(
                ttl=s.result_ttl_s, storage=StorageType.FILE, replicas=s.stream_replicas,
            ))

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Bus.ensure() not called"
        return self._kv

    async def cluster_kv(self) -> KeyValue:
        """The cluster-summary bucket (shared/cluster.py), looked up or created on first use rather
        than in ensure(): node agents never touch it, so their NATS permissions need not name it."""
        if self._cluster is None:
            try:
                self._cluster = await self.js.key_value(CLUSTER_BUCKET)
            except BucketNotFoundError:
                self._cluster = await self.js.create_key_value(KeyValueConfig(
                    bucket=CLUSTER_BUCKET, history=1, storage=StorageType.FILE,
                    replicas=self.settings.stream_replicas,
                ))
        return self._cluster

    # ------------------------------------------------------------ core subscriptions

    async def subscribe(self, subject: str, **kwargs: Any) -> Subscription:
        return await subscribe_confirmed(self.nc, subject, **kwargs)

    # ------------------------------------------------------------ publishing

    async def publish_model(self, subject: str, model: BaseModel, *, msg_id: str | None = None) -> None:
        """Durable publish (waits for the stream's ack) with trace context in the headers."""
        headers: dict[str, str] = {}
        propagate.inject(headers)
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        await self.js.publish(subject, model.model_dump_json().encode(), headers=headers or None, timeout=5)

    async def progress(self, diagnosis_id: str, stage: str, state: str, message: str = "",
                       elapsed_ms: float | None = None, **detail: Any) -> None:
        """Fire-and-forget: the stream still records it (for SSE replay) without a round trip."""
        event = ProgressEvent(id=diagnosis_id, stage=stage, state=state, message=message,
                              elapsed_ms=elapsed_ms, detail=detail)
        try:
            await self.nc.publish(progress_subject(diagnosis_id), event.model_dump_json().encode())
        except nats.errors.Error as exc:  # progress is advisory; losing one must not fail a stage
            log.debug("progress not published: %s", exc)

    # ------------------------------------------------------------ blobs

    async def put_blob(self, name: str, data: bytes) -> BlobRef:
        assert self._blobs is not None, "Bus.ensure() not called"
        await self._blobs.put(name, data)
        return BlobRef(bucket=BLOBS_BUCKET, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def get_blob(self, ref: BlobRef) -> bytes:
        store = self._blobs if ref.bucket == BLOBS_BUCKET and self._blobs else await self.js.object_store(ref.bucket)
        result = await store.get(ref.name)
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"blob {ref.name} does not match its digest")
        return data


async def connect_core(url: str, name: str, settings: Settings, timeout: float = 5.0,
                       inbox_prefix: str | None = None) -> NATS:
    """A core NATS connection that keeps reconnecting forever, with our credentials and logging
    (Bus.connect adds JetStream; the auth callout needs only this)."""
    try:
        # max_reconnect_attempts=-1 only applies after the first connect; nats-py hangs
        # on an unreachable server with 0 attempts, so the first connect is time-bounded.
        return await asyncio.wait_for(
            nats.connect(
                nats_servers(url), name=f"netdiag-{name}", connect_timeout=2, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True,
                error_cb=_log_error, disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect,
                **nats_connect_options(settings), **({"inbox_prefix": inbox_prefix} if inbox_prefix else {}),
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        raise BusUnavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from exc


async def subscribe_confirmed(nc: NATS, subject: str, **kwargs: Any) -> Subscription:
    """A core subscription the server already holds when this returns, so a request sent right
    after (from any connection) finds it. nats-py 2.16's flush() writes its PING straight to the
    socket, ahead of the SUB still queued for its flusher task, so one PONG does not prove the SUB
    arrived; the first round trip lets the flusher write the queue, the second PING follows the SUB."""
    sub = await nc.subscribe(subject, **kwargs)
    await nc.flush()
    await nc.flush()
    return sub


async def _log_error(exc: Exception) -> None:
    # permission violations and slow consumers arrive here: they must be visible
    log.warning("nats: %s", exc)


async def _on_disconnect() -> None:
    log.info("disconnected from NATS; reconnecting")


async def _on_reconnect() -> None:
    log.info("reconnected to NATS")
