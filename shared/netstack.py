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


BRIDGE_PORT_STATES = ("disabled", "listening", "learning", "forwarding", "blocking")  # BR_STATE_* 0..4


class BridgePort(BaseModel):
    """IFLA_PROTINFO / IFLA_BRPORT_*: only a `forwarding` port passes frames (br_forward.c should_deliver,
    br_input.c br_handle_frame)."""

    state: str = "forwarding"
    learning: bool = True
    flooding: bool = True  # unicast flood to unknown destinations


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
    bridge_port: BridgePort | None = Field(
        None, description="a bridge port's STP state and flags; null on a port: not read (older agent)")
    vlan_filtering: bool | None = Field(None, description="a bridge's VLAN filtering; null: not read / not a bridge")
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


class TcQdisc(BaseModel):
    dev: str
    kind: str  # noqueue, pfifo_fast, mq, fq_codel, htb, tbf, blackhole, clsact, ingress …
    handle: str  # iproute2 form, "8001:" / "1:20"
    parent: str  # "root", "ingress" (clsact/ingress), or the parent class handle ("1:20")
    options: dict[str, Any] = Field(default_factory=dict, description="decoded where the walk needs it "
                                    "(htb: default class)")


class TcAction(BaseModel):
    kind: str  # gact, police, mirred, bpf …
    control: list[str] = Field(default_factory=list, description="control actions in order (gact: the verdict; "
                               "police: exceed, then conform)")
    options: dict[str, Any] = Field(default_factory=dict)


class TcFilter(BaseModel):
    dev: str
    parent: str  # "ingress" / "egress" (clsact/ingress qdisc) or the qdisc handle it hangs on ("1:")
    kind: str  # u32, bpf, matchall, flower, basic …
    protocol: str = "all"  # ip, ipv6, all, 802.1q …
    pref: int = 0
    chain: int = 0
    handle: str | None = None
    classid: str | None = None  # flowid / classid the filter assigns
    keys: list[dict[str, Any]] = Field(default_factory=list, description="u32: {value, mask, off, offmask} "
                                       "(32-bit words, hex, offsets from the network header)")
    link: str | None = None  # u32 hash-table link (not evaluated)
    actions: list[TcAction] = Field(default_factory=list)
    bpf: dict[str, Any] | None = None  # bpf filter: {id, name, direct_action}
    options: dict[str, Any] = Field(default_factory=dict, description="the rest of `tc -j` options, verbatim")


class TcState(BaseModel):
    qdiscs: list[TcQdisc] = Field(default_factory=list)
    filters: list[TcFilter] = Field(default_factory=list)


class XdpProgram(BaseModel):
    dev: str
    mode: str  # driver, generic (skb), offload, multi
    prog_id: int
    name: str | None = None
    constant: int | None = Field(None, description="the XDP action when the program only returns a constant "
                                 "(xlated `r0 = K; exit`): 0 aborted, 1 drop, 2 pass, 3 tx, 4 redirect")


class CgroupProgram(BaseModel):
    cgroup: str  # path in the cgroup2 hierarchy: '/' is the root, pods live under …kubepods…
    attach_type: str  # ingress, egress (cgroup_skb), connect4, sendmsg4, sock_create … (bpftool names)
    prog_id: int
    name: str | None = None


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
    tc: TcState | None = Field(None, description="tc qdiscs and filters; null: not read (older agent)")
    xdp: list[XdpProgram] | None = Field(None, description="XDP programs on links; null: not read (older agent)")
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
    cgroup_bpf: list[CgroupProgram] | None = Field(
        None, description="BPF programs attached to cgroups (node-wide); null: not read (older agent, no bpftool)")
    errors: list[str] = Field(default_factory=list)


def encode_dump(dump: NodeDump) -> bytes:
    """The object-store form of a dump: gzip-compressed JSON (dumps reach MBs)."""
    return gzip.compress(dump.model_dump_json(exclude_none=True).encode(), compresslevel=6)


def decode_dump(data: bytes) -> NodeDump:
    """Read a dump blob (gzip) or a plain `nodes/<node>.json` file's bytes."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return NodeDump.model_validate_json(data)
