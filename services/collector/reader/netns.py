"""Finding network namespaces and running code inside them.

Python 3.11 has no `os.setns`, so a dedicated thread calls libc `setns(2)`: only that
thread switches, and everything it opens there (netlink sockets, /proc/thread-self/net,
/proc/sys/net, child processes) belongs to the target namespace. Threads are throwaway:
one per namespace visit, never returned to a pool, so no thread is left in a foreign
namespace. Nothing here creates a namespace (pyroute2's `IPRoute(netns=…)` would).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NAMED_NETNS_DIR = Path("/var/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class NetnsRef:
    """A namespace we can enter: a path to an nsfs file (named bind mount or /proc/<pid>/ns/net)."""

    path: str
    inode: int
    names: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"netns:{self.inode}"


def setns(path: str) -> None:
    """Switch the calling thread into the network namespace at path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def host_ref(netns: str | None) -> NetnsRef:
    """The agent's host namespace: a named netns (the lab's node), else the agent's own."""
    if netns:
        if "/" in netns or netns in (".", ".."):
            raise ValueError(f"invalid netns name {netns!r}")
        path = NAMED_NETNS_DIR / netns
        if not path.exists():  # never create it: a missing node namespace is an error
            raise FileNotFoundError(f"network namespace {netns!r} does not exist ({path})")
        return NetnsRef(str(path), os.stat(path).st_ino, [netns])
    own = f"/proc/{os.getpid()}/ns/net"
    return NetnsRef(own, os.stat(own).st_ino, _names_by_inode().get(os.stat(own).st_ino, []))


def _names_by_inode() -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    try:
        entries = sorted(os.listdir(NAMED_NETNS_DIR))
    except FileNotFoundError:
        return names
    for name in entries:
        try:
            names.setdefault(os.stat(NAMED_NETNS_DIR / name).st_ino, []).append(name)
        except OSError:  # a mount point left over from a deleted namespace
            continue
    return names


def discover(exclude_inode: int) -> list[NetnsRef]:
    """Every network namespace reachable through /var/run/netns and /proc/*/ns/net, once each."""
    found: dict[int, NetnsRef] = {}
    for inode, names in _names_by_inode().items():
        found[inode] = NetnsRef(str(NAMED_NETNS_DIR / names[0]), inode, names)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except OSError:  # the process exited, or a kernel thread without namespaces
            continue
        found.setdefault(inode, NetnsRef(path, inode))
    found.pop(exclude_inode, None)
    return sorted(found.values(), key=lambda r: r.inode)


def run_in(ref: NetnsRef, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread inside ref's namespace; return its result or raise its error."""
    result = run_many([(ref, fn)], workers=1)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def run_many(tasks: list[tuple[NetnsRef, Callable[[], T]]], workers: int = 4) -> list[T | BaseException]:
    """Run each fn inside its namespace, at most `workers` at a time (the GIL is released
    while netlink and child processes are waited on). Errors are returned, not raised."""
    results: list[T | BaseException] = [RuntimeError("not run")] * len(tasks)
    slots = threading.BoundedSemaphore(workers)
    threads = []

    def body(i: int, ref: NetnsRef, fn: Callable[[], T]) -> None:
        try:
            setns(ref.path)
            results[i] = fn()
        except BaseException as exc:
            results[i] = exc
        finally:
            slots.release()

    for i, (ref, fn) in enumerate(tasks):
        slots.acquire()
        t = threading.Thread(target=body, args=(i, ref, fn), name=f"netns-{ref.inode}", daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results
