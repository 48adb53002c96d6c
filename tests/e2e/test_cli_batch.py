"""`--batch` lines and big results, end to end: every line is validated exactly as the gateway
validates a POST body (one path, shared.intake), a bad line becomes that line's error object in
its place while the others are still answered, and a result larger than 1 MB streams whole
through a real gateway's SSE to `diagnose --server`, `watch` and `kubectl netdiag`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from services.gateway.store import ResultSink
from services.stack import EmbeddedStack
from shared.bus import SUBJECT_COMPLETED, SUBJECT_REQUESTED
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import Assumption, DiagnosisResult, StageEnvelope, Verdict
from shared.stage import Stage
from tests.e2e.cases import ROOT, SHOP, SHOP_CASES

TIMEOUT_S = 90
GOOD = [json.dumps(dict(zip(("src", "dst", "port", "protocol"), SHOP_CASES[n], strict=True)))
        for n in ("policy_allow", "policy_deny", "dns")]

# (line, the field its error names): what the API refuses, the batch refuses the same way
BAD: list[tuple[str, str]] = [
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": true, "protocol": "tcp"}', "port"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": "5432", "protocol": "tcp"}', "port"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 0, "protocol": "tcp"}', "port"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 70000, "protocol": "tcp"}', "port"),
    ('{"src": 167772161, "dst": "10.244.2.3", "port": 5432, "protocol": "tcp"}', "src"),
    ('{"src": "10.244.1.3", "dst": "db", "port": 5432, "protocol": "tcp"}', "dst"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432, "protocol": "icmp"}', "protocol"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432}', "protocol"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp", "prot": 1}', "prot"),
    ('{"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp", '
     '"options": {"collect_timeout_s": 0}}', "options.collect_timeout_s"),
    ("not json", "not valid JSON"),
    ('["10.244.1.3", "10.244.2.3", 5432, "tcp"]', "not a JSON object"),
]


def netdiag(*args: str | Path, stdin: bytes, module: str = "services.cli") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          timeout=TIMEOUT_S, input=stdin)


def interleaved() -> tuple[bytes, list[str | None]]:
    """Good and bad lines mixed (plus a blank and a non-UTF-8 line): the input and, per output
    line, the field the error must name (None: a diagnosis)."""
    lines: list[bytes] = []
    expect: list[str | None] = []
    for i, (bad, field) in enumerate(BAD):
        good = GOOD[i % len(GOOD)]
        lines += [good.encode(), bad.encode()]
        expect += [None, field]
    lines += [b"", b'{"src": "\xff\xfe"}', GOOD[0].encode()]
    expect += ["UTF-8", None]
    return b"\n".join(lines) + b"\n", expect


def check_batch_output(stdout: bytes, expect: list[str | None], answered: str) -> None:
    out = [json.loads(line) for line in stdout.decode().splitlines()]
    assert len(out) == len(expect)
    numbers = iter(range(1, 10_000))
    for doc, field in zip(out, expect, strict=True):
        n = next(numbers)
        if n == 2 * len(BAD) + 1:
            n = next(numbers)  # the blank line is skipped but counted
        if field is None:
            assert answered in doc, doc
        else:
            assert doc["line"] == n and doc["error"].startswith(f"line {n}: ") and field in doc["error"], doc


def test_diagnose_batch_validates_each_line_like_the_api() -> None:
    stdin, expect = interleaved()
    proc = netdiag("diagnose", "--snapshot", SHOP, "--batch", "-", stdin=stdin)
    assert proc.returncode == 3, proc.stderr  # some lines were invalid: the worst status of any line
    assert b"Traceback" not in proc.stderr
    check_batch_output(proc.stdout, expect, "result")
    verdicts = [json.loads(line)["result"]["verdict"] for line in proc.stdout.decode().splitlines()
                if '"result"' in line]
    assert verdicts[:2] == ["REACHABLE", "UNREACHABLE"] and len(verdicts) == len(BAD) + 1


def test_matrix_batch_validates_each_line_like_the_api() -> None:
    stdin, expect = interleaved()
    proc = netdiag("matrix", "--snapshot", SHOP, "--batch", "-", stdin=stdin)
    assert proc.returncode == 3, proc.stderr
    assert b"Traceback" not in proc.stderr
    check_batch_output(proc.stdout, expect, "allowed")


async def test_the_gateway_refuses_exactly_the_lines_the_batch_refuses() -> None:
    async with EmbeddedStack(Settings(snapshot=SHOP)) as stack, aiohttp.ClientSession() as http:
        for line, field in BAD:
            async with http.post(f"{stack.url}/api/v1/diagnoses", data=line,
                                 headers={"Content-Type": "application/json"}) as resp:
                body = await resp.json()
            assert resp.status in (400, 422) and field in body["error"], (line, resp.status, body)
        # and through --server the batch is the same: each bad line its own error, the others answered
        stdin, expect = interleaved()
        proc = await asyncio.to_thread(netdiag, "diagnose", "--server", stack.url, "--batch", "-", stdin=stdin)
    assert proc.returncode == 3, proc.stderr
    check_batch_output(proc.stdout, expect, "result")


# ------------------------------------------------------------------ results over 1 MB


class BigResult(Stage):
    """Completes each request with a real DiagnosisResult of about 1.5 MB (5,000 assumptions)."""

    name = "big-result"
    input_subject = SUBJECT_REQUESTED
    output_subject = SUBJECT_COMPLETED

    def __init__(self, *_: object) -> None:
        pass

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        notes = [Assumption(stage="test", text=f"{i:05d} " + "x" * 300) for i in range(5000)]
        return env.model_copy(update={"result": DiagnosisResult(verdict=Verdict.REACHABLE, summary="big",
                                                                 assumptions=notes)})


@pytest.fixture
async def big_gateway(tmp_path: Path) -> AsyncIterator[str]:
    # the embedded NATS keeps a 1 MB message limit; this one allows the big result through the pipeline
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 8MB\n")
    with NatsServer(tmp_path / "nats", extra_args=["-c", str(conf)]) as nats:
        async with EmbeddedStack(Settings(snapshot=SHOP), nats_url=nats.url, stages=(BigResult, ResultSink)) as stack:
            yield stack.url


async def test_a_result_over_1_mb_streams_whole(big_gateway: str) -> None:
    request = ["--src", "10.244.1.3", "--dst", "10.244.2.3", "--port", "5432", "--protocol", "tcp"]
    proc = await asyncio.to_thread(netdiag, "diagnose", "--server", big_gateway, *request, "--output", "json",
                                   stdin=b"")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 1_000_000
    doc = json.loads(proc.stdout)
    assert len(doc["result"]["assumptions"]) == 5000
    # text output, and the batch (the watch stream) read the same big event
    text = await asyncio.to_thread(netdiag, "diagnose", "--server", big_gateway, *request, stdin=b"")
    assert text.returncode == 0 and "[test] 04999 xxx" in text.stdout.decode()
    line = json.dumps({"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp"}).encode()
    batch = await asyncio.to_thread(netdiag, "diagnose", "--server", big_gateway, "--batch", "-",
                                    stdin=line + b"\n" + line + b"\n")
    assert batch.returncode == 0, batch.stderr
    assert [len(json.loads(x)["result"]["assumptions"]) for x in batch.stdout.splitlines()] == [5000, 5000]
    # addresses need no cluster to resolve: kubectl netdiag goes straight to the gateway
    kubectl = await asyncio.to_thread(netdiag, "diagnose", "--from", "10.244.1.3", "--to", "10.244.2.3", "--port",
                                      "5432", "--server", big_gateway, "--output", "json", stdin=b"",
                                      module="services.kubectl")
    assert kubectl.returncode == 0, kubectl.stderr
    assert len(json.loads(kubectl.stdout)["result"]["assumptions"]) == 5000


# ------------------------------------------------------------------ streaming: order and bounds


async def test_results_stream_in_order_with_bounded_work_in_flight() -> None:
    """run_ordered: each result is emitted as soon as it and every earlier line are done; at most
    `concurrency` run at once and the input is read only as far as 2 x concurrency ahead."""
    import random

    from services.batch import run_ordered

    running = peak = read = 0
    emitted: list[int] = []
    ahead: list[int] = []

    async def items() -> AsyncIterator[tuple[int, object]]:
        nonlocal read
        for n in range(1, 201):
            read = n
            yield n, ({"line": n, "error": "bad"} if n % 17 == 0 else n)

    async def work(n: int) -> dict[str, int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.uniform(0, 0.004))
        running -= 1
        return {"line": n}

    def emit(doc: dict[str, object]) -> None:
        emitted.append(int(str(doc["line"])))
        ahead.append(read - emitted[-1])

    await run_ordered(items(), work, 4, emit)
    assert emitted == list(range(1, 201))
    assert peak <= 4 and max(ahead) <= 2 * 4 + 1
