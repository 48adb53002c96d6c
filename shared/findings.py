"""What a stage reports beside the path: findings (a coded problem at a hop) and assumptions.

Its own module so that stage contracts which carry findings (shared/topology.py) and the
envelope that carries those contracts (shared/schemas.py) import it without a cycle;
shared.schemas re-exports every name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Severity(StrEnum):
    ERROR = "error"  # breaks the path
    WARNING = "warning"  # may break it, or breaks it only under conditions
    INFO = "info"  # worth knowing


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
