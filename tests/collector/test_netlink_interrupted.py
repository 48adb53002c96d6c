"""NLM_F_DUMP_INTR: the kernel marks a multi-part dump whose table changed between its parts; the
reader must read it again (as iproute2 and pyroute2 callers do), never return it as if whole.

1. Replay: real kernel replies to an address dump, captured from a namespace, fed back with the flag
   set on the first attempt (the retry loop and its limit, deterministically).
2. Churn: a real namespace with 3,000 addresses while another thread keeps adding and removing one;
   every dump the reader returns holds exactly the 3,000 stable addresses.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from services.collector.reader import netlink as nl
from services.collector.reader.rtnl import _IFADDR, RTM_GETADDR
from tests.collector.netns_fixture import run_in_netns, sh

_HEADER = struct.Struct("=IHHII")
STABLE = 3000


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nlintr-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
        sh("ip", "-n", name, "link", "set", "a0", "up")
        batch = "".join(f"address add 10.{i // 250}.{i % 250}.1/32 dev a0\n" for i in range(STABLE))
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, text=True, check=True)
        yield name
    finally:
        sh("ip", "netns", "del", name)


class Recorder:
    """The kernel socket, keeping every datagram it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.datagrams: list[bytes] = []

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        size = self.sock.recv_into(buf, nbytes, flags)
        self.datagrams.append(bytes(buf[:size]))
        return size

    def close(self) -> None:
        self.sock.close()


def _with(datagram: bytes, seq: int, intr: bool) -> bytes:
    """The datagram's messages renumbered to `seq`, with NLM_F_DUMP_INTR set (or cleared)."""
    out, offset = bytearray(datagram), 0
    while offset + _HEADER.size <= len(out):
        length, kind, flags, _, pid = _HEADER.unpack_from(out, offset)
        flags = flags | nl.NLM_F_DUMP_INTR if intr else flags & ~nl.NLM_F_DUMP_INTR
        _HEADER.pack_into(out, offset, length, kind, flags, seq, pid)
        offset += (length + 3) & ~3
    return bytes(out)


class Replay:
    """Answers each request with the captured datagrams; `interrupted` attempts carry the flag."""

    def __init__(self, datagrams: list[bytes], interrupted: int) -> None:
        self.datagrams, self.interrupted = datagrams, interrupted
        self.pending: list[bytes] = []
        self.requests = 0

    def send(self, data: bytes) -> int:
        seq = _HEADER.unpack_from(data)[3]
        intr = self.requests < self.interrupted
        self.requests += 1
        # the flag lands on the second part, as the kernel sets it where the change is noticed
        self.pending = [_with(d, seq, intr and i >= 1) for i, d in enumerate(self.datagrams)]
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        data = self.pending.pop(0)
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


REQUEST = (RTM_GETADDR, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0))


def _addresses(replies: list[tuple[int, bytes]]) -> list[str]:
    return [nl.ip(nl.attrs(body, _IFADDR.size).get(2)) or "" for _, body in replies]  # IFA_LOCAL


def _capture(netns: str) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    def read() -> tuple[list[bytes], list[tuple[int, bytes]]]:
        rec = Recorder()
        with nl.Netlink(nl.NETLINK_ROUTE, sock=rec) as sock:  # type: ignore[arg-type]
            replies = sock.dump(*REQUEST)
        return rec.datagrams, replies
    return run_in_netns(netns, read)


def test_an_interrupted_dump_is_read_again(netns: str) -> None:
    datagrams, clean = _capture(netns)
    assert len(datagrams) > 2  # a multi-part dump: what NLM_F_DUMP_INTR is about
    replay = Replay(datagrams, interrupted=2)
    with nl.Netlink(nl.NETLINK_ROUTE, sock=replay) as sock:  # type: ignore[arg-type]
        replies = sock.dump(*REQUEST)
        assert sock.interrupted == 2 and replay.requests == 3
    assert replies == clean and len(_addresses(replies)) >= STABLE


def test_a_dump_interrupted_every_time_is_an_error_not_a_table(netns: str) -> None:
    datagrams, _ = _capture(netns)
    replay = Replay(datagrams, interrupted=nl.DUMP_ATTEMPTS)
    with nl.Netlink(nl.NETLINK_ROUTE, sock=replay) as sock:  # type: ignore[arg-type]
        with pytest.raises(nl.DumpInterrupted):
            sock.dump(*REQUEST)
        assert sock.interrupted == nl.DUMP_ATTEMPTS and replay.requests == nl.DUMP_ATTEMPTS


def test_under_real_churn_every_dump_returned_is_whole(netns: str) -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for verb in ("add", "del"):
                subprocess.run(["ip", "-n", netns, "address", verb, "192.0.2.1/32", "dev", "a0"],
                               capture_output=True, check=False)

    def dumps() -> tuple[list[list[str]], int]:
        seen: list[list[str]] = []
        with nl.Netlink(nl.NETLINK_ROUTE) as sock:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and (sock.interrupted == 0 or len(seen) < 20):
                try:
                    seen.append(_addresses(sock.dump(*REQUEST)))
                except nl.DumpInterrupted:  # five interruptions in a row: refused, never returned
                    continue
            return seen, sock.interrupted

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        seen, interrupted = run_in_netns(netns, dumps)
    finally:
        stop.set()
        worker.join()
    stable = {f"10.{i // 250}.{i % 250}.1" for i in range(STABLE)}
    for addresses in seen:
        assert len(addresses) == len(set(addresses)), "an address seen twice: an inconsistent dump was returned"
        assert stable <= set(addresses), "an address missing: an inconsistent dump was returned"
    print(f"{len(seen)} dumps, {interrupted} interrupted and read again")
    assert interrupted > 0, "the churn never interrupted a dump: the retry was not exercised"
