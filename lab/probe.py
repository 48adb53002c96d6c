"""Real probes: a socket opened inside the source namespace; the kernel decides the outcome.

TCP: a non-blocking connect() → connected / refused (RST or ICMP port unreachable) / unreachable (ICMP
host/net unreachable, a local route or OUTPUT verdict: errno says which) / timeout (silently dropped).
UDP: a *connected* socket sends one datagram and waits for the echo → reply / refused (ICMP port
unreachable surfaces as ECONNREFUSED) / unreachable / no_reply. The default UDP payload is a well-formed
DNS query, so the same probe works against the echo listeners and the cluster DNS.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time
from typing import Literal

from dnslib import DNSRecord
from pydantic import BaseModel, Field

from lab import netns

Outcome = Literal["connected", "refused", "timeout", "unreachable", "reply", "no_reply"]
DEFAULT_QUERY = "probe.netdiag.invalid"


class ProbeResult(BaseModel):
    outcome: Outcome
    errno: str | None = Field(None, description="errno name when the kernel returned an error, e.g. ECONNREFUSED")
    detail: str = ""
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.outcome in ("connected", "reply")


def _classify(code: int) -> Outcome:
    if code == errno.ECONNREFUSED:
        return "refused"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "unreachable"


def _error(code: int, started: float, what: str) -> ProbeResult:
    return ProbeResult(outcome=_classify(code), errno=errno.errorcode.get(code, str(code)),
                       detail=f"{what}: {errno.errorcode.get(code, code)} ({os.strerror(code)})",
                       elapsed_ms=(time.monotonic() - started) * 1000)


def _dns_summary(data: bytes) -> str:
    try:
        record = DNSRecord.parse(data)
    except Exception:
        return f"{len(data)} bytes"
    answers = ",".join(str(rr.rdata) for rr in record.rr)
    return f"dns rcode={record.header.rcode} answers=[{answers}]"


def _tcp(dst: str, port: int, timeout: float, dns_name: str | None) -> ProbeResult:
    started = time.monotonic()
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        code = s.connect_ex((dst, port))
        if code not in (0, errno.EINPROGRESS):
            return _error(code, started, "connect")
        _, writable, _ = select.select([], [s], [], timeout)
        if not writable:
            return ProbeResult(outcome="timeout", detail=f"no answer to SYN within {timeout}s",
                               elapsed_ms=(time.monotonic() - started) * 1000)
        code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return _error(code, started, "connect")
        detail = f"connected from {s.getsockname()[0]}:{s.getsockname()[1]}"
        if dns_name:
            s.settimeout(max(timeout - (time.monotonic() - started), 0.05))
            query = DNSRecord.question(dns_name).pack()
            try:
                s.sendall(len(query).to_bytes(2, "big") + query)
                answer = s.recv(65535)
                detail += "; " + (_dns_summary(answer[2:]) if answer else "connection closed without answer")
            except OSError as exc:
                detail += f"; no DNS answer ({exc})"
        return ProbeResult(outcome="connected", detail=detail, elapsed_ms=(time.monotonic() - started) * 1000)


def _udp(dst: str, port: int, timeout: float, dns_name: str | None) -> ProbeResult:
    started = time.monotonic()
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
            s.send(DNSRecord.question(dns_name or DEFAULT_QUERY).pack())
            data = s.recv(65535)
        except TimeoutError:
            return ProbeResult(outcome="no_reply", detail=f"no datagram back within {timeout}s",
                               elapsed_ms=(time.monotonic() - started) * 1000)
        except OSError as exc:
            return _error(exc.errno or 0, started, "udp")
        return ProbeResult(outcome="reply", detail=_dns_summary(data),
                           elapsed_ms=(time.monotonic() - started) * 1000)


def probe_in(netns_name: str, dst: str, port: int, protocol: str = "tcp", timeout: float = 1.0,
             dns_name: str | None = None) -> ProbeResult:
    """Probe dst:port from inside the named network namespace."""
    proto = protocol.lower()
    if proto not in ("tcp", "udp"):
        raise ValueError(f"protocol must be tcp or udp, not {protocol!r}")
    ipaddress.ip_address(dst)  # a clear error before entering the namespace
    fn = _tcp if proto == "tcp" else _udp
    return netns.call_in(netns_name, lambda: fn(dst, port, timeout, dns_name))
