"""Runtime settings shared by every service, from NETDIAG_* environment variables or flags."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


class Settings(BaseModel):
    nats_url: str = "nats://127.0.0.1:4222"
    snapshot: Path | None = Field(None, description="diagnose this snapshot directory instead of a live cluster")
    kubeconfig: Path | None = None
    collect_timeout_s: float = Field(5.0, gt=0, le=120)
    cloud_provider: str = "none"
    cloud_endpoint: str | None = None
    cloud_region: str | None = None
    cloud_credentials_file: Path | None = Field(
        None, description="mounted secret with the cloud AccessKey (JSON file or a directory of key files)"
    )
    data_dir: Path | None = None
    # bus behaviour
    max_deliver: int = Field(3, ge=1, description="attempts per stage message before the diagnosis fails")
    ack_wait_s: float = Field(30.0, gt=0, description="redeliver a message a crashed replica held this long")
    max_inflight: int = Field(16, ge=1, description="messages one stage replica handles concurrently")
    result_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="how long results and events are kept")
    stream_replicas: int = Field(1, ge=1, le=5)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"NETDIAG_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
