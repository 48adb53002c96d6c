"""`python -m services.collector --nats URL` runs the collector stage;
`python -m services.collector agent --node NAME [--netns NS] --nats URL` runs a node agent."""

from __future__ import annotations

import argparse
import sys

from services.collector.agent import run_agent
from services.collector.handler import CollectorStage
from shared.config import Settings
from shared.logs import setup_logging
from shared.service import main as service_main
from shared.service import run_service
from shared.telemetry import setup_process


def agent_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m services.collector agent", description="netdiag node agent")
    p.add_argument("--node", required=True, help="the Kubernetes node this agent serves")
    p.add_argument("--netns", help="named netns that is this node's host namespace (the lab); default: our own")
    p.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    p.add_argument("--log-level")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings.from_env(nats_url=args.nats_url)
    setup_process("agent", settings)
    run_service("agent", lambda: run_agent(settings, args.node, args.netns))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        agent_main(argv[1:])
    else:
        service_main("collector", CollectorStage, argv)


if __name__ == "__main__":
    main()
