"""Message and API schemas: the diagnosis request, the stage envelope and the result model.

Addresses are `ipaddress` objects everywhere (pydantic's IPvAnyAddress), never 4-byte
assumptions, so dual-stack can follow.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# re-exported: contracts import these names from here
from shared.addresses import Address
from shared.findings import Assumption, Finding
from shared.findings import Severity as Severity
from shared.live import MAX_PROBE_TIMEOUT_S, LiveWitness
from shared.steps import IPAddress as IPAddress
from shared.steps import StepAction as StepAction
from shared.steps import StepInfo, StepKind, from_evidence, step_info
from shared.topology import TopologyReport

SCHEMA_VERSION = 1



def now() -> datetime:
    return datetime.now(UTC)


# new_id()'s format, the only one a diagnosis id may have: it becomes a subject token and a KV key,
# so anything else (`*`, `a.>`, 5,000 characters) is refused at the bus edge (StageEnvelope, ProgressEvent)
ID_PATTERN = r"^[0-9a-f]{32}$"
DiagnosisId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def new_id() -> str:
    """Time-ordered id (48-bit milliseconds + 80 random bits, like UUIDv7): sorting ids
    sorts diagnoses by creation time, which the gateway's newest-first listing relies on."""
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{secrets.token_hex(10)}"


class Strict(BaseModel):
    """Edge models reject unknown fields so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


Port = Annotated[int, Field(ge=1, le=65535, strict=True, description="destination port (1-65535)")]
"""A destination port at every edge (diagnosis, matrix): an integer, never a bool or a string."""

_LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def address_problem(address: IPAddress, role: Literal["src", "dst"]) -> str | None:
    """Why `address` cannot be this end of a diagnosed unicast flow, or None when it can.

    One rule for every entry point (API, CLI, batch, UI): a request the model cannot answer truthfully
    is refused with what to give instead, never walked into a confident wrong verdict. Link-local
    destinations stay allowed: NodeLocal DNSCache (169.254.20.10) and cloud metadata (169.254.169.254)
    are real ones a pod talks to.
    """
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return (f"::ffff:{address.ipv4_mapped} is an IPv4-mapped IPv6 address: write the IPv4 address itself "
                f"({address.ipv4_mapped})")
    if isinstance(address, IPv6Address):  # also an IPv4 source with an IPv6 destination
        return ("IPv6 is not supported yet: netdiag models IPv4 paths end to end; give the pod's, node's or "
                "host's IPv4 address")
    if address.is_unspecified:
        return (f"{address} means 'any address', not a host: give the IP address of the pod or node "
                f"{'that sends' if role == 'src' else 'to reach'}")
    if address.is_loopback:
        return (f"{address} is a loopback address: it never leaves the network namespace it is used in; give the "
                "pod's or node's own IP address")
    if address.is_multicast or address == _LIMITED_BROADCAST:
        kind = "multicast" if address.is_multicast else "the limited broadcast address"
        what = "no packet is sent from it" if role == "src" else "it reaches no single host"
        return (f"{address} is {kind}: {what}; netdiag diagnoses unicast flows, give a pod, node, Service or "
                "public IP address")
    if role == "src" and address.is_link_local:
        return (f"{address} is a link-local address: it is never a pod's or node's source address across a router; "
                "give the sending pod's or node's IP address")
    return None


def _request_address_schema(role: Literal["src", "dst"]) -> WithJsonSchema:
    """What `address_problem` accepts, as the OpenAPI document states it to clients and generators."""
    refused = r"0\.0\.0\.0$|127\.|2(2[4-9]|3[0-9])\.|255\.255\.255\.255$" + (r"|169\.254\." if role == "src" else "")
    description = {"src": "source IPv4 address (pod, node or external)",
                   "dst": "destination IPv4 address (pod, node, Service, LB or public)"}[role]
    return WithJsonSchema({"type": "string", "format": "ipv4", "not": {"pattern": f"^({refused})"},
                           "description": description + "; IPv6 is not supported yet"})


class DiagnosisOptions(Strict):
    model_config = ConfigDict(extra="forbid", strict=True)

    collect_timeout_s: float = Field(5.0, gt=0, le=60, description="deadline for node agents to answer")
    check_reply: bool = Field(True, description="also trace the reply path")
    live: bool = Field(False, description="also probe for real from the source's namespace and trace the kernel's "
                       "drops of that flow (node agents with live probes on); the result gains a `live` section")
    live_timeout_s: float = Field(2.0, gt=0, le=MAX_PROBE_TIMEOUT_S, description="the live probe's timeout")
    # written only when off: every other request and result reads as it always did
    progress: bool = Field(True, exclude_if=lambda on: on is True,
                           description="publish each stage's progress events (false for bulk submissions such as "
                           "`--batch`: the result is stored and announced all the same)")


class DiagnosisRequest(Strict):
    # strict: no silent coercion at any edge ("80" is not a port, true is not port 1), so the API, the CLI,
    # --batch and the UI accept exactly what the OpenAPI document describes
    model_config = ConfigDict(extra="forbid", strict=True)

    src: Annotated[IPvAnyAddress, _request_address_schema("src")]
    dst: Annotated[IPvAnyAddress, _request_address_schema("dst")]
    port: Port
    protocol: Literal["tcp", "udp"] = Field(description="tcp or udp")
    options: DiagnosisOptions = Field(default_factory=DiagnosisOptions)

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        # pydantic reads an integer as an address (167772161 → 10.0.0.1); at the edge that is a mistake
        if isinstance(value, int):
            raise ValueError("must be an IP address literal such as 10.0.0.1 or fd00::1, not a number")
        return value

    @field_validator("src", "dst")
    @classmethod
    def _an_end_of_the_flow(cls, value: IPAddress, info: ValidationInfo) -> IPAddress:
        problem = address_problem(value, "src" if info.field_name == "src" else "dst")
        if problem:
            raise PydanticCustomError("address_refused", problem)  # the message as is, no "Value error, "
        return value

    def describe(self) -> str:
        return f"{self.protocol} {self.src} → {self.dst}:{self.port}"


class MatrixRequest(Strict):
    """A policy-matrix query (`netdiag matrix`): the port rule is the diagnosis request's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    port: Port = 80
    protocol: Literal["tcp", "udp", "sctp"] = Field("tcp", description="a NetworkPolicy protocol")
    namespace: str | None = Field(None, min_length=1, description="only the pods of this namespace")


# ---------------------------------------------------------------- result model


class Verdict(StrEnum):
    REACHABLE = "REACHABLE"
    UNREACHABLE = "UNREACHABLE"
    AMBIGUOUS = "AMBIGUOUS"
    UNDETERMINED = "UNDETERMINED"


class FinalState(StrEnum):
    """How a path ends (GCP Connectivity Tests' vocabulary)."""

    DELIVER = "DELIVER"  # reached a socket that accepts it
    DROP = "DROP"  # dropped or rejected, cause in the finding
    FORWARD = "FORWARD"  # left the part of the world we model (e.g. to the internet)
    ABORT = "ABORT"  # analysis could not continue (missing data)


class Packet(BaseModel):
    """A packet header as a hop sees it; NAT steps show one before and one after."""

    src: Address
    dst: Address
    protocol: Literal["tcp", "udp", "icmp"]
    sport: int | None = None
    dport: int | None = None
    mark: int = 0
    iif: str | None = None
    oif: str | None = None

    def __str__(self) -> str:
        sp = f":{self.sport}" if self.sport is not None else ""
        dp = f":{self.dport}" if self.dport is not None else ""
        return f"{self.protocol} {self.src}{sp} → {self.dst}{dp}"


class Step(BaseModel):
    """One thing that happened to the packet at a hop: a sentence for people (`detail`) and the
    facts behind it (`info`, typed per kind; see shared/steps.py and docs/steps.md)."""

    kind: StepKind
    action: StepAction
    detail: str = Field(description="what happened, as a sentence")
    packet_in: Packet | None = Field(None, description="the packet as the step saw it")
    packet_out: Packet | None = Field(None, description="the packet after the step, when it changed it")
    info: StepInfo = Field(description="the step's typed detail; `info.kind` equals `kind`")

    @classmethod
    def of(cls, kind: StepKind, action: StepAction, detail: str, packet_in: Packet | None = None,
           packet_out: Packet | None = None, **info: Any) -> Step:
        """A step whose typed detail is built from `info`, the fields of `kind`'s model (None left out)."""
        return cls(kind=kind, action=action, detail=detail, packet_in=packet_in, packet_out=packet_out,
                   info=step_info(kind, **info))

    @model_validator(mode="before")
    @classmethod
    def _typed_detail(cls, data: Any) -> Any:
        # results stored before typed steps carry an `evidence` dict; a step built without a detail
        # gets its kind's empty one
        if not isinstance(data, dict) or "info" in data or "kind" not in data:
            return data
        data = dict(data)
        evidence = data.pop("evidence", None)
        data["info"] = from_evidence(data["kind"], evidence) if evidence else {"kind": data["kind"]}
        return data

    @model_validator(mode="after")
    def _same_kind(self) -> Step:
        if self.info.kind != self.kind:
            raise ValueError(f"info is a {self.info.kind} detail but the step is {self.kind}")
        return self


class HopKind(StrEnum):
    POD = "pod"
    NODE = "node"
    SERVICE = "service"
    LOAD_BALANCER = "load_balancer"
    VPC = "vpc"
    NAT_GATEWAY = "nat_gateway"
    INTERNET = "internet"
    EXTERNAL = "external"


class HopStatus(StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    UNKNOWN = "unknown"


class Hop(BaseModel):
    id: str = Field(description="stable within a diagnosis, e.g. 'pod:prod/api-1' or 'node:worker-1'")
    kind: HopKind
    name: str
    address: IPvAnyAddress | None = None
    node: str | None = None
    status: HopStatus = HopStatus.OK
    steps: list[Step] = Field(default_factory=list)


class Path(BaseModel):
    id: str
    description: str = ""
    direction: Literal["forward", "reply"] = "forward"
    hops: list[Hop] = Field(default_factory=list)
    final: FinalState = FinalState.ABORT
    cause: str | None = Field(None, description="finding code that decided the final state")


class PathCounts(BaseModel):
    """How the paths ended, counted once by one rule for every reader (CLI text, UI, JSON)."""

    forward: int = Field(0, description="forward paths (Service endpoints, ECMP branches)")
    delivered: int = Field(0, description="forward paths that reached a listening socket")
    left_cluster: int = Field(0, description="forward paths that left the modelled world (final FORWARD)")
    dropped: int = 0
    aborted: int = Field(0, description="forward paths the analysis could not follow to their end")
    replies: int = Field(0, description="reply paths walked")
    replies_back: int = Field(0, description="reply paths that reach the client")

    @classmethod
    def of(cls, paths: list[Path]) -> PathCounts:
        forward = [p.final for p in paths if p.direction == "forward"]
        replies = [p.final for p in paths if p.direction == "reply"]
        return cls(forward=len(forward), delivered=forward.count(FinalState.DELIVER),
                   left_cluster=forward.count(FinalState.FORWARD), dropped=forward.count(FinalState.DROP),
                   aborted=forward.count(FinalState.ABORT), replies=len(replies),
                   replies_back=replies.count(FinalState.DELIVER))

    @computed_field  # type: ignore[prop-decorator]  # in the JSON too: the UI shows this very line
    @property
    def text(self) -> str:
        if not self.forward:
            return "no path simulated"
        parts = [f"{n} {what}" for n, what in ((self.delivered, "delivered"), (self.left_cluster, "left the "
                 "cluster (not followed beyond)"), (self.dropped, "dropped"), (self.aborted, "not followed to "
                 "the end")) if n]
        out = f"{self.forward} forward path(s): {', '.join(parts)}"
        if self.replies:
            out += f"; {self.replies_back}/{self.replies} reply path(s) reach the client"
        return out


class FirstFailure(BaseModel):
    """Where to look first, found once by one rule for every reader (CLI text, UI): the first hop
    marked as an error, else the unknown hop an aborted path stopped at; with the finding that says why."""

    label: Literal["first failing hop", "could not follow past"]
    path: str = Field(description="path id")
    hop: str = Field(description="hop id")
    hop_name: str
    hop_kind: HopKind
    code: str | None = None
    because: str | None = None
    fix: str | None = None

    @classmethod
    def of(cls, paths: list[Path], findings: list[Finding]) -> FirstFailure | None:
        found = next(((path, hop) for path in paths for hop in path.hops if hop.status == HopStatus.ERROR), None)
        label: Literal["first failing hop", "could not follow past"] = "first failing hop"
        if found is None:  # nothing failed, but a path could not be followed (e.g. an unknown address)
            label = "could not follow past"
            found = next(((path, hop) for path in paths if path.final == FinalState.ABORT for hop in path.hops
                          if hop.status == HopStatus.UNKNOWN), None)
        if found is None:
            return None
        path, hop = found
        why = next((f for f in findings if f.hop == hop.id and (f.severity == Severity.ERROR or f.code == path.cause)),
                   None)
        return cls(label=label, path=path.id, hop=hop.id, hop_name=hop.name, hop_kind=hop.kind,
                   code=why.code if why else None, because=why.message if why else None,
                   fix=why.suggestion if why else None)


class DiagnosisResult(BaseModel):
    verdict: Verdict
    summary: str
    paths: list[Path] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)
    live: LiveWitness | None = Field(None, description="the kernel's witness of the same flow (options.live)")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented spelling
    @property
    def counts(self) -> PathCounts:
        return PathCounts.of(self.paths)

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented use on a property
    @property
    def first_failure(self) -> FirstFailure | None:
        return FirstFailure.of(self.paths, self.findings)


class DiagnosisStatus(StrEnum):
    QUEUED = "queued"
    COMPLETED = "completed"
    FAILED = "failed"


class Diagnosis(BaseModel):
    """What the gateway stores and serves."""

    id: str
    request: DiagnosisRequest
    status: DiagnosisStatus
    source: str | None = Field(None, description="the cluster it ran against, as the topology stage names it: "
                               "'snapshot:<dir>' or 'live:<API server>'; history is listed per source")
    created_at: datetime
    completed_at: datetime | None = None
    result: DiagnosisResult | None = None
    error: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


# ---------------------------------------------------------------- bus events


class BlobRef(BaseModel):
    """A large payload kept in the JetStream object store."""

    bucket: str
    name: str
    size: int
    sha256: str


class StageEnvelope(BaseModel):
    """The event every stage consumes and publishes; each stage fills its own slot.

    Stage payloads are typed by their producer's contract in `shared/` (the topology report,
    node dumps, cloud inventory); big ones are referenced through the object store instead
    of carried inline.
    """

    version: int = SCHEMA_VERSION
    id: DiagnosisId
    request: DiagnosisRequest
    created_at: datetime
    topology: TopologyReport | None = Field(None, description="the topology stage's report: endpoints, Service, "
                                                             "candidate paths, nodes to collect, objects")
    nodes: dict[str, BlobRef] = Field(default_factory=dict, description="node name → netstack dump")
    node_addresses: BlobRef | None = Field(None, description="every Node's addresses (the topology's "
                                           "cluster.node_addresses) when the cluster has too many to carry inline")
    cloud: BlobRef | dict[str, Any] | None = None
    findings: list[Finding] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    result: DiagnosisResult | None = None
    error: str | None = None


class ProgressEvent(BaseModel):
    id: DiagnosisId
    stage: str = Field(max_length=64)
    state: Literal["started", "progress", "done", "failed", "result"]
    message: str = ""
    at: datetime = Field(default_factory=now)
    elapsed_ms: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
