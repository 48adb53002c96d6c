"""Network-namespace helpers: create/delete named namespaces, run commands and Python code inside them.

Namespaces are the iproute2 kind (bind mounts under /run/netns) so `ip netns`, `ip -n`, `nsenter` and
pyroute2 all see them. Nothing here touches the root namespace's network configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], rc: int, stderr: str, stdin: str | None = None):
        where = f"\n--- stdin ---\n{stdin[:4000]}" if stdin else ""
        super().__init__(f"{' '.join(argv)} exited {rc}: {stderr.strip()}{where}")
        self.argv, self.rc, self.stderr = list(argv), rc, stderr


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr, stdin)
    return proc


def in_ns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside a named namespace (None = the root namespace)."""
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def ip_batch(lines: Iterable[str], netns: str | None = None, tool: str = "ip") -> None:
    """One `ip`/`bridge` process for many commands (`-force` so one error does not hide the others)."""
    text = "\n".join(lines) + "\n"
    if not text.strip():
        return
    argv = [tool, *(["-n", netns] if netns else []), "-force", "-batch", "-"]
    run(argv, stdin=text)


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def list_with_prefix(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"{prefix}-"))


def add_all(names: Sequence[str]) -> None:
    ip_batch(f"netns add {n}" for n in names)


def delete_all(names: Sequence[str]) -> None:
    present = [n for n in names if exists(n)]
    if present:
        run(["ip", "-force", "-batch", "-"], stdin="".join(f"netns del {n}\n" for n in present), check=False)


def _ns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in(names: Iterable[str]) -> list[int]:
    """PIDs of processes living in any of these namespaces (what `ip netns pids` reports), one /proc scan."""
    inodes = {i for i in (_ns_inode(NETNS_DIR / n) for n in names) if i is not None}
    if not inodes:
        return []
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and _ns_inode(f"/proc/{entry}/ns/net") in inodes]


def pid_in_netns(pid: int, netns: str) -> bool:
    inode = _ns_inode(NETNS_DIR / netns)
    return inode is not None and _ns_inode(f"/proc/{pid}/ns/net") == inode


def kill_pids(pids: Iterable[int], grace_s: float = 1.0) -> None:
    """SIGTERM, wait briefly, then SIGKILL whatever is left; reap our own children."""
    pending = set(pids)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid):
                pending.discard(pid)
        if pending:
            time.sleep(0.01)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone: its sockets are already closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_libc = ctypes.CDLL(None, use_errno=True)


def enter(netns: str) -> None:
    """Switch the *calling thread* into `netns` (Python 3.11 has no os.setns)."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(netns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that lives in `netns`; sockets it creates stay in that namespace."""
    box: dict[str, Any] = {}  # the thread's value or its exception

    def target() -> None:
        try:
            enter(netns)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def ifindex(netns: str, device: str) -> int:
    return int(json.loads(run(["ip", "-n", netns, "-j", "link", "show", device]).stdout)[0]["ifindex"])


def write_sysctls(netns: str, values: dict[str, str | int]) -> None:
    """Write net.* sysctls of a namespace (e.g. {"net.ipv4.ip_forward": 1}) through /proc/sys."""

    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(f"{value}\n")

    call_in(netns, write)
