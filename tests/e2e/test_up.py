"""`netdiag up`: NATS, every service and the gateway in one process; a signal stops all of it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).resolve().parents[2] / "examples" / "snapshots" / "shop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_then_stops_everything_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = _free_port()
    # a new session: background jobs of a non-interactive shell ignore SIGINT otherwise
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port), "--data-dir",
                             str(tmp_path), "--snapshot", str(SNAPSHOT)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        nats = _children(proc.pid)
        assert nats, "nats-server child not found"
        body = json.dumps({"src": "10.244.1.2", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/diagnoses", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            location = resp.headers["Location"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{location}", timeout=10) as resp:
                doc = json.load(resp)
            if doc["status"] != "queued":
                break
            time.sleep(0.1)
        assert doc["result"]["verdict"] == "UNREACHABLE"
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert "netdiag stopped" in proc.stdout.read()
        for pid in nats:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
