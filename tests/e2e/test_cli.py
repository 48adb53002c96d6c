"""The `netdiag` command as a user runs it: a subprocess (`python -m services.cli`), its exit
status, stdout and stderr. Each `diagnose` starts its own embedded stack (nats-server + every
stage) on a snapshot; `watch` follows a stack this test runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from services.stack import EmbeddedStack
from shared.config import Settings
from tests.e2e.cases import POLICY, POLICY_CASES, ROOT, SHOP, SHOP_CASES, Case
from tests.foundation.helpers import post

TIMEOUT_S = 60


def netdiag(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S, input=stdin)


def request_args(case: Case) -> list[str]:
    src, dst, port, protocol = case
    return ["--src", src, "--dst", dst, "--port", str(port), "--protocol", protocol]


def request_line(case: Case) -> str:
    src, dst, port, protocol = case
    return json.dumps({"src": src, "dst": dst, "port": port, "protocol": protocol})


# ------------------------------------------------------------------ diagnose: exit codes and output


def test_unreachable_text_answer_exits_1() -> None:
    run = netdiag("diagnose", "--snapshot", POLICY, *request_args(POLICY_CASES["ingress_deny"]))
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("diagnosis ") and lines[0].endswith(": tcp 10.244.1.10 → 10.244.2.12:8200")
    assert lines[1].startswith("verdict: UNREACHABLE — network policy verdict of secure/default-deny-all: deny the "
                               "packet")
    assert lines[2] == "first failing hop: secure/vault-0 (pod) on path p0"
    # the long policy explanation is the verdict's summary: printed once, not again as "because" or a finding
    assert lines[3].startswith("  fix:     Add to policy secure/default-deny-all an ingress peer namespaceSelector ")
    assert lines[3].endswith("on port 8200/TCP (or remove the policy that isolates the pod).")
    assert run.stdout.count("is isolated for ingress and no rule allows") == 1
    assert "ERROR NETWORK_POLICY_DENY @ pod:secure/vault-0: (explained above)" in run.stdout
    assert "\nassumptions:\n" in run.stdout and run.stdout.rstrip().endswith("1 forward path(s): 1 dropped")


def test_reachable_exits_0() -> None:
    run = netdiag("diagnose", "--snapshot", SHOP, *request_args(SHOP_CASES["policy_allow"]))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[1] == "verdict: REACHABLE — every path delivers"


def test_undetermined_json_exits_2() -> None:
    run = netdiag("diagnose", "--snapshot", POLICY, *request_args(POLICY_CASES["allow_via_service"]),
                  "--output", "json")
    assert run.returncode == 2, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "completed" and doc["request"]["dst"] == "10.96.0.20"
    assert doc["result"]["verdict"] == "UNDETERMINED"
    assert [p["final"] for p in doc["result"]["paths"]] == ["DELIVER"]
    assert {f["code"] for f in doc["result"]["findings"]} == {"DATA_MISSING"}


def test_ambiguous_exits_2() -> None:
    run = netdiag("diagnose", "--snapshot", POLICY, *request_args(POLICY_CASES["one_endpoint_denied"]))
    assert run.returncode == 2, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].startswith("verdict: AMBIGUOUS — 1 of 2 paths deliver; network policy verdict of "
                               "prod/default-deny-ingress")
    assert lines[2] == "first failing hop: prod/search-1 (pod) on path p1"


def test_usage_errors_exit_3_without_starting_anything() -> None:
    missing = netdiag("diagnose", "--snapshot", POLICY, "--src", "10.244.1.10", "--dst", "10.244.2.12")
    assert missing.returncode == 3 and missing.stdout == ""
    assert "missing --port, --protocol" in missing.stderr
    bad = netdiag("diagnose", "--snapshot", POLICY, "--src", "10.244.1.300", "--dst", "10.244.2.12",
                  "--port", "80", "--protocol", "tcp")
    assert bad.returncode == 3 and "invalid request: --src:" in bad.stderr
    assert netdiag("matrix", "--snapshot", ROOT / "no-such-snapshot").returncode == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_gateway_exits_4() -> None:
    run = netdiag("diagnose", "--server", f"http://127.0.0.1:{_closed_port()}",
                  *request_args(POLICY_CASES["ingress_deny"]))
    assert run.returncode == 4 and "cannot reach the gateway" in run.stderr


def test_batch_keeps_order_and_reports_bad_lines() -> None:
    cases = [POLICY_CASES[n] for n in ("one_endpoint_denied", "no_endpoints", "dns")]
    lines = [request_line(cases[0]), '{"src": "10.244.1.10", "dst": "10.96.0.50", "port": 0, "protocol": "tcp"}',
             "", request_line(cases[1]), "not json", request_line(cases[2])]
    run = netdiag("diagnose", "--snapshot", POLICY, "--batch", "-", stdin="\n".join(lines) + "\n")
    assert run.returncode == 3, run.stderr  # some lines were invalid
    out = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(out) == 5  # the blank line is skipped, every other line answered in order
    assert out[1]["error"].startswith("line 2: port:") and out[3]["error"].startswith("line 5: ")
    answered = [o for o in out if "status" in o]  # diagnosis documents (their "error" is null)
    assert [(o["request"]["dst"], o["request"]["port"]) for o in answered] == [
        (c[1], c[2]) for c in cases]
    assert [o["result"]["verdict"] for o in answered] == ["AMBIGUOUS", "UNREACHABLE", "UNDETERMINED"]


def test_batch_exits_with_the_worst_line() -> None:
    """0 only when every line is REACHABLE: a script can gate on `netdiag diagnose --batch`."""
    reachable = netdiag("diagnose", "--snapshot", SHOP, "--batch", "-",
                        stdin=request_line(SHOP_CASES["policy_allow"]) + "\n")
    assert reachable.returncode == 0, reachable.stderr
    lines = [request_line(SHOP_CASES["policy_allow"]), request_line(SHOP_CASES["policy_deny"])]
    run = netdiag("diagnose", "--snapshot", SHOP, "--batch", "-", stdin="\n".join(lines) + "\n")
    assert run.returncode == 1, run.stderr
    assert [json.loads(line)["result"]["verdict"] for line in run.stdout.splitlines()] == ["REACHABLE", "UNREACHABLE"]


# ------------------------------------------------------------------ matrix


def test_matrix_text_and_json() -> None:
    text = netdiag("matrix", "--snapshot", POLICY, "--namespace", "prod", "--port", "9200")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("NetworkPolicy reachability on port 9200/TCP")
    rows = {line.split()[0]: line.split()[1:-1] for line in lines[2:] if line.startswith("prod/")}
    assert list(rows) == ["prod/api-7d9f8b6c5-a1b2c", "prod/api-7d9f8b6c5-d3e4f", "prod/search-0", "prod/search-1"]
    # prod isolates every pod for ingress and admits only namespace team=web: within prod only loopback
    assert all(cell == ("." if i == j else "X") for i, row in enumerate(rows.values()) for j, cell in enumerate(row))

    run = netdiag("matrix", "--snapshot", POLICY, "--port", "9200", "--output", "json")
    assert run.returncode == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    assert (doc["port"], doc["protocol"]) == (9200, "TCP")
    frontend = doc["matrix"]["web/frontend-6f7b8c9d5-h2k4p"]
    assert frontend["prod/search-0"] is True and frontend["prod/search-1"] is False
    assert {"src": "web/frontend-6f7b8c9d5-h2k4p", "dst": "prod/search-1", "denied_by": "ingress"} in doc["denied"]
    assert doc["matrix"]["web/sandbox"]["prod/search-0"] is False  # its egress admits DNS only
    assert {"src": "web/sandbox", "dst": "prod/search-0", "denied_by": "egress"} in doc["denied"]


# ------------------------------------------------------------------ watch


async def test_watch_prints_a_completed_diagnosis() -> None:
    async with EmbeddedStack(Settings(snapshot=POLICY)) as stack, aiohttp.ClientSession() as http:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "watch", "--server", stack.url, "--count", "1", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        src, dst, port, protocol = POLICY_CASES["no_endpoints"]
        body = {"src": src, "dst": dst, "port": port, "protocol": protocol}
        try:
            # the watch streams results from the moment it subscribes (no replay): submit until it prints one
            async with asyncio.timeout(TIMEOUT_S):
                while proc.returncode is None:
                    await post(http, stack.url, body)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 0.5)
            stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert lines[0].startswith("diagnosis ") and lines[0].endswith(": tcp 10.244.1.10 → 10.96.0.50:80")
    assert lines[1] == "verdict: UNREACHABLE — service prod/reports has no valid endpoint (EndpointSlices are empty)"
    assert lines[2] == "first failing hop: prod/reports (service) on path p0"
