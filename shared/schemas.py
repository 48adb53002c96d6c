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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from shared.steps import StepAction, StepInfo, StepKind, from_evidence, step_info

SCHEMA_VERSION = 1

IPAddress = IPv4Address | IPv6Address


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Time-ordered id (48-bit milliseconds + 80 random bits, like UUIDv7): sorting ids
    sorts diagnoses by creation time, which the gateway's newest-first listing relies on."""
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{secrets.token_hex(10)}"


class Strict(BaseModel):
    """Edge models reject unknown fields so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class DiagnosisOptions(Strict):
    collect_timeout_s: float = Field(5.0, gt=0, le=60, description="deadline for node agents to answer")
    check_reply: bool = Field(True, description="also trace the reply path")


class DiagnosisRequest(Strict):
    src: IPvAnyAddress = Field(description="source IP address (pod, node or external)")
    dst: IPvAnyAddress = Field(description="destination IP address (pod, node, Service, LB or public)")
    port: int = Field(ge=1, le=65535, description="destination port")
    protocol: Literal["tcp", "udp"] = Field(description="tcp or udp")
    options: DiagnosisOptions = Field(default_factory=DiagnosisOptions)

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        # pydantic reads an integer as an address (167772161 → 10.0.0.1); at the edge that is a mistake
        if isinstance(value, int):
            raise ValueError("must be an IP address literal such as 10.0.0.1 or fd00::1, not a number")
        return value

    def describe(self) -> str:
        return f"{self.protocol} {self.src} → {self.dst}:{self.port}"


# ---------------------------------------------------------------- result model


class Verdict(StrEnum):
    REACHABLE = "REACHABLE"
    UNREACHABLE = "UNREACHABLE"
    AMBIGUOUS = "AMBIGUOUS"
    UNDETERMINED = "UNDETERMINED"


class Severity(StrEnum):
    ERROR = "error"  # breaks the path
    WARNING = "warning"  # may break it, or breaks it only under conditions
    INFO = "info"  # worth knowing


class FinalState(StrEnum):
    """How a path ends (GCP Connectivity Tests' vocabulary)."""

    DELIVER = "DELIVER"  # reached a socket that accepts it
    DROP = "DROP"  # dropped or rejected, cause in the finding
    FORWARD = "FORWARD"  # left the part of the world we model (e.g. to the internet)
    ABORT = "ABORT"  # analysis could not continue (missing data)


class Packet(BaseModel):
    """A packet header as a hop sees it; NAT steps show one before and one after."""

    src: IPvAnyAddress
    dst: IPvAnyAddress
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


class Finding(BaseModel):
    code: str
    severity: Severity
    hop: str | None = Field(None, description="id of the hop the finding belongs to; None = cluster-level")
    message: str
    suggestion: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class Assumption(BaseModel):
    stage: str
    text: str
    could_change_outcome: bool = False


class DiagnosisResult(BaseModel):
    verdict: Verdict
    summary: str
    paths: list[Path] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)


class DiagnosisStatus(StrEnum):
    QUEUED = "queued"
    COMPLETED = "completed"
    FAILED = "failed"


class Diagnosis(BaseModel):
    """What the gateway stores and serves."""

    id: str
    request: DiagnosisRequest
    status: DiagnosisStatus
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

    Stage payloads are plain JSON documents whose schemas live in `shared/` next to
    their producer's contract (cluster model, node dumps, cloud inventory); big ones are
    referenced through the object store instead of carried inline.
    """

    version: int = SCHEMA_VERSION
    id: str
    request: DiagnosisRequest
    created_at: datetime
    topology: dict[str, Any] | None = None
    nodes: dict[str, BlobRef] = Field(default_factory=dict, description="node name → netstack dump")
    cloud: BlobRef | dict[str, Any] | None = None
    findings: list[Finding] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    result: DiagnosisResult | None = None
    error: str | None = None


class ProgressEvent(BaseModel):
    id: str
    stage: str
    state: Literal["started", "progress", "done", "failed", "result"]
    message: str = ""
    at: datetime = Field(default_factory=now)
    elapsed_ms: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
