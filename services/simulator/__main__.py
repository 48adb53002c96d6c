"""`python -m services.simulator --nats URL` runs the simulator stage."""

from __future__ import annotations

from services.simulator.handler import SimulatorStage
from shared.service import main as service_main


def main(argv: list[str] | None = None) -> None:
    service_main("simulator", SimulatorStage, argv)


if __name__ == "__main__":
    main()
