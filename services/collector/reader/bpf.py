"""BPF programs that can decide a packet's fate outside netfilter: what each XDP / tc program is
(name, and its action when it does nothing but return a constant) and the programs attached to
cgroups (cgroup_skb ingress/egress, sock_addr connect/sendmsg … — socket-level load balancing).

Program ids are global to the machine, so this runs anywhere; `bpftool` (Debian package) reads
them (`bpftool -j prog show id N`, `prog dump xlated id N`, `cgroup tree`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.collector.reader.commands import available, run
from shared.netstack import CgroupProgram

BPFTOOL = "bpftool"
_CONSTANT = re.compile(r"^\(b7\) r0 = (-?\d+)$")  # BPF_ALU64|BPF_MOV|BPF_K into r0
# cgroup attach types that see or steer network packets/sockets (bpftool's names); device, sysctl
# and getsockopt programs never decide a packet's path
NETWORK_ATTACH = frozenset({
    "ingress", "egress", "sock_create", "sock_release", "sock_ops", "post_bind4", "post_bind6", "bind4", "bind6",
    "connect4", "connect6", "connect_unix", "getpeername4", "getpeername6", "getsockname4", "getsockname6",
    "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6", "sendmsg_unix", "recvmsg_unix", "cgroup_inet_ingress",
    "cgroup_inet_egress", "cgroup_inet_sock_create", "cgroup_sock_ops", "cgroup_inet4_connect",
    "cgroup_inet6_connect", "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg", "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg", "cgroup_inet4_bind", "cgroup_inet6_bind"})


def _json(argv: list[str]) -> Any:
    return json.loads(run([BPFTOOL, "-j", *argv]) or "null")


def program(prog_id: int) -> tuple[str | None, int | None]:
    """(name, constant return value or None) of one program."""
    info = _json(["prog", "show", "id", str(prog_id)])
    insns = _json(["prog", "dump", "xlated", "id", str(prog_id)]) or []
    text = [str(i.get("disasm", "")).strip() for i in insns if isinstance(i, dict)]
    constant = None
    if len(text) == 2 and text[1] == "(95) exit":
        m = _CONSTANT.match(text[0])
        constant = int(m.group(1)) if m else None
    return (info.get("name") if isinstance(info, dict) else None), constant


def cgroup2_mount() -> str | None:
    """Where the cgroup2 hierarchy is mounted (bpftool prints paths under it)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    return None


def relative(path: str, mount: str | None) -> str:
    """A cgroup path as the hierarchy names it: '/' is the root (its programs act on every socket)."""
    if mount and (path == mount or path.startswith(mount.rstrip("/") + "/")):
        return "/" + path[len(mount.rstrip("/")):].strip("/")
    return path


def cgroup_programs() -> list[CgroupProgram]:
    """Every network-relevant program attached anywhere in the cgroup2 hierarchy."""
    if not available(BPFTOOL):
        raise FileNotFoundError("bpftool not installed")
    mount = cgroup2_mount()
    out = []
    for group in _json(["cgroup", "tree"]) or []:
        for prog in group.get("programs", []):
            attach = str(prog.get("attach_type", "?"))
            if attach in NETWORK_ATTACH:
                out.append(CgroupProgram(cgroup=relative(str(group.get("cgroup", "?")), mount), attach_type=attach,
                                         prog_id=int(prog.get("id", 0)), name=prog.get("name")))
    return out
