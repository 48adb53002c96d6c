"""NATS JetStream wiring: the diagnosis stream, results KV, blob object store, progress.

Every service connects through `Bus`; `Bus.ensure()` creates (idempotently) the stream,
the KV bucket and the object store, so any service may start first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import propagate
from pydantic import BaseModel

from shared.cluster import CLUSTER_BUCKET
from shared.config import Settings
from shared.schemas import ID_PATTERN, BlobRef, ProgressEvent, StageEnvelope, dump_json
from shared.security import SIGNATURE_HEADER, nats_connect_options, nats_servers, sign_event

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

# A message or KV value is at most the server's max_payload (1 MiB by default): payloads past half of it go to
# the object store and the message (or value) carries `{"$blob": BlobRef}` instead (Bus.pack / Bus.unpack).
BLOB_MARK = b'{"$blob":'
PAYLOADS_PREFIX = "payloads/"

# JetStream drops a second publish with the same Nats-Msg-Id inside this window: this is
# what makes a redelivered, re-handled stage message publish its output exactly once.
DUPLICATE_WINDOW_S = 600.0
PING_INTERVAL_S = 5
CHUNK_BYTES = 128 * 1024  # the object store's default chunk
MAX_OUTSTANDING_PINGS = 3
# The server's control line is 4 KiB: a longer subject makes it drop the connection, which nats-py
# then closes for good. Every subject built from event data is checked against this first.
MAX_SUBJECT = 512
# A Kubernetes node name (RFC 1123 subdomain, checked loosely): its dots become subject tokens.
NODE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*")
MAX_NODE_NAME = 253
_ID = re.compile(ID_PATTERN)

# Errors of the bus itself, not of the data on it: a stage retries these (nak with back-off) rather
# than turning them into a verdict (shared/stage.py).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.NoServersError,
    nats.errors.StaleConnectionError, nats.errors.FlushTimeoutError, nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,  # JetStream not (yet) answering, e.g. a restarting server
    nats.js.errors.ServiceUnavailableError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def valid_id(diagnosis_id: object) -> bool:
    return isinstance(diagnosis_id, str) and _ID.fullmatch(diagnosis_id) is not None


def valid_node(node: object) -> bool:
    return isinstance(node, str) and len(node) <= MAX_NODE_NAME and NODE_NAME.fullmatch(node) is not None


def progress_subject(diagnosis_id: str) -> str:
    if not valid_id(diagnosis_id):
        raise ValueError(f"not a diagnosis id: {diagnosis_id[:40]!r}")
    return f"{PROGRESS_PREFIX}.{diagnosis_id}"


def node_collect_subject(node: str) -> str:
    if not valid_node(node):
        raise ValueError(f"not a node name: {node[:40]!r}")
    return f"netdiag.node.{node}.collect"


def node_bucket(node: str) -> str:
    """Each node's dumps go into that node's own object store, so an agent's permissions can name
    exactly what it may write (services/natsauth/natsperms.py). Dots are not allowed in bucket names,
    and `_` is not allowed in node names, so the mapping is one to one."""
    if not valid_node(node):
        raise ValueError(f"not a node name: {node[:40]!r}")
    return f"netdiag-node-{node.replace('.', '_')}"


def agent_inbox_prefix(node: str) -> str:
    """The replies to a node agent's own requests (its object-store writes) come back under this prefix,
    so the agent may subscribe to its own inbox only, never to `_INBOX.>` (every client's replies)."""
    return f"_INBOX_AGENT.{node}"


class Published:
    """The models this process published, by Nats-Msg-Id, until a stage of this same process receives
    them (the embedded stack runs every stage in one process). A stage that receives exactly the bytes
    serialised here from an already validated model takes that model instead of parsing the bytes
    again; bytes from anywhere else, or not identical, are validated as ever. Off unless this process runs
    the stages that consume what it publishes (services.stack.EmbeddedStack turns it on): a deployed service
    would only hold its output for nobody. Bounded: the oldest entries go."""

    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._items: OrderedDict[str, tuple[bytes, BaseModel]] = OrderedDict()
        self._bytes = 0

    def add(self, msg_id: str, data: bytes, model: BaseModel) -> None:
        if not self.enabled:
            return
        self.take(msg_id, b"")  # a re-publish replaces the earlier entry
        self._items[msg_id] = (data, model)
        self._bytes += len(data)
        while self._bytes > self.MAX_BYTES and self._items:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= len(old)

    def take(self, msg_id: str, data: bytes) -> BaseModel | None:
        """The model published under `msg_id` as exactly `data`, once; None otherwise."""
        entry = self._items.pop(msg_id, None)
        if entry is None:
            return None
        self._bytes -= len(entry[0])
        return entry[1] if entry[0] == data else None


PUBLISHED = Published(enabled=False)


class BusUnavailable(RuntimeError):
    """NATS could not be reached; callers turn this into 503 / a clear CLI error."""


class BlobUnreadable(ValueError):
    """A blob is absent or does not match its reference: missing data, never worth a retry."""


class Bus:
    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._kv: KeyValue | None = None
        self._blobs: ObjectStore | None = None
        self._stores: dict[str, ObjectStore] = {}
        self._cluster: KeyValue | None = None
        # set when the connection ends for good without close() (nats-py gives up after a protocol
        # error from the server): the process is then dead for the bus and must exit to be restarted
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._closing = False

    @classmethod
    async def connect(
        cls, url: str | None = None, *, name: str, settings: Settings | None = None, timeout: float = 5.0,
        inbox_prefix: str | None = None, ensure: bool = True,
    ) -> Bus:
        """Connect, then keep reconnecting forever: a NATS outage pauses services, never kills them.
        `inbox_prefix`: where replies to this connection's requests go (agents: agent_inbox_prefix).
        `ensure=False`: do not look up the stream and buckets (a node agent may not; it writes only
        its own node's bucket)."""
        settings = settings or Settings.from_env()
        holder: list[Bus] = []

        async def closed() -> None:
            if holder:
                holder[0]._on_closed()

        nc = await connect_core(url or settings.nats_url, name, settings, timeout, inbox_prefix, closed)
        bus = cls(nc, settings)
        holder.append(bus)
        try:
            if ensure:
                await bus.ensure()
        except BaseException:  # e.g. JetStream not ready yet: no half-open connection left reconnecting
            await bus.close()
            raise
        return bus

    @classmethod
    async def connect_agent(cls, node: str, settings: Settings | None = None, url: str | None = None) -> Bus:
        """A node agent's connection: replies under its own inbox prefix, no stream or bucket look-ups
        (its permissions name only its own node's collect subject and blob bucket)."""
        return await cls.connect(url, name=f"agent-{node}", settings=settings, inbox_prefix=agent_inbox_prefix(node),
                                 ensure=False)

    def _on_closed(self) -> None:
        if self._closing:
            return
        self.lost_reason = f"the NATS connection was closed for good: {self.nc.last_error or 'unknown reason'}"
        log.error("%s", self.lost_reason)
        self.lost.set()

    async def close(self) -> None:
        # close, not drain: stage runners have already stopped, and draining pull
        # subscriptions leaves cancelled futures behind in nats-py
        self._closing = True
        if not self.nc.is_closed:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def round_trip(self, timeout: float = 1.0) -> bool:
        """Does the server answer right now (a PING/PONG through it)? False when disconnected, closed
        or frozen: what readiness reports, and how a stage tells a dead bus from a silent peer."""
        if not self.nc.is_connected:
            return False
        try:
            await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]  # nats-py takes a float here
        except (nats.errors.Error, TimeoutError):
            return False
        return True

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

    async def publish_model(self, subject: str, model: BaseModel, *, msg_id: str | None = None,
                            sign_key: bytes | None = None) -> None:
        """Durable publish (waits for the stream's ack) with trace context in the headers; a large
        envelope travels through the object store (see `pack`); signed (shared.security.sign_event,
        over the bytes sent) when a key is given."""
        headers: dict[str, str] = {}
        propagate.inject(headers)
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        _check_subject(subject)
        raw = dump_json(model)  # its topology report and result serialised once (see dump_json)
        data = await self.pack(f"{subject}/{msg_id or uuid.uuid4().hex}", raw)
        if sign_key is not None:
            headers[SIGNATURE_HEADER] = sign_event(sign_key, data)
        if msg_id:  # before the publish: a stage of this process may receive it before the ack comes back
            PUBLISHED.add(msg_id, raw, model)
        try:
            await self.js.publish(subject, data, headers=headers or None, timeout=5)
        except BaseException:
            PUBLISHED.take(msg_id or "", raw)
            raise

    async def progress(self, of: StageEnvelope | str, stage: str, state: str, message: str = "",
                       elapsed_ms: float | None = None, **detail: Any) -> None:
        """Fire-and-forget: the stream still records it (for SSE replay) without a round trip. `of`: the
        diagnosis's envelope, whose request may turn progress off (then only its `result` event is
        published: what an events follower waits for), or its id."""
        if isinstance(of, StageEnvelope):
            if not of.request.options.progress and state != "result":
                return
            of = of.id
        diagnosis_id = of
        if not valid_id(diagnosis_id):  # nothing to tell, and no subject to tell it on
            log.warning("no progress published for an invalid diagnosis id %r", str(diagnosis_id)[:40])
            return
        event = ProgressEvent(id=diagnosis_id, stage=stage, state=state, message=message,
                              elapsed_ms=elapsed_ms, detail=detail)
        try:
            await self.nc.publish(progress_subject(diagnosis_id), event.model_dump_json().encode())
        except nats.errors.Error as exc:  # progress is advisory; losing one must not fail a stage
            log.debug("progress not published: %s", exc)

    # ------------------------------------------------------------ blobs

    async def put_blob(self, name: str, data: bytes, *, bucket: str = BLOBS_BUCKET) -> BlobRef:
        """Store `data` as a new object named `name` plus a unique suffix. Never a replacement: a stage
        re-handling a redelivered message would otherwise purge the first copy's chunks from under a
        reader that already holds the first reference (ObjectStore.put purges the replaced chunks)."""
        store = await self._store(bucket)
        name = f"{name}.{secrets.token_hex(6)}"
        await store.put(name, data)
        return BlobRef(bucket=bucket, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    @property
    def inline_max(self) -> int:
        """The largest payload a message or KV value carries itself: half the server's max_payload
        (room for headers and the JSON around it)."""
        return self.nc.max_payload // 2

    async def pack(self, name: str, data: bytes) -> bytes:
        """`data` itself when small, else a reference to it in the object store (a new object each time:
        a re-handled message's second copy is orphaned, its output de-duplicated, and the bucket's TTL
        clears it). Readers call `unpack`."""
        if len(data) <= self.inline_max:
            return data
        ref = await self.put_blob(PAYLOADS_PREFIX + name, data)
        return BLOB_MARK + ref.model_dump_json().encode() + b"}"

    async def unpack(self, data: bytes) -> bytes:
        if not data.startswith(BLOB_MARK):
            return data
        return await self.get_blob(BlobRef.model_validate_json(data[len(BLOB_MARK):-1]))

    async def put_node_blob(self, node: str, name: str, data: bytes) -> BlobRef:
        """Write a new object into node's own bucket by publishing its chunks and metadata entry, in the
        object store's own layout (nats-py's ObjectStore reads it back). Unlike ObjectStore.put it never
        looks the bucket or the name up, nor purges a replaced object: an agent's NATS identity may
        publish into `$O.<its bucket>.>` and do nothing else (services/natsauth/natsperms.py), so names
        must be new (services/collector/agent.py node_blob_name makes them unique)."""
        bucket = node_bucket(node)
        nuid = secrets.token_hex(11)
        chunk_subject = f"$O.{bucket}.C.{nuid}"
        chunks = 0
        for offset in range(0, len(data), CHUNK_BYTES):
            await self.js.publish(chunk_subject, data[offset:offset + CHUNK_BYTES], timeout=5)
            chunks += 1
        digest = hashlib.sha256(data)
        info = api.ObjectInfo(
            name=name, bucket=bucket, nuid=nuid, size=len(data), chunks=chunks, mtime=datetime.now(UTC).isoformat(),
            digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
            options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
        )
        meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        _check_subject(meta_subject)
        await self.js.publish(meta_subject, json.dumps(info.as_dict()).encode(), timeout=5,
                              headers={api.Header.ROLLUP: "sub"})
        return BlobRef(bucket=bucket, name=name, size=len(data), sha256=digest.hexdigest())

    async def get_blob(self, ref: BlobRef, timeout: float = 10.0) -> bytes:
        """The blob's bytes. Raises BlobUnreadable when it is absent or corrupt (missing data), and a
        TRANSIENT_ERRORS error when the bus does not answer in time (worth a retry)."""
        try:
            store = await self._store(ref.bucket)
            result = await asyncio.wait_for(store.get(ref.name), timeout)
        except (BucketNotFoundError, nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError,
                nats.js.errors.DigestMismatchError, nats.js.errors.BadObjectMetaError) as exc:
            raise BlobUnreadable(f"blob {ref.bucket}/{ref.name}: {type(exc).__name__}: {exc}") from exc
        except NotFoundError as exc:  # the bucket's stream is gone (expired, deleted)
            raise BlobUnreadable(f"blob {ref.bucket}/{ref.name}: {type(exc).__name__}") from exc
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobUnreadable(f"blob {ref.name} does not match its digest")
        return data

    async def _store(self, bucket: str) -> ObjectStore:
        if bucket == BLOBS_BUCKET and self._blobs is not None:
            return self._blobs
        store = self._stores.get(bucket)
        if store is None:
            store = self._stores[bucket] = await self.js.object_store(bucket)
        return store

    async def ensure_node_bucket(self, node: str) -> str:
        """Create node's own blob bucket if it is missing (stages may; agents may not), once per process."""
        bucket = node_bucket(node)
        if bucket not in self._stores:
            try:
                self._stores[bucket] = await self.js.object_store(bucket)
            except (BucketNotFoundError, NotFoundError):
                s = self.settings
                with contextlib.suppress(nats.js.errors.BadRequestError):  # created meanwhile by another replica
                    self._stores[bucket] = await self.js.create_object_store(bucket, ObjectStoreConfig(
                        ttl=s.result_ttl_s, storage=StorageType.FILE, replicas=s.stream_replicas))
                if bucket not in self._stores:
                    self._stores[bucket] = await self.js.object_store(bucket)
        return bucket


def _check_subject(subject: str) -> None:
    if len(subject) > MAX_SUBJECT or any(c.isspace() for c in subject):
        raise ValueError(f"refusing to publish on an invalid subject: {subject[:40]!r}…")


async def connect_core(url: str, name: str, settings: Settings, timeout: float = 5.0,
                       inbox_prefix: str | None = None,
                       closed_cb: Callable[[], Any] | None = None) -> NATS:
    """A core NATS connection that keeps reconnecting forever, with our credentials and logging
    (Bus.connect adds JetStream; the auth callout needs only this). A server that stops answering
    is noticed by PINGs within ~PING_INTERVAL_S * MAX_OUTSTANDING_PINGS, then reconnected."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors[:] = [exc]  # the last one only: the callback lives as long as the connection
        await _log_error(exc)

    try:
        # max_reconnect_attempts=-1 only applies after the first connect; nats-py hangs
        # on an unreachable server with 0 attempts, so the first connect is time-bounded.
        return await asyncio.wait_for(
            nats.connect(
                nats_servers(url), name=f"netdiag-{name}", connect_timeout=2, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True, ping_interval=PING_INTERVAL_S,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                error_cb=on_error, disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect,
                **({"closed_cb": closed_cb} if closed_cb else {}),
                **nats_connect_options(settings), **({"inbox_prefix": inbox_prefix} if inbox_prefix else {}),
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        reason = str(exc) or (f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError)
                              else type(exc).__name__)
        if errors:  # what the attempts met: a refused connection, a TLS or an authorization error
            reason = f"{reason} (last error: {errors[-1]})"
        raise BusUnavailable(f"cannot reach NATS at {url}: {reason}") from exc


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
