"""`python -m services.topology --nats URL [--snapshot DIR | --kubeconfig FILE]` serves the stage;
`python -m services.topology plan SRC DST PORT PROTO [--snapshot DIR]` prints one TopologyReport."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.topology.handler import TopologyStage
from services.topology.plan import Planner
from services.topology.sources.live import shared_live_source
from services.topology.sources.snapshot import load_notes, load_snapshot
from shared.config import Settings
from shared.schemas import DiagnosisRequest
from shared.service import main as service_main


def plan_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m services.topology plan", description="print one TopologyReport")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("protocol", choices=["tcp", "udp"])
    p.add_argument("--snapshot", type=Path, help="snapshot directory (default: live cluster)")
    p.add_argument("--kubeconfig", type=Path)
    args = p.parse_args(argv)
    settings = Settings.from_env(snapshot=args.snapshot, kubeconfig=args.kubeconfig)
    if settings.snapshot:
        load = load_snapshot(settings.snapshot)
        planner = Planner(load.model, f"snapshot:{settings.snapshot}", load_notes(load))
    else:
        source = shared_live_source(settings.kubeconfig)
        if not source.wait_synced(30):
            sys.exit(f"Kubernetes API cache did not sync: {source.errors()}")
        planner = Planner(source.model, source.name)
    request = DiagnosisRequest(src=args.src, dst=args.dst, port=args.port, protocol=args.protocol)
    print(planner.plan(request).model_dump_json(indent=2))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:
        plan_main(argv[1:])
    else:
        service_main("topology", TopologyStage, argv)


if __name__ == "__main__":
    main()
