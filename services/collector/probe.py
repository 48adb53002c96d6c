"""The live probe: a real TCP connect or UDP exchange from the source's own network namespace.

Only sources this agent owns are probed — an address of its node's host namespace or of one of
its pod namespaces (found by address, as a collection finds them). The source port comes from the
reserved range (shared.live.PROBE_PORTS), which the drop tracer filters on; the timeout is at most
5 s; a token bucket and a concurrency cap bound what one node does. The socket is made in a
thread switched into the namespace and then driven from asyncio (it stays in its namespace).

Outcomes as the kernel reports them: TCP connected / refused (RST, or ICMP port unreachable) /
unreachable (an ICMP error or a local routing error: errno, and the ICMP type/code when the
kernel queued one — IP_RECVERR) / timeout; UDP reply / refused / unreachable / no_reply.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from services.collector.reader import netns, node_namespaces
from shared.config import Settings
from shared.live import MAX_PROBE_TIMEOUT_S, PROBE_PORTS, ProbeReply, ProbeRequest

IP_RECVERR, IPV6_RECVERR = 11, 25
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # sock_extended_err: errno, origin, type, code, pad, info, data
# a DNS query for a name that cannot exist: a well-formed datagram for DNS servers and echo listeners alike
_QUERY = b"\x4e\x44\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
    bytes([len(p)]) + p.encode() for p in ("probe", "netdiag", "invalid")) + b"\x00\x00\x01\x00\x01"


NAMESPACES_MAX_AGE_S = 5.0


def _same_namespace(ref: netns.NetnsRef) -> bool:
    """The cached path still leads to that namespace (a pod's process may have exited since)."""
    try:
        return os.stat(ref.path).st_ino == ref.inode
    except OSError:
        return False


@dataclass(frozen=True)
class ProbeLimits:
    rate_per_s: float = 5.0
    burst: int = 10
    concurrency: int = 4

    @classmethod
    def of(cls, settings: Settings) -> ProbeLimits:
        return cls(settings.probe_rate_per_s, max(2, int(settings.probe_rate_per_s * 2)), settings.probe_concurrency)


class Refused(Exception):
    """The agent will not run this probe (not its source, rate limit, busy)."""


class Prober:
    def __init__(self, node: str, netns_name: str | None = None, limits: ProbeLimits | None = None,
                 ports: tuple[int, int] = PROBE_PORTS) -> None:
        self.node = node
        self.netns_name = netns_name
        self.limits = limits or ProbeLimits()
        self.ports = ports
        self._next_port = ports[0]
        self._tokens = float(self.limits.burst)
        self._refilled = time.monotonic()
        self._running = 0
        self._namespaces: tuple[float, list[tuple[str, netns.NetnsRef, set[str]]]] | None = None

    async def namespaces(self, max_age_s: float = NAMESPACES_MAX_AGE_S) -> list[tuple[str, netns.NetnsRef, set[str]]]:
        """This node's host and pod namespaces with their addresses, re-read when older than max_age_s
        (a scan costs ~1 ms per pod namespace; a probe and its drops query both need it)."""
        if self._namespaces is None or time.monotonic() - self._namespaces[0] > max_age_s:
            self._namespaces = (time.monotonic(), await asyncio.to_thread(node_namespaces, self.netns_name))
        return self._namespaces[1]

    def _admit(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.limits.burst, self._tokens + (now - self._refilled) * self.limits.rate_per_s)
        self._refilled = now
        if self._running >= self.limits.concurrency:
            raise Refused(f"busy: {self._running} probes already running on {self.node} (cap "
                          f"{self.limits.concurrency})")
        if self._tokens < 1:
            raise Refused(f"rate limited: at most {self.limits.rate_per_s:g} probes per second on {self.node} "
                          f"(burst {self.limits.burst})")
        self._tokens -= 1

    async def probe(self, req: ProbeRequest) -> ProbeReply:
        if req.node != self.node:
            return ProbeReply(node=self.node, ok=False, error=f"this agent serves node {self.node!r}, not "
                              f"{req.node!r}")
        if req.timeout_s > MAX_PROBE_TIMEOUT_S:
            return ProbeReply(node=self.node, ok=False, error=f"timeout above {MAX_PROBE_TIMEOUT_S}s")
        try:
            self._admit()
        except Refused as exc:
            return ProbeReply(node=self.node, ok=False, error=f"refused: {exc}")
        self._running += 1
        try:
            found = await self._locate(str(req.src))
            if found is None:
                return ProbeReply(node=self.node, ok=False, error=f"refused: {req.src} is neither an address of "
                                  f"node {self.node} nor of one of its pods; an agent probes only from its own node")
            ns_id, ref = found
            return await self._run(req, ns_id, ref)
        finally:
            self._running -= 1

    async def _locate(self, src: str) -> tuple[str, netns.NetnsRef] | None:
        """The namespace holding src: from the recent scan, else a fresh one (a pod that just started)."""
        for max_age in (NAMESPACES_MAX_AGE_S, 0.0):
            for ns_id, ref, addresses in await self.namespaces(max_age):
                if src in addresses and ref.path and _same_namespace(ref):
                    return ns_id, ref
        return None

    def _socket(self, req: ProbeRequest) -> tuple[socket.socket, int]:
        """Inside the source namespace: a socket bound to src and the next free reserved port."""
        family = socket.AF_INET6 if req.src.version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if req.protocol == "tcp" else socket.SOCK_DGRAM
        span = self.ports[1] - self.ports[0] + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = self.ports[0] + (port + 1 - self.ports[0]) % span
            sock = socket.socket(family, kind)
            try:
                sock.bind((str(req.src), port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            if kind == socket.SOCK_STREAM:  # close with RST: no TIME_WAIT holding the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.setblocking(False)
            return sock, port
        raise Refused(f"every probe source port {self.ports[0]}-{self.ports[1]} is in use")

    async def _run(self, req: ProbeRequest, ns_id: str, ref: netns.NetnsRef) -> ProbeReply:
        try:
            sock, port = await asyncio.to_thread(netns.run_in, ref, lambda: self._socket(req))
        except Refused as exc:
            return ProbeReply(node=self.node, ok=False, error=f"refused: {exc}")
        reply = ProbeReply(node=self.node, ok=True, src=str(req.src), sport=port, netns=ns_id,
                           started_at=time.time())
        started = time.perf_counter()
        dst = (str(req.dst), req.port)
        try:
            with sock:
                if req.protocol == "tcp":
                    await self._tcp(sock, dst, req.timeout_s, reply)
                else:
                    await self._udp(sock, dst, req.timeout_s, reply)
        finally:
            reply.elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return reply

    async def _tcp(self, sock: socket.socket, dst: tuple[str, int], timeout: float, reply: ProbeReply) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, dst), timeout)
        except TimeoutError:
            reply.outcome, reply.detail = "timeout", f"no answer to the SYN within {timeout:g}s"
        except OSError as exc:
            _error(sock, exc, reply)
        else:
            reply.outcome, reply.detail = "connected", f"connected {sock.getsockname()[0]}:{reply.sport} → " \
                                                       f"{dst[0]}:{dst[1]}"

    async def _udp(self, sock: socket.socket, dst: tuple[str, int], timeout: float, reply: ProbeReply) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock.connect(dst)
            await loop.sock_sendall(sock, _QUERY)
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        except TimeoutError:
            reply.outcome, reply.detail = "no_reply", f"no datagram back within {timeout:g}s"
        except OSError as exc:
            _error(sock, exc, reply)
        else:
            reply.outcome, reply.detail = "reply", f"{len(data)} bytes back from {dst[0]}:{dst[1]}"


def _error(sock: socket.socket, exc: OSError, reply: ProbeReply) -> None:
    code = exc.errno or 0
    reply.errno = errno.errorcode.get(code, str(code))
    reply.outcome = "refused" if code == errno.ECONNREFUSED else "timeout" if code == errno.ETIMEDOUT \
        else "unreachable"
    reply.icmp = _icmp(sock)
    icmp = f", ICMP type {reply.icmp['type']} code {reply.icmp['code']}" if reply.icmp else ""
    reply.detail = f"{reply.errno} ({exc.strerror}){icmp}"


def _icmp(sock: socket.socket) -> dict[str, int] | None:
    """The ICMP error the kernel queued for this socket (IP_RECVERR), if any."""
    try:
        _, ancdata, _, _ = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)) and \
                len(data) >= _EXTENDED_ERR.size:
            _, origin, icmp_type, icmp_code, *_ = _EXTENDED_ERR.unpack_from(data)
            if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                return {"type": icmp_type, "code": icmp_code}
    return None
