"""PLACEHOLDER by the lead so the pipeline runs end to end; the cloud engineer replaces this file."""

from __future__ import annotations

from shared.bus import SUBJECT_COLLECTED, SUBJECT_CLOUD, Bus
from shared.config import Settings
from shared.schemas import Assumption, StageEnvelope
from shared.stage import Stage


class CloudStage(Stage):
    name = "cloud"
    input_subject = SUBJECT_COLLECTED
    output_subject = SUBJECT_CLOUD

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        note = Assumption(stage=self.name, text="cloud layer not inspected (stage logic not implemented yet)",
                          could_change_outcome=True)
        return env.model_copy(update={"assumptions": [*env.assumptions, note]})
