"""IPVS virtual servers and their real servers.

Two recorded forms are understood (this kernel has no IPVS, so tests use recordings):
`ipvsadm-save -n` text, and a netlink dump as JSON — a list of
`{"service": {<IPVS_SVC_ATTR_* or short lower-case names>}, "dests": [{<IPVS_DEST_ATTR_*>}]}`
(what pyroute2's `IPVS().service("dump")` / `dest("dump", service=…)` return, as dicts).
Both normalise to the dump's `NetfilterState.ipvs` entries:
`{protocol, address, port, fwmark, scheduler, persistent_s, reals: [{address, port, forward, weight}]}`.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path
from typing import Any

from services.collector.reader import commands

FORWARD_METHODS = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}
FORWARD_FLAGS = {"-m": "masq", "--masquerading": "masq", "-g": "route", "--gatewaying": "route",
                 "-i": "tunnel", "--ipip": "tunnel"}
PROTOCOL_FLAGS = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                  "--sctp-service": "sctp", "-f": "fwmark", "--fwmark-service": "fwmark"}
PROTOCOL_NUMBERS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 132: "sctp"}


def _split_hostport(value: str) -> tuple[str, int]:
    if value.startswith("["):  # [fd00::1]:80
        host, _, port = value[1:].partition("]:")
        return host, int(port or 0)
    host, _, port = value.rpartition(":")
    return host, int(port)


def _service_key(args: list[str]) -> tuple[str, str] | None:
    for i, arg in enumerate(args[:-1]):
        if arg in PROTOCOL_FLAGS:
            return PROTOCOL_FLAGS[arg], args[i + 1]
    return None


def parse_ipvsadm_save(text: str) -> list[dict[str, Any]]:
    services: dict[tuple[str, str], dict[str, Any]] = {}
    for line in text.splitlines():
        args = shlex.split(line)
        if not args or args[0] not in ("-A", "--add-service", "-a", "--add-server"):
            continue
        key = _service_key(args)
        if key is None:
            raise ValueError(f"ipvsadm-save line without a service: {line!r}")
        protocol, target = key
        if args[0] in ("-A", "--add-service"):
            entry: dict[str, Any] = {"protocol": protocol, "address": None, "port": None, "fwmark": None,
                                     "scheduler": "wlc", "persistent_s": None, "reals": []}
            if protocol == "fwmark":
                entry["fwmark"] = int(target, 0)
            else:
                entry["address"], entry["port"] = _split_hostport(target)
            for i, arg in enumerate(args):
                if arg in ("-s", "--scheduler") and i + 1 < len(args):
                    entry["scheduler"] = args[i + 1]
                elif arg in ("-p", "--persistent"):
                    nxt = args[i + 1] if i + 1 < len(args) else ""
                    entry["persistent_s"] = int(nxt) if nxt.isdigit() else 300
            services[key] = entry
            continue
        service = services.get(key)
        if service is None:
            raise ValueError(f"real server before its virtual server: {line!r}")
        real: dict[str, Any] = {"address": None, "port": None, "forward": "route", "weight": 1}
        for i, arg in enumerate(args):
            if arg in ("-r", "--real-server"):
                real["address"], real["port"] = _split_hostport(args[i + 1])
            elif arg in FORWARD_FLAGS:
                real["forward"] = FORWARD_FLAGS[arg]
            elif arg in ("-w", "--weight"):
                real["weight"] = int(args[i + 1])
        service["reals"].append(real)
    return list(services.values())


def _short(attrs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix).lower(): v for k, v in attrs.items()}


def parse_netlink_dump(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for entry in entries:
        svc = _short(entry["service"], "IPVS_SVC_ATTR_")
        fwmark = svc.get("fwmark") or None
        timeout = svc.get("timeout") or 0
        flags = svc.get("flags") or {}
        persistent = isinstance(flags, dict) and bool(flags.get("flags", 0) & 0x1)  # IP_VS_SVC_F_PERSISTENT
        result.append({
            "protocol": "fwmark" if fwmark else PROTOCOL_NUMBERS.get(svc.get("protocol", 0), str(svc.get("protocol"))),
            "address": None if fwmark else svc.get("addr"), "port": None if fwmark else svc.get("port"),
            "fwmark": fwmark, "scheduler": svc.get("sched_name", "wlc"),
            "persistent_s": timeout if persistent or (timeout and not isinstance(flags, dict)) else None,
            "reals": [{"address": d.get("addr"), "port": d.get("port"),
                       "forward": FORWARD_METHODS.get(d.get("fwd_method", 0) & 0x7, "masq"),
                       "weight": d.get("weight", 1)}
                      for d in (_short(x, "IPVS_DEST_ATTR_") for x in entry.get("dests", []))],
        })
    return result


def read_ipvs() -> list[dict[str, Any]]:
    """Live IPVS of the calling thread's namespace; empty when the kernel has none."""
    if not Path("/proc/thread-self/net/ip_vs").exists() or not commands.available("ipvsadm-save"):
        return []
    return parse_ipvsadm_save(commands.run(["ipvsadm-save", "-n"]))
