"""The simulator stage: turns the topology, node dumps and cloud inventory into the result."""

from __future__ import annotations

from services.simulator.assemble import Blobs, diagnose
from shared.bus import SUBJECT_CLOUD, SUBJECT_COMPLETED, Bus
from shared.config import Settings
from shared.schemas import StageEnvelope
from shared.stage import Stage


class SimulatorStage(Stage):
    name = "simulator"
    input_subject = SUBJECT_CLOUD
    output_subject = SUBJECT_COMPLETED

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.blobs = Blobs()  # dumps and inventories decoded once per digest, for this stage's lifetime

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        result = await diagnose(env, self.bus, self.blobs, self.settings)
        return env.model_copy(update={"result": result})
