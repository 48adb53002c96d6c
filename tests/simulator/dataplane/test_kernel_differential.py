"""The kernel is the judge: the tracer's verdict equals a real probe's outcome.

A client and a server namespace joined by a veth; iptables rules are loaded into the server with
the nft or the legacy backend, read back with that backend's `-save` (as the collector does), traced,
and compared with a real TCP connect: ACCEPT ↔ connected, DROP ↔ timeout, REJECT ↔ refused.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.simulator.dataplane.netfilter import (
    FlowState,
    TraceContext,
    Tracer,
    parse_iptables_save,
    verdict_summary,
)

pytestmark = pytest.mark.lab
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
CLONE_NEWNET = 0x40000000


def sh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a thread switched into netns `name` (sockets it creates stay in that namespace)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    prefix = f"ndp{uuid.uuid4().hex[:6]}"
    cli, srv = f"{prefix}c", f"{prefix}s"
    listeners: list[socket.socket] = []
    try:
        for ns in (cli, srv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", cli, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv)
        for ns, ip in ((cli, CLIENT_IP), (srv, SERVER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

        def listen() -> None:
            for port in (80, 8080):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(16)
                listeners.append(s)
        in_netns(srv, listen)
        yield cli, srv
    finally:
        for s in listeners:
            s.close()
        for ns in (cli, srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def probe(cli: str, port: int) -> str:
    def connect() -> str:
        s = socket.socket()
        s.settimeout(0.4)
        try:
            s.connect((SERVER_IP, port))
            return "ACCEPT"
        except ConnectionRefusedError:
            return "REJECT"
        except TimeoutError:
            return "DROP"
        finally:
            s.close()
    return in_netns(cli, connect)


CASES = {
    "input-drop": ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n", 8080),
    "input-reject": ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m multiport --dports 22,8080 -j REJECT "
                     "--reject-with tcp-reset\nCOMMIT\n", 8080),
    "negated-source-drop": (f"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! -s {CLIENT_IP}/32 -p tcp -j DROP\nCOMMIT\n",
                            8080),
    "policy-drop-after-goto": ("*filter\n:INPUT DROP [0:0]\n:CHK - [0:0]\n-A INPUT -i lo -j ACCEPT\n"
                               "-A INPUT -g CHK\n-A INPUT -j ACCEPT\n-A CHK -p tcp -j RETURN\nCOMMIT\n", 8080),
    "dnat-to-blocked-port": ("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT "
                             f"--to-destination {SERVER_IP}:8080\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n"
                             "-A INPUT -p tcp -m tcp --dport 8080 -m conntrack --ctstate DNAT -j REJECT\n"
                             "COMMIT\n", 80),
    "mark-then-drop": ("*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j MARK --set-xmark 0x4/0xff\n"
                       "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m mark ! --mark 0x4/0x4 -j ACCEPT\n"
                       "-A INPUT -m addrtype --dst-type LOCAL -p tcp --dport 8080 -j DROP\nCOMMIT\n", 8080),
    "addrtype-src-not-local-accepts": ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m addrtype --src-type LOCAL "
                                       "-j DROP\nCOMMIT\n", 8080),
}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_tracer_agrees_with_kernel(pair: tuple[str, str], backend: str) -> None:
    cli, srv = pair
    mismatches = []
    for name, (rules, port) in CASES.items():
        sh("ip", "netns", "exec", srv, f"iptables-{backend}-restore", stdin=rules)
        saved = sh("ip", "netns", "exec", srv, f"iptables-{backend}-save")
        kernel = probe(cli, port)
        ctx = TraceContext.from_strings(addresses={"eth0": [f"{SERVER_IP}/24"], "lo": ["127.0.0.1/8"]})
        st = FlowState(src=ipaddress.ip_address(CLIENT_IP), dst=ipaddress.ip_address(SERVER_IP), protocol="tcp",
                       sport=40000, dport=port, iif="eth0")
        branches = Tracer(parse_iptables_save(saved), ctx).trace_node(st)
        simulated = verdict_summary(branches)
        if simulated != kernel:
            mismatches.append(f"{name}: kernel {kernel}, tracer {simulated}\n{saved}")
    assert not mismatches, "\n".join(mismatches)
