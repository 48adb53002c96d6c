"""The result store: the gateway's sink on the completed subject, and reads for the API.

Results live in the JetStream KV bucket (file storage), so a gateway restart loses nothing.
The sink stores only what the gateway itself accepted: an event for an id it never stored, or a
second final event for a diagnosis already finished, is refused and counted
(netdiag_rejected_events_total), and with a result key configured only events the simulator signed
are taken (shared/security.py). Every write is compare-and-set on the record's revision, so two
sink replicas, the reconciler and a retried POST never overwrite each other's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict

import nats
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from pydantic import BaseModel

from shared import metrics
from shared.bus import SUBJECT_COMPLETED, SUBJECT_STORED, Bus, valid_id
from shared.cluster import SUMMARY_KEY
from shared.logs import log_context
from shared.schemas import Diagnosis, DiagnosisStatus, StageEnvelope, dump_json, now
from shared.stage import Stage

log = logging.getLogger("netdiag.gateway.store")

IDEMPOTENCY_PREFIX = "idempotency."  # same bucket, never a 32-hex id, so listings skip it
CACHE_SIZE = 2048  # finished diagnoses kept in memory: they never change, and are served in a NATS outage


def diagnosis_from_envelope(env: StageEnvelope) -> Diagnosis:
    failed = env.error is not None or env.result is None
    return Diagnosis(
        id=env.id, request=env.request, created_at=env.created_at, completed_at=now(),
        source=env.topology.source if env.topology is not None else None,
        status=DiagnosisStatus.FAILED if failed else DiagnosisStatus.COMPLETED,
        result=env.result, error=env.error or (None if env.result else "no result produced"),
        timings_ms=env.timings_ms,
    )


def created_at_ms(diagnosis_id: str) -> int:
    """new_id() starts with the creation time in milliseconds."""
    return int(diagnosis_id[:12], 16)


class _Head(BaseModel):
    """The one field of a stored diagnosis the result stream needs to read."""

    status: DiagnosisStatus


class Rejected(Exception):
    """An event the store will not keep; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ResultStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        # the JSON, not the model: a few times smaller, and no object graph for the garbage collector
        # to scan (2048 live Diagnosis models cost ~300 KB each and slowed a batch by a fifth)
        self._done: OrderedDict[str, bytes] = OrderedDict()

    async def _value(self, diagnosis_id: str, data: bytes) -> bytes:
        """The KV value of a diagnosis's JSON: itself, or a reference to it in the object store when large."""
        return await self.bus.pack(f"results/{diagnosis_id}", data)

    async def create(self, diagnosis: Diagnosis) -> None:
        await self.bus.kv.create(diagnosis.id, await self._value(diagnosis.id, diagnosis.model_dump_json().encode()))

    async def finish(self, diagnosis: Diagnosis, *, request_must_match: bool = True) -> Diagnosis:
        """Store a finished diagnosis over its queued record, once. Raises Rejected when there is no
        such record, it is finished already, or (an event's) request is not the one accepted."""
        try:
            entry = await self.bus.kv.get(diagnosis.id)
        except KeyNotFoundError:
            raise Rejected("unknown", f"no diagnosis {diagnosis.id} was accepted by the gateway") from None
        if not entry.value:
            raise Rejected("unknown", f"no diagnosis {diagnosis.id} was accepted by the gateway")
        stored = Diagnosis.model_validate_json(await self.bus.unpack(entry.value))
        if stored.status != DiagnosisStatus.QUEUED:
            self._remember(stored.id, stored.status, stored.model_dump_json().encode())
            raise Rejected("terminal", f"diagnosis {diagnosis.id} is already {stored.status.value}")
        if request_must_match and stored.request != diagnosis.request:
            raise Rejected("mismatch", f"the event for {diagnosis.id} names another request than the accepted one")
        # a diagnosis that failed before the topology stage named its cluster keeps the one stamped at creation
        final = diagnosis.model_copy(update={"created_at": stored.created_at,
                                             "source": diagnosis.source or stored.source})
        data = dump_json(final)  # serialised once: the KV value and the cached copy (its result already was)
        try:
            await self.bus.kv.update(diagnosis.id, await self._value(diagnosis.id, data), last=entry.revision)
        except KeyWrongLastSequenceError:
            raise Rejected("terminal", f"diagnosis {diagnosis.id} was finished meanwhile") from None
        self._remember(final.id, final.status, data)
        return final

    async def fail_if_queued(self, diagnosis_id: str, reason: str) -> Diagnosis | None:
        stored = await self.get(diagnosis_id)
        if stored is None or stored.status != DiagnosisStatus.QUEUED:
            return None
        failed = stored.model_copy(update={"status": DiagnosisStatus.FAILED, "error": reason, "completed_at": now()})
        try:
            return await self.finish(failed, request_must_match=False)
        except Rejected:
            return None

    def _remember(self, diagnosis_id: str, status: DiagnosisStatus, data: bytes) -> None:
        """Keep a finished diagnosis's JSON (`data`: exactly its model_dump_json)."""
        if status == DiagnosisStatus.QUEUED:
            return
        self._done[diagnosis_id] = data
        self._done.move_to_end(diagnosis_id)
        while len(self._done) > CACHE_SIZE:
            self._done.popitem(last=False)

    def cached(self, diagnosis_id: str) -> Diagnosis | None:
        data = self._done.get(diagnosis_id)
        return Diagnosis.model_validate_json(data) if data is not None else None

    async def get(self, diagnosis_id: str) -> Diagnosis | None:
        if not valid_id(diagnosis_id):
            return None
        if (done := self.cached(diagnosis_id)) is not None:
            return done
        if (data := await self._stored(diagnosis_id)) is None:
            return None
        diagnosis = Diagnosis.model_validate_json(data)
        self._remember(diagnosis.id, diagnosis.status, diagnosis.model_dump_json().encode())
        return diagnosis

    async def get_json(self, diagnosis_id: str) -> bytes | None:
        """The stored diagnosis as JSON (the sink's model_dump_json) without building the model: the
        result stream sends every diagnosis, and validating a result's paths only to serialise them
        again cost more than the stream itself. Only its status is read (to cache a finished one)."""
        if not valid_id(diagnosis_id):
            return None
        if (data := self._done.get(diagnosis_id)) is not None:
            return data
        if (data := await self._stored(diagnosis_id)) is not None:
            self._remember(diagnosis_id, _Head.model_validate_json(data).status, data)
        return data

    async def status(self, diagnosis_id: str) -> DiagnosisStatus | None:
        """The stored diagnosis's status, without building the whole model."""
        data = await self.get_json(diagnosis_id)
        return _Head.model_validate_json(data).status if data is not None else None

    async def _stored(self, diagnosis_id: str) -> bytes | None:
        """The diagnosis's JSON in the KV (its object-store copy when large), None when there is none."""
        try:
            entry = await self.bus.kv.get(diagnosis_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return await self.bus.unpack(entry.value)

    async def current_source(self) -> str | None:
        """The cluster the topology stage serves now (its published summary's `source`), None before one is
        published. New diagnoses are stamped with it and the history is listed for it."""
        try:
            kv = await self.bus.cluster_kv()
            entry = await kv.get(SUMMARY_KEY)
            source = json.loads(await self.bus.unpack(entry.value or b"{}")).get("source")
        except (KeyNotFoundError, ValueError):
            return None
        return source if isinstance(source, str) else None

    async def ids(self) -> list[str]:
        """Newest first: ids are time-ordered (shared.schemas.new_id)."""
        try:
            keys = await self.bus.kv.keys()
        except NoKeysError:
            return []
        return sorted((k for k in keys if valid_id(k)), reverse=True)

    async def claim(self, idempotency_key: str, diagnosis_id: str) -> str:
        """Bind a client's Idempotency-Key to a diagnosis id (first writer wins); returns the
        id the key is bound to, so a retried POST names the diagnosis of the first attempt."""
        name = IDEMPOTENCY_PREFIX + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        try:
            await self.bus.kv.create(name, diagnosis_id.encode())
            return diagnosis_id
        except KeyWrongLastSequenceError:
            entry = await self.bus.kv.get(name)
            return (entry.value or b"").decode() or diagnosis_id


class Reconciler:
    """No diagnosis stays queued for ever: every `interval_s`, a diagnosis still queued `deadline_s`
    after it was accepted is ended as failed with the reason (the pipeline lost it, a stage is not
    running, or the gateway that stored it died before the stream confirmed its requested event).
    Runs in every gateway replica; the compare-and-set in ResultStore.finish makes them (and a late
    result) agree on one outcome. Never re-published from here: a record whose creation the client saw
    refused (a lost KV ack) must not start behind its back."""

    def __init__(self, store: ResultStore, deadline_s: float, interval_s: float) -> None:
        self.store = store
        self.deadline_s = deadline_s
        self.interval_s = interval_s
        self._settled: set[str] = set()  # finished ids seen: not read again
        self.failed = 0

    async def run(self) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.sweep()
            # nats-py can turn a cancellation that lands inside its calls into one of the errors suppressed
            # above; the request to stop is still recorded on the task, so honour it here
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> int:
        horizon = (time.time() - self.deadline_s) * 1000
        overdue = [i for i in await self.store.ids() if i not in self._settled and created_at_ms(i) < horizon]
        ended = 0
        for diagnosis_id in overdue:
            status = await self.store.status(diagnosis_id)  # every diagnosis passes here once: no full parse
            if status is None:
                continue
            if status == DiagnosisStatus.QUEUED:
                reason = (f"no result within {self.deadline_s:g}s of being accepted: the pipeline lost it or "
                          "a stage is not running; submit it again")
                if await self.store.fail_if_queued(diagnosis_id, reason) is not None:
                    ended += 1
                    log.warning("diagnosis %s ended as failed: %s", diagnosis_id, reason,
                                extra=log_context(diagnosis_id=diagnosis_id, stage="gateway"))
                    await self.store.bus.progress(diagnosis_id, "gateway", "result", DiagnosisStatus.FAILED.value)
                    await self.store.bus.nc.publish(SUBJECT_STORED, diagnosis_id.encode())
            self._settled.add(diagnosis_id)
        self.failed += ended
        return ended


class ResultSink(Stage):
    """Consumes completed diagnoses and stores them; then tells SSE listeners."""

    name = "gateway-store"
    input_subject = SUBJECT_COMPLETED
    output_subject = None
    signed_input = True

    def __init__(self, bus: Bus, settings: object = None) -> None:
        self.bus = bus
        self.store = ResultStore(bus)

    async def handle(self, env: StageEnvelope) -> None:
        try:
            diagnosis = await self.store.finish(diagnosis_from_envelope(env))
        except Rejected as exc:
            metrics.REJECTED_EVENTS.labels(self.name, exc.reason).inc()
            log.warning("completed event refused: %s", exc, extra=log_context(diagnosis_id=env.id, stage=self.name))
            return None
        metrics.record_diagnosis(diagnosis.result.verdict.value if diagnosis.result else None)
        await self.bus.progress(env.id, "gateway", "result", diagnosis.status.value)
        await self.bus.nc.publish(SUBJECT_STORED, env.id.encode())
        return None
