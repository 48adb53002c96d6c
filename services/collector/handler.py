"""PLACEHOLDER by the lead so the pipeline runs end to end; the collector engineer replaces this file."""

from __future__ import annotations

from shared.bus import SUBJECT_TOPOLOGY, SUBJECT_COLLECTED, Bus
from shared.config import Settings
from shared.schemas import Assumption, StageEnvelope
from shared.stage import Stage


class CollectorStage(Stage):
    name = "collector"
    input_subject = SUBJECT_TOPOLOGY
    output_subject = SUBJECT_COLLECTED

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        note = Assumption(stage=self.name, text="node network state not collected (stage logic not implemented yet)",
                          could_change_outcome=True)
        return env.model_copy(update={"assumptions": [*env.assumptions, note]})
