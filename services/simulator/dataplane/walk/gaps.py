"""What a node agent could not read (`NetnsDump.errors`, `NodeDump.errors`), sorted by the part of
the dump it leaves unknown, so that the walk never takes an unread part for an empty one.

The agent writes each error as `<part>: <reason>` (services/collector/reader): a whole part that
failed ("netfilter: …", "sockets: …", "routes: …"), a tool that failed or is missing
("iptables-nft-save not installed", "iptables-nft-save exited 1: …", "nft: …", "ipvs: …"), or, at
node level, a namespace that could not be read ("netns netns:4026532 (/proc/7/ns/net): …").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NETFILTER = ("iptables", "ip6tables", "nftables", "ipset", "ipvs")  # all of it is read by one reader
ROUTING = ("routes", "rules")
# the first word of an error → the parts it leaves unknown
_PARTS: dict[str, tuple[str, ...]] = {
    "netfilter": NETFILTER,
    "iptables-legacy-save": ("iptables",), "iptables-nft-save": ("iptables",),
    "ip6tables-legacy-save": ("ip6tables",), "ip6tables-nft-save": ("ip6tables",),
    "nft": ("nftables",), "ipset": ("ipset",), "ipvs": ("ipvs",), "ipvsadm-save": ("ipvs",),
    "sockets": ("sockets",), "sysctls": ("sysctls",), "counters": ("counters",),
    "tc": ("tc",), "xdp": ("xdp",), "cgroup_bpf": ("cgroup_bpf",),
    "routes": ("routes",), "rules": ("rules",), "links": ("links",), "neighbors": ("neighbors",), "fdb": ("fdb",),
}
_NAMES = {"iptables": "the iptables rules", "ip6tables": "the ip6tables rules", "nftables": "the nftables ruleset",
          "ipset": "the ipsets", "ipvs": "the IPVS virtual servers", "sockets": "the listening sockets",
          "sysctls": "the sysctls", "counters": "the kernel counters", "routes": "the routes",
          "rules": "the routing policy rules", "links": "the links", "neighbors": "the neighbour table",
          "fdb": "the bridge forwarding database", "tc": "the tc qdiscs and filters",
          "xdp": "the XDP programs", "cgroup_bpf": "the cgroup BPF programs"}
# not a loss: the nf_tables probe falling back to the tools (which report their own failures), and
# node facts (kernel, load …), which the walk never reads
HARMLESS = ("nftables tables:", "facts:")
_NETNS = re.compile(r"netns (\S+) ")


def parts_of(error: str) -> tuple[str, ...]:
    """The parts an error leaves unknown; ("other",) when the error names none we know."""
    head = re.split(r"[:\s]", error.strip(), maxsplit=1)[0]
    return _PARTS.get(head, ("other",))


def harmless(error: str) -> bool:
    return error.strip().startswith(HARMLESS)


def unread(errors: Iterable[str], parts: Iterable[str]) -> list[str]:
    """The errors that leave any of `parts` unknown."""
    wanted = set(parts)
    return [e for e in errors if not harmless(e) and wanted & set(parts_of(e))]


def unreadable_namespaces(node_errors: Iterable[str]) -> dict[str, str]:
    """Namespace id → the error of each namespace the agent could not read (node-level errors)."""
    out: dict[str, str] = {}
    for e in node_errors:
        m = _NETNS.match(e.strip())
        if m:
            out.setdefault(m.group(1), e)
    return out


def label(error: str) -> str:
    """How a finding names what an error leaves unknown."""
    parts = parts_of(error)
    if parts == NETFILTER:
        return "the netfilter rules (iptables, nftables, ipsets, IPVS)"
    return " and ".join(_NAMES.get(p, "part of the network state") for p in parts)
