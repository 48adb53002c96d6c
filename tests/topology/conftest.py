from __future__ import annotations

from pathlib import Path

import pytest

from services.topology.plan import Planner
from services.topology.sources.snapshot import load_snapshot
from shared.schemas import DiagnosisRequest
from shared.topology import TopologyReport

FIXTURES = Path(__file__).parent / "fixtures"
BASIC = FIXTURES / "basic"


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(load_snapshot(BASIC).model, f"snapshot:{BASIC}")


def plan(planner: Planner, src: str, dst: str, port: int, protocol: str = "tcp") -> TopologyReport:
    return planner.plan(DiagnosisRequest(src=src, dst=dst, port=port, protocol=protocol))  # type: ignore[arg-type]
