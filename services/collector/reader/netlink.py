"""A minimal netlink client: one request, its replies as (type, payload) pairs, and the
attributes (TLVs) inside them.

The reader decodes the handful of fields the dump holds with `struct` instead of pyroute2:
pyroute2 0.9 runs an asyncio loop per socket and builds an object per attribute, which cost
~7 ms of pure Python per pod namespace (its netlink reads now take well under 1 ms; see
docs/node-dump.md, "Cost"). A socket binds to the network namespace of the thread that
creates it, like every other read here.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
NETLINK_NETFILTER = 12

NLM_F_REQUEST = 0x1
NLM_F_DUMP_INTR = 0x10  # the kernel's "this dump may be inconsistent": the table changed while it was read
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
SO_NETNS_COOKIE = 71
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_RECV_BYTES = 256 * 1024
_U16, _U32, _U64, _I32, _BE16, _BE32 = (struct.Struct(f) for f in ("=H", "=I", "=Q", "=i", ">H", ">I"))

Attrs = dict[int, bytes]


DUMP_ATTEMPTS = 5  # dumps interrupted by churn are read again, like iproute2 and pyroute2 callers do


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno set)."""


class DumpInterrupted(NetlinkError):
    """A dump whose messages carried NLM_F_DUMP_INTR: the table changed between its parts, so what was
    read may mix before and after (an entry missing or seen twice)."""


def attrs(data: bytes, offset: int = 0) -> Attrs:
    """type → value of the attributes in data[offset:]; the last one wins on repeats."""
    found: Attrs = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def u8(value: bytes | None) -> int | None:
    return value[0] if value else None


def u16(value: bytes | None) -> int | None:
    return _U16.unpack(value[:2])[0] if value else None


def u32(value: bytes | None) -> int | None:
    return _U32.unpack(value[:4])[0] if value else None


def i32(value: bytes | None) -> int | None:
    return _I32.unpack(value[:4])[0] if value else None


def be16(value: bytes | None) -> int | None:
    return _BE16.unpack(value[:2])[0] if value else None


def be32(value: bytes | None) -> int | None:
    return _BE32.unpack(value[:4])[0] if value else None


def text(value: bytes | None) -> str | None:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value is not None else None


def ip(value: bytes | None) -> str | None:
    """An IPv4 or IPv6 address attribute in text form."""
    if not value:
        return None
    if len(value) == 4:
        return socket.inet_ntop(socket.AF_INET, value)
    if len(value) == 16:
        return socket.inet_ntop(socket.AF_INET6, value)
    return None


def mac(value: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in value) if value else None


class Netlink:
    """One netlink socket of `protocol` in the calling thread's namespace; close() or `with`.
    `sock` replaces the kernel socket (anything with send/recv_into/close), for replaying captured replies."""

    def __init__(self, protocol: int, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
            sock.bind((0, 0))
        self._sock = sock
        self._seq = 0
        self.interrupted = 0  # dumps read again because the kernel marked them NLM_F_DUMP_INTR
        self._buf = bytearray(_RECV_BYTES)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def netns_cookie(self) -> int | None:
        """A 64-bit id of the socket's namespace that the kernel never reuses (unlike inodes)."""
        try:
            return _U64.unpack(self._sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError:  # kernel < 5.14
            return None

    def dump(self, msg_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Every reply of a dump request, read again while the kernel marks it interrupted (at most
        DUMP_ATTEMPTS times; then DumpInterrupted: an inconsistent table is never returned as if whole)."""
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            try:
                return list(self.request(msg_type, payload))
            except DumpInterrupted:
                self.interrupted += 1
                if attempt == DUMP_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def request(self, msg_type: int, payload: bytes, *, dump: bool = True) -> Iterator[tuple[int, bytes]]:
        """Send one request; yield (type, payload) of every reply until the dump ends (dump)
        or the first reply arrives (a get). A kernel error raises NetlinkError; a dump the kernel
        marked NLM_F_DUMP_INTR raises DumpInterrupted once it is read to its end (see `dump`)."""
        self._seq += 1
        seq = self._seq
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
        self._sock.send(_HEADER.pack(_HEADER.size + len(payload), msg_type, flags, seq, 0) + payload)
        view = memoryview(self._buf)
        interrupted = False
        while True:
            size = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)  # MSG_TRUNC: the real length
            if size > len(self._buf):
                raise NetlinkError(errno.EMSGSIZE, f"netlink message of {size} bytes exceeds {len(self._buf)}")
            offset = 0
            while offset + _HEADER.size <= size:
                length, kind, flags, msg_seq, _ = _HEADER.unpack_from(self._buf, offset)
                if length < _HEADER.size:
                    return
                body = bytes(view[offset + _HEADER.size:offset + length])
                offset += (length + 3) & ~3
                if msg_seq != seq:  # a late answer to an earlier request on this socket
                    continue
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)  # also set on NLMSG_DONE
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted(errno.EINTR, "netlink dump interrupted by a concurrent change")
                    return
                if kind == NLMSG_ERROR:
                    code = -_I32.unpack_from(body)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return
                yield kind, body
                if not dump:
                    return
