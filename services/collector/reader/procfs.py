"""Sysctls and protocol counters of the calling thread's network namespace.

/proc/sys/net and /proc/thread-self/net follow the thread's setns (checked on this
kernel); /proc/self/net would show the thread group leader's namespace instead.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSCTL_ROOT = Path("/proc/sys/net")
# global switches that decide forwarding; per-device ones are read for every link
GLOBAL_SYSCTLS = ("ipv4/ip_forward", "ipv4/conf/all/forwarding", "ipv4/conf/all/rp_filter",
                  "ipv4/conf/default/rp_filter", "ipv4/conf/all/route_localnet", "ipv4/conf/all/accept_local",
                  "ipv4/conf/all/proxy_arp",
                  "ipv6/conf/all/forwarding", "bridge/bridge-nf-call-iptables", "bridge/bridge-nf-call-ip6tables",
                  "bridge/bridge-nf-call-arptables", "ipv4/ip_local_port_range", "netfilter/nf_conntrack_max")
DEVICE_SYSCTLS = ("forwarding", "rp_filter", "route_localnet", "proxy_arp", "accept_local")
COUNTER_FILES = ("netstat", "snmp")


def _read(path: str) -> str | None:
    try:  # plain fd calls: a node dump reads ~2,000 of these small files
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # not in this kernel, or the device went away mid-read
        return None
    try:
        return " ".join(os.read(fd, 4096).decode().split())
    except OSError:
        return None
    finally:
        os.close(fd)


def read_sysctls(devices: list[str]) -> dict[str, str]:
    """path under net/ → value, e.g. {'ipv4/conf/cni0/rp_filter': '2'}; missing keys are absent."""
    values: dict[str, str] = {}
    keys = list(GLOBAL_SYSCTLS)
    keys += [f"ipv4/conf/{dev}/{name}" for dev in devices for name in DEVICE_SYSCTLS]
    for key in keys:
        value = _read(f"{SYSCTL_ROOT}/{key}")
        if value is not None:
            values[key] = value
    return values


def parse_counters(text: str) -> dict[str, int]:
    """`/proc/net/netstat`-style header/value line pairs → {'TcpExt.IPReversePathFilter': n}."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        group, _, names = header.partition(":")
        vgroup, _, numbers = values.partition(":")
        if group != vgroup:
            continue
        for name, number in zip(names.split(), numbers.split(), strict=False):
            try:
                value = int(number)
            except ValueError:
                continue
            if value:  # zero counters are left out: absent means 0
                counters[f"{group}.{name}"] = value
    return counters


def read_counters() -> dict[str, int]:
    counters: dict[str, int] = {}
    for name in COUNTER_FILES:
        text = _read_raw(Path("/proc/thread-self/net") / name)
        if text:
            counters.update(parse_counters(text))
    return counters


def _read_raw(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
