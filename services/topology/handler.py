"""PLACEHOLDER by the lead so the pipeline runs end to end; the topology engineer replaces this file."""

from __future__ import annotations

from shared.bus import SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.schemas import Assumption, StageEnvelope
from shared.stage import Stage


class TopologyStage(Stage):
    name = "topology"
    input_subject = SUBJECT_REQUESTED
    output_subject = SUBJECT_TOPOLOGY

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        note = Assumption(stage=self.name, text="topology not classified (stage logic not implemented yet)",
                          could_change_outcome=True)
        return env.model_copy(update={"assumptions": [*env.assumptions, note]})
