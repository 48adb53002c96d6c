"""The result store: the gateway's sink on the completed subject, and reads for the API.

Results live in the JetStream KV bucket (file storage), so a gateway restart loses nothing.
"""

from __future__ import annotations

import re

from nats.js.errors import KeyNotFoundError, NoKeysError

from shared import metrics
from shared.bus import SUBJECT_COMPLETED, SUBJECT_STORED, Bus
from shared.schemas import Diagnosis, DiagnosisStatus, StageEnvelope, now
from shared.stage import Stage

# shared.schemas.new_id(); anything else (e.g. `*`, `>`, spaces) is no diagnosis, and must
# never reach the KV (an invalid key) or a progress subject (a wildcard)
ID_FORMAT = re.compile(r"[0-9a-f]{32}")


def diagnosis_from_envelope(env: StageEnvelope) -> Diagnosis:
    failed = env.error is not None or env.result is None
    return Diagnosis(
        id=env.id, request=env.request, created_at=env.created_at, completed_at=now(),
        status=DiagnosisStatus.FAILED if failed else DiagnosisStatus.COMPLETED,
        result=env.result, error=env.error or (None if env.result else "no result produced"),
        timings_ms=env.timings_ms,
    )


class ResultStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def create(self, diagnosis: Diagnosis) -> None:
        await self.bus.kv.create(diagnosis.id, diagnosis.model_dump_json().encode())

    async def save(self, diagnosis: Diagnosis) -> None:
        await self.bus.kv.put(diagnosis.id, diagnosis.model_dump_json().encode())

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
        return Diagnosis.model_validate_json(entry.value)

    async def ids(self) -> list[str]:
        """Newest first: ids are time-ordered (shared.schemas.new_id)."""
        try:
            keys = await self.bus.kv.keys()
        except NoKeysError:
            return []
        return sorted(keys, reverse=True)


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
        await self.store.save(diagnosis)
        metrics.record_diagnosis(diagnosis.result.verdict.value if diagnosis.result else None)
        await self.bus.progress(env.id, "gateway", "result", diagnosis.status.value)
        await self.bus.nc.publish(SUBJECT_STORED, env.id.encode())
        return None
