"""`python -m services.topology run` serves the stage; `plan` prints one TopologyReport (debugging)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from services.topology.handler import TopologyStage
from services.topology.plan import Planner
from services.topology.sources.live import shared_live_source
from services.topology.sources.snapshot import load_snapshot
from shared.bus import Bus
from shared.config import Settings
from shared.schemas import DiagnosisRequest
from shared.stage import run_stages


async def _serve(settings: Settings) -> None:
    bus = await Bus.connect(name="topology", settings=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await run_stages(bus, [TopologyStage(bus, settings)], stop)
    finally:
        await bus.close()


def _plan(args: argparse.Namespace, settings: Settings) -> None:
    if settings.snapshot:
        planner = Planner(load_snapshot(settings.snapshot).model, f"snapshot:{settings.snapshot}")
    else:
        source = shared_live_source(settings.kubeconfig)
        if not source.wait_synced(30):
            sys.exit(f"Kubernetes API cache did not sync: {source.errors()}")
        planner = Planner(source.model, "live")
    request = DiagnosisRequest(src=args.src, dst=args.dst, port=args.port, protocol=args.protocol)
    print(planner.plan(request).model_dump_json(indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.topology", description=__doc__)
    parser.add_argument("--snapshot", type=Path, help="snapshot directory (default: live cluster)")
    parser.add_argument("--kubeconfig", type=Path)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve the topology stage on the bus (NETDIAG_NATS_URL)")
    plan = sub.add_parser("plan", help="print the TopologyReport for one request")
    plan.add_argument("src")
    plan.add_argument("dst")
    plan.add_argument("port", type=int)
    plan.add_argument("protocol", choices=["tcp", "udp"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env(snapshot=args.snapshot, kubeconfig=args.kubeconfig)
    if args.command == "run":
        asyncio.run(_serve(settings))
    else:
        _plan(args, settings)


if __name__ == "__main__":
    main()
