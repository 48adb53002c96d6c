"""The bounded chaos run in CI (tests/chaos/harness.py): a few hundred diagnoses through separate
processes while stage replicas are SIGKILLed and NATS is restarted. Nothing is lost or duplicated,
every diagnosis ends within the deadline with the calm run's verdict; the figures are printed."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from tests.chaos.harness import ACK_WAIT_S, run_chaos

DIAGNOSES = int(os.environ.get("NETDIAG_CHAOS_DIAGNOSES", "200"))


async def test_chaos_loses_nothing_duplicates_nothing_and_agrees_with_calm(tmp_path: Path) -> None:
    report = await run_chaos(tmp_path, diagnoses=DIAGNOSES)
    print("chaos:", json.dumps(report.figures()))
    # kills land only on replicas holding work (and the run goes on until one is seen redelivered): an idle
    # machine finishes faster and kills fewer, so the count is reported; the redelivery below is the proof
    assert report.replica_kills >= 1 and report.nats_restarts == 1
    assert report.accepted == DIAGNOSES
    assert all(len(ids) == 1 for ids in report.ids_per_key.values()), "a retried POST named another diagnosis"
    assert report.never_finished == [], f"{len(report.never_finished)} never finished: {report.never_finished[:3]}"
    assert report.statuses == {"completed": DIAGNOSES}, report.statuses
    assert report.wrong_verdicts == []
    accepted_finals = {i: n for i, n in report.finals_per_id.items() if n != 1}
    assert accepted_finals == {}, "a diagnosis has more than one final event"
    # a killed replica's message comes back after ack_wait (in-progress heartbeats keep a live one's),
    # not after the 30 s it used to take; the exact figure is load-dependent and reported, not asserted
    # on an idle machine a kill rarely lands on work in flight (tests/foundation/test_runner.py kills a replica
    # holding a message deterministically); when one did, its message came back after ack_wait, not 30 s
    if report.redelivery_s:
        assert statistics.median(report.redelivery_s) < ACK_WAIT_S + 7, report.redelivery_s
