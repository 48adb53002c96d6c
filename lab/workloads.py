"""Workload processes of the lab: one process per pod (and one for the internet host), each living in its
pod's network namespace and serving every port the pod really listens on.

TCP and UDP ports echo what they receive; the cluster DNS pod answers real DNS on port 53 (dnslib).
`spawn()` runs `python -m lab.workloads` once: that helper forks one child per workload (each child setns's
itself into its namespace, binds, reports readiness over a pipe, detaches), prints the PIDs and exits, so
the listeners outlive `lab up` and are tracked by PID in the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from lab import netns

CLUSTER_DOMAIN = "cluster.local"


@dataclass
class Workload:
    key: str  # "ns/pod", or "inet"
    netns: str
    listen: list[tuple[int, str]]  # (port, "TCP"|"UDP")
    dns: dict[str, list[str]] | None = None  # name -> A records; set for the cluster DNS pod
    tags: dict[str, str] = field(default_factory=dict)


def spawn(workloads: list[Workload]) -> dict[str, int]:
    """Start every workload; returns key -> PID once all of them are listening."""
    if not workloads:
        return {}
    payload = json.dumps([asdict(w) for w in workloads])
    proc = subprocess.run([sys.executable, "-m", "lab.workloads"], input=payload, capture_output=True,
                          text=True, check=False, cwd=_repo_root())
    if proc.returncode != 0:
        raise RuntimeError(f"workload spawner failed: {proc.stderr.strip()}")
    return {k: int(v) for k, v in json.loads(proc.stdout).items()}


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ inside the child


def _bind(listen: list[tuple[int, str]]) -> list[socket.socket]:
    socks = []
    for port, proto in listen:
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        if proto == "TCP":
            s.listen(128)
        s.setblocking(False)
        socks.append(s)
    return socks


def dns_answer(query: bytes, records: dict[str, list[str]]) -> bytes | None:
    try:
        request = DNSRecord.parse(query)
    except Exception:  # garbage is not DNS: a real server ignores it
        return None
    reply = request.reply()
    name = str(request.q.qname).rstrip(".").lower()
    addresses = records.get(name)
    if addresses is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
        for address in addresses:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=30))
    return reply.pack()


def _serve(socks: list[socket.socket], dns: dict[str, list[str]] | None) -> None:
    sel = selectors.DefaultSelector()
    for s in socks:
        is_dns = dns is not None and s.getsockname()[1] == 53
        sel.register(s, selectors.EVENT_READ, ("listen" if s.type == socket.SOCK_STREAM else "udp", is_dns))
    buffers: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]  # only sockets are registered
            role, is_dns = key.data
            try:
                if role == "listen":
                    conn, _ = sock.accept()
                    conn.settimeout(1.0)
                    sel.register(conn, selectors.EVENT_READ, ("conn", is_dns))
                elif role == "udp":
                    data, peer = sock.recvfrom(65535)
                    out = dns_answer(data, dns or {}) if is_dns else data
                    if out:
                        sock.sendto(out, peer)
                else:
                    data = sock.recv(65535)
                    if not data:
                        raise ConnectionResetError
                    if not is_dns:
                        sock.sendall(data)
                        continue
                    buf = buffers.get(sock, b"") + data
                    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        size = int.from_bytes(buf[:2], "big")
                        out = dns_answer(buf[2:2 + size], dns or {})
                        buf = buf[2 + size:]
                        if out:
                            sock.sendall(len(out).to_bytes(2, "big") + out)
                    buffers[sock] = buf
            except OSError:
                if role == "conn":
                    sel.unregister(sock)
                    buffers.pop(sock, None)
                    sock.close()


def _child(w: Workload, ready_fd: int) -> None:
    """Runs in the forked child: never returns."""
    code = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        netns.enter(w.netns)  # the child is single-threaded, so this moves the whole process
        socks = _bind(w.listen)
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        _serve(socks, w.dns)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(ready_fd, f"{w.key}: {exc!r}".encode())
        code = 1
    os._exit(code)


def main() -> None:
    workloads = [Workload(**{**w, "listen": [tuple(x) for x in w["listen"]]}) for w in json.load(sys.stdin)]
    pids: dict[str, int] = {}
    pipes: dict[str, int] = {}
    errors = []
    for w in workloads:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for other in pipes.values():
                os.close(other)
            _child(w, write_fd)
        os.close(write_fd)
        pids[w.key], pipes[w.key] = pid, read_fd
    for key, fd in pipes.items():
        answer = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        if answer != "ok":
            errors.append(answer or f"{key}: exited before listening")
    if errors:
        netns.kill_pids(pids.values(), grace_s=0.2)
        print("; ".join(errors), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(pids))


if __name__ == "__main__":
    main()
