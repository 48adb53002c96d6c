"""Listening sockets of the calling thread's namespace over sock_diag (pyroute2 DiagSocket):
TCP sockets in LISTEN and UDP sockets bound to a local port but not connected."""

from __future__ import annotations

import socket

from pyroute2 import DiagSocket
from pyroute2.netlink.diag import SS_ALL, SS_LISTEN

from shared.netstack import Socket


def read_sockets() -> list[Socket]:
    found: set[tuple[str, str, int]] = set()
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ds.get_sock_stats(family=family, protocol=socket.IPPROTO_TCP, states=1 << SS_LISTEN):
                found.add(("tcp", msg["idiag_src"], msg["idiag_sport"]))
            for msg in ds.get_sock_stats(family=family, protocol=socket.IPPROTO_UDP, states=SS_ALL):
                if msg["idiag_dport"] == 0:  # unconnected: it receives datagrams from anyone
                    found.add(("udp", msg["idiag_src"], msg["idiag_sport"]))
    return [Socket(protocol=p, address=a, port=port, state="LISTEN" if p == "tcp" else "UNCONN")
            for p, a, port in sorted(found)]
