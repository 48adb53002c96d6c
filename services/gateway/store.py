"""The result store: the gateway's sink on the completed subject, and reads for the API.

Results live in the JetStream KV bucket (file storage), so a gateway restart loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import re

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from shared import metrics
from shared.bus import SUBJECT_COMPLETED, SUBJECT_STORED, Bus
from shared.cluster import SUMMARY_KEY
from shared.schemas import Diagnosis, DiagnosisStatus, StageEnvelope, now
from shared.stage import Stage

# shared.schemas.new_id(); anything else (e.g. `*`, `>`, spaces) is no diagnosis, and must
# never reach the KV (an invalid key) or a progress subject (a wildcard)
ID_FORMAT = re.compile(r"[0-9a-f]{32}")
IDEMPOTENCY_PREFIX = "idempotency."  # same bucket, never a 32-hex id, so listings skip it


def diagnosis_from_envelope(env: StageEnvelope) -> Diagnosis:
    failed = env.error is not None or env.result is None
    source = (env.topology or {}).get("source")
    return Diagnosis(
        id=env.id, request=env.request, created_at=env.created_at, completed_at=now(),
        source=source if isinstance(source, str) else None,
        status=DiagnosisStatus.FAILED if failed else DiagnosisStatus.COMPLETED,
        result=env.result, error=env.error or (None if env.result else "no result produced"),
        timings_ms=env.timings_ms,
    )


class ResultStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def _value(self, diagnosis: Diagnosis) -> bytes:
        """The KV value: the diagnosis, or a reference to it in the object store when it is large."""
        return await self.bus.pack(f"results/{diagnosis.id}", diagnosis.model_dump_json().encode())

    async def create(self, diagnosis: Diagnosis) -> None:
        await self.bus.kv.create(diagnosis.id, await self._value(diagnosis))

    async def save(self, diagnosis: Diagnosis) -> None:
        await self.bus.kv.put(diagnosis.id, await self._value(diagnosis))

    async def forget(self, diagnosis_id: str) -> None:
        await self.bus.kv.purge(diagnosis_id)

    async def get(self, diagnosis_id: str) -> Diagnosis | None:
        if not ID_FORMAT.fullmatch(diagnosis_id):
            return None
        try:
            entry = await self.bus.kv.get(diagnosis_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Diagnosis.model_validate_json(await self.bus.unpack(entry.value))

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
        return sorted((k for k in keys if ID_FORMAT.fullmatch(k)), reverse=True)

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


class ResultSink(Stage):
    """Consumes completed diagnoses and stores them; then tells SSE listeners."""

    name = "gateway-store"
    input_subject = SUBJECT_COMPLETED
    output_subject = None

    def __init__(self, bus: Bus, settings: object = None) -> None:
        self.bus = bus
        self.store = ResultStore(bus)

    async def handle(self, env: StageEnvelope) -> None:
        diagnosis = diagnosis_from_envelope(env)
        if diagnosis.source is None:  # failed before the topology stage named it: keep the one stamped at creation
            stored = await self.store.get(env.id)
            diagnosis.source = stored.source if stored else None
        await self.store.save(diagnosis)
        metrics.record_diagnosis(diagnosis.result.verdict.value if diagnosis.result else None)
        await self.bus.progress(env.id, "gateway", "result", diagnosis.status.value)
        await self.bus.nc.publish(SUBJECT_STORED, env.id.encode())
        return None
