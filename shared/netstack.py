"""The node agent's dump format (versioned): one node's network state, per namespace.

This is the contract between the collector (producer) and the simulator (consumer), and
the on-disk format of `<snapshot>/nodes/<node>.json`. Documented in docs/node-dump.md.
Fields are additive: a consumer must tolerate fields it does not know.
"""

from __future__ import annotations

import gzip
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

NODE_DUMP_VERSION = 1


class Link(BaseModel):
    index: int
    name: str
    kind: str = "device"  # veth, bridge, vxlan, ipip, loopback, device …
    state: str = "UNKNOWN"  # operstate: UP, DOWN, LOWERLAYERDOWN, UNKNOWN
    admin_up: bool = True
    mtu: int = 1500
    mac: str | None = None
    master: str | None = None  # bridge (or other master) name
    peer_index: int | None = None  # veth peer ifindex
    peer_netns: str | None = Field(None, description="namespace id (see NetnsDump.id) of the veth peer")
    peer_name: str | None = None
    peer_missing: bool = False
    vxlan: dict[str, Any] | None = None  # id, port, local, dev, learning
    tunnel: dict[str, Any] | None = None  # ipip/gre: local, remote, dev
    hairpin: bool | None = None  # bridge port flag
    addresses: list[str] = Field(default_factory=list, description="CIDR form, e.g. 10.244.1.1/24")


class Route(BaseModel):
    table: int = 254
    family: int = 4
    type: str = "unicast"  # unicast, local, broadcast, blackhole, unreachable, prohibit, throw, multicast
    dst: str = "default"  # CIDR or 'default'
    dev: str | None = None
    gateway: str | None = None
    prefsrc: str | None = None
    metric: int = 0
    scope: str = "universe"
    protocol: str = "boot"
    onlink: bool = False
    tos: int = 0
    multipath: list[dict[str, Any]] = Field(default_factory=list, description="[{gateway, dev, weight, onlink}]")


class Rule(BaseModel):
    priority: int
    family: int = 4
    action: str = "lookup"  # lookup, goto, blackhole, unreachable, prohibit, nop
    table: int | None = None
    goto: int | None = None
    src: str | None = None  # CIDR
    dst: str | None = None
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    tos: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None


class Neighbor(BaseModel):
    dst: str
    dev: str
    lladdr: str | None = None
    state: str = "REACHABLE"  # PERMANENT, REACHABLE, STALE, FAILED, INCOMPLETE, NOARP …


class FdbEntry(BaseModel):
    mac: str
    dev: str
    dst: str | None = None  # remote VTEP for vxlan entries
    master: str | None = None
    vlan: int | None = None
    state: str | None = None


class Socket(BaseModel):
    protocol: str  # tcp, udp
    address: str  # bound address ('0.0.0.0' / '::' for wildcard)
    port: int
    state: str = "LISTEN"


class IptablesState(BaseModel):
    backend: str  # legacy, nft
    save: str  # `iptables-<backend>-save` output, verbatim
    has_rules: bool = False


class NetfilterState(BaseModel):
    iptables: list[IptablesState] = Field(default_factory=list)
    ip6tables: list[IptablesState] = Field(default_factory=list)
    mixed_backends: bool = False
    nft_ruleset: dict[str, Any] | None = None  # `nft -j list ruleset`
    nft_tables_via_iptables: list[str] = Field(
        default_factory=list,
        description="nft tables ('ip filter', 'ip6 nat' …) left out of nft_ruleset because iptables-nft "
        "owns them: their rules are in the iptables/ip6tables nft-backend save text",
    )
    ipsets: str | None = None  # `ipset save` output
    ipvs: list[dict[str, Any]] = Field(default_factory=list)  # virtual servers with real servers


class NetnsDump(BaseModel):
    id: str = Field(description="stable id within the dump: 'host' or 'netns:<inode>'")
    inode: int | None = None
    names: list[str] = Field(default_factory=list, description="names under /var/run/netns, if any")
    pod: str | None = Field(None, description="namespace/name of the pod this netns belongs to")
    links: list[Link] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    neighbors: list[Neighbor] = Field(default_factory=list)
    fdb: list[FdbEntry] = Field(default_factory=list)
    sysctls: dict[str, str] = Field(default_factory=dict, description="path under net/ → value")
    netfilter: NetfilterState = Field(default_factory=NetfilterState)
    sockets: list[Socket] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict, description="e.g. TcpExt.IPReversePathFilter")
    errors: list[str] = Field(default_factory=list, description="what could not be read, and why")


class NodeFacts(BaseModel):
    kernel: str | None = None
    os: str | None = None
    load: list[float] = Field(default_factory=list)
    container_runtime: str | None = None
    kubelet: str | None = None


class NodeDump(BaseModel):
    version: int = NODE_DUMP_VERSION
    node: str
    collected_at: datetime
    duration_ms: float = 0.0
    facts: NodeFacts = Field(default_factory=NodeFacts)
    host: NetnsDump
    pods: list[NetnsDump] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


def encode_dump(dump: NodeDump) -> bytes:
    """The object-store form of a dump: gzip-compressed JSON (dumps reach MBs)."""
    return gzip.compress(dump.model_dump_json(exclude_none=True).encode(), compresslevel=6)


def decode_dump(data: bytes) -> NodeDump:
    """Read a dump blob (gzip) or a plain `nodes/<node>.json` file's bytes."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return NodeDump.model_validate_json(data)
