"""Listening sockets of the calling thread's namespace over sock_diag (linux/inet_diag.h):
TCP sockets in LISTEN and UDP sockets bound to a local port but not connected."""

from __future__ import annotations

import socket
import struct

from services.collector.reader import netlink as nl
from shared.netstack import Socket

SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid (48 bytes)
_REQUEST = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid: sport, dport (big-endian), src
_PORTS = struct.Struct(">HH")
_ADDR_LEN: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _dump(sock: nl.Netlink, family: int, protocol: int, states: int) -> list[tuple[str, int, int]]:
    """(local address, local port, remote port) of each socket in `states` (a bit per state)."""
    found = []
    for _, body in sock.dump(SOCK_DIAG_BY_FAMILY, _REQUEST.pack(family, protocol, 0, states)):
        sport, dport = _PORTS.unpack_from(body, 4)
        address = socket.inet_ntop(family, body[8:8 + _ADDR_LEN[family]])
        found.append((address, sport, dport))
    return found


def read_sockets() -> list[Socket]:
    found: set[tuple[str, str, int]] = set()
    with nl.Netlink(nl.NETLINK_SOCK_DIAG) as sock:
        for family in (socket.AF_INET, socket.AF_INET6):
            for address, port, _ in _dump(sock, family, socket.IPPROTO_TCP, 1 << TCP_LISTEN):
                found.add(("tcp", address, port))
            for address, port, remote in _dump(sock, family, socket.IPPROTO_UDP, ALL_STATES):
                if remote == 0:  # unconnected: it receives datagrams from anyone
                    found.add(("udp", address, port))
    return [Socket(protocol=p, address=a, port=port, state="LISTEN" if p == "tcp" else "UNCONN")
            for p, a, port in sorted(found)]
