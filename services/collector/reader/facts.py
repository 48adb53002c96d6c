"""Node facts the product shows: kernel, OS, load, container runtime and kubelet versions."""

from __future__ import annotations

import os
import re

from services.collector.reader import commands
from shared.netstack import NodeFacts

RUNTIMES = (["containerd", "--version"], ["crio", "--version"], ["dockerd", "--version"])
VERSION = re.compile(r"v?\d+\.\d+[\w.+~-]*")


def _os_name() -> str | None:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def _version(argv: list[str]) -> str | None:
    """'<tool> <version>' when the tool is installed; only the version word is kept."""
    if not commands.available(argv[0]):
        return None
    try:
        out = commands.run(argv, limit=64 * 1024, timeout=3)
    except commands.CommandError:
        return None
    found = VERSION.search(out)
    return f"{argv[0]} {found.group(0)}" if found else argv[0]


def read_facts() -> NodeFacts:
    runtime = next((v for v in map(_version, RUNTIMES) if v), None)
    kubelet = _version(["kubelet", "--version"])
    return NodeFacts(kernel=os.uname().release, os=_os_name(), load=[round(x, 2) for x in os.getloadavg()],
                     container_runtime=runtime, kubelet=kubelet.split(" ", 1)[-1] if kubelet else None)
