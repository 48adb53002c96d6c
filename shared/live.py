"""Live confirmation contracts: the node agent's real probe and its kernel drop tracing, and the
`live` section of a result (the kernel's witness beside the simulation).

The simulator stage, after its walk, asks the source node's agent to probe
(`netdiag.node.<node>.probe`, request/reply) and then every agent on the path for the kernel's
drops of that flow (`netdiag.node.<node>.drops`). Each agent traces `skb:kfree_skb` continuously,
filtered in the kernel to the reserved probe source ports (PROBE_PORTS, both directions: the
source port survives DNAT), so a probe never waits for a tracer to compile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

# source ports the agents pick probes from: outside Linux's default ephemeral range (32768-60999),
# so no ordinary connection is traced or collides with a probe
PROBE_PORTS = (61000, 61999)
MAX_PROBE_TIMEOUT_S = 5.0
ProbeOutcome = Literal["connected", "refused", "timeout", "unreachable", "reply", "no_reply"]
REACHED: frozenset[str] = frozenset({"connected", "reply"})


def node_probe_subject(node: str) -> str:
    return f"netdiag.node.{node}.probe"


def node_drops_subject(node: str) -> str:
    return f"netdiag.node.{node}.drops"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TracingStatus(BaseModel):
    """Whether this agent's kernel drop tracer runs; when not, exactly why."""

    available: bool
    reason: str | None = None
    startup_ms: float | None = Field(None, description="from spawning the tracer to its probes attached")


class ProbeRequest(_Strict):
    node: str = Field(min_length=1, max_length=253)
    src: IPvAnyAddress = Field(description="an address of this node or of one of its pods")
    dst: IPvAnyAddress
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"]
    timeout_s: float = Field(2.0, gt=0, le=MAX_PROBE_TIMEOUT_S)
    diagnosis_id: str | None = Field(None, max_length=64)


class ProbeReply(BaseModel):
    node: str
    ok: bool = Field(description="the probe ran; false: refused or failed (see error)")
    error: str | None = None
    outcome: ProbeOutcome | None = None
    errno: str | None = None
    icmp: dict[str, int] | None = Field(None, description="{type, code} of the ICMP error the kernel reported")
    detail: str = ""
    src: str | None = None
    sport: int | None = None
    netns: str | None = Field(None, description="the namespace probed from: 'host' or 'netns:<inode>'")
    started_at: float | None = Field(None, description="epoch seconds")
    elapsed_ms: float = 0.0
    tracing: TracingStatus | None = None


class DropsRequest(_Strict):
    node: str = Field(min_length=1, max_length=253)
    sport: int = Field(ge=PROBE_PORTS[0], le=PROBE_PORTS[1])
    protocol: Literal["tcp", "udp"]
    since: float = Field(description="epoch seconds: the probe's start")
    until: float = Field(description="epoch seconds: the probe's end")


class DropEvent(BaseModel):
    """One `skb:kfree_skb` of the probe's flow as the kernel saw it."""

    time: float  # epoch seconds
    reason: str  # enum skb_drop_reason name (NETFILTER_DROP, TC_EGRESS …)
    reason_code: int
    location: str  # kernel symbol that freed the packet
    netns_inode: int  # 0: neither the device nor the socket named one
    device: str | None = None
    ifindex: int | None = None
    protocol: str
    src: str
    dst: str
    sport: int
    dport: int


class DropsReply(BaseModel):
    node: str
    ok: bool
    error: str | None = None
    events: list[DropEvent] = Field(default_factory=list)
    tracing: TracingStatus | None = None


class LiveDrop(DropEvent):
    node: str
    hop: str | None = Field(None, description="hop id of the namespace (pod:<ns/name> or node:<name>)")
    where: str | None = None
    codes: list[str] = Field(default_factory=list, description="finding codes this drop reason means")


Agreement = Literal["agree", "diverges", "kernel_decides", "unavailable"]


class LiveWitness(BaseModel):
    """The kernel's answer for the same flow, beside the simulation's."""

    probe: ProbeReply | None = None
    drops: list[LiveDrop] = Field(default_factory=list)
    simulated: str = Field(description="the simulation's verdict")
    kernel: str | None = Field(None, description="REACHABLE / UNREACHABLE as the probe found; null: no probe")
    agreement: Agreement
    detail: str = ""
    notes: list[str] = Field(default_factory=list, description="what limited the witness (tracing off on a node …)")
