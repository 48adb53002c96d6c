"""The chaos run of tests/chaos at a chosen size, printing its figures.

    .venv/bin/python -m bench.chaos [--diagnoses 300] [--clients 12] [--chaos-s 15]   (from the repository root)

Separate processes (nats-server, two replicas per stage, a gateway) on the shop snapshot; stage
replicas SIGKILLed every 1-2 s and restarted, nats-server SIGKILLed and restarted once. Prints:
settle time after the last fault, p50/max latency (accepted → stored) under chaos, and how soon a
killed replica's in-flight messages were started again by another replica (target < 5 s: ack_wait
3 s plus scheduling). Correctness (nothing lost/duplicated, calm verdicts) is checked as in the test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tests.chaos.harness import run_chaos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diagnoses", type=int, default=300)
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--chaos-s", type=float, default=15.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="netdiag-chaos-") as tmp:
        report = asyncio.run(run_chaos(Path(tmp), diagnoses=args.diagnoses, clients=args.clients,
                                       chaos_s=args.chaos_s))
    figures = report.figures()
    figures["ok"] = (report.statuses == {"completed": args.diagnoses} and not report.wrong_verdicts
                     and all(n == 1 for n in report.finals_per_id.values()))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
