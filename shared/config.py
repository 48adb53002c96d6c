"""Runtime settings shared by every service, from NETDIAG_* environment variables or flags."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

# Namespaces whose ConfigMaps CNI / kube-proxy detection reads (the topology stage's live source).
DEFAULT_CONFIGMAP_NAMESPACES = ("kube-system", "kube-flannel", "calico-system")


@functools.lru_cache(maxsize=8)
def _read_key(path: Path) -> bytes | None:
    """Read once per process (every final event is signed or checked with it)."""
    return path.read_text().strip().encode() or None


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
    ack_wait_s: float = Field(3.0, gt=0, description="redeliver a message a crashed replica held this long "
                              "(a live one sends in-progress heartbeats every ack_wait/4)")
    max_inflight: int = Field(16, ge=1, description="messages one stage replica handles concurrently")
    result_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="how long results and events are kept")
    stream_replicas: int = Field(1, ge=1, le=5)
    # NATS credentials and TLS (shared/security.py builds the connect options); nats_url may list
    # several servers, comma-separated, so a client survives the loss of any one of them
    nats_user: str | None = None
    nats_password: str | None = None
    nats_creds_file: Path | None = Field(None, description="NATS .creds file (JWT + nkey seed)")
    nats_nkey_seed_file: Path | None = Field(None, description="nkey seed file (needs the nkeys package)")
    nats_token_file: Path | None = Field(None, description="file holding the NATS token, re-read at every (re)connect: "
                                         "the node agent's projected ServiceAccount token under auth callout")
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # gateway access (services/gateway/auth.py): no tokens and no TokenReview = open (the local stack)
    auth_tokens: str | None = Field(None, description="comma-separated bearer tokens the gateway accepts")
    auth_tokens_file: Path | None = Field(None, description="file with one accepted bearer token per line")
    # ... and/or Kubernetes tokens, checked with a TokenReview against the API server (kubeconfig,
    # else the in-cluster service account); the restrictions below apply to those tokens only
    auth_tokenreview: bool = Field(False, description="accept Kubernetes tokens the API server's TokenReview accepts")
    auth_audiences: tuple[str, ...] = Field((), description="comma-separated audiences the token must be valid for "
                                            "(empty: the API server's own)")
    auth_allowed_groups: tuple[str, ...] = Field((), description="comma-separated: accept only Kubernetes users in "
                                                 "one of these groups (or listed in auth_allowed_users)")
    auth_allowed_users: tuple[str, ...] = Field((), description="comma-separated Kubernetes usernames, e.g. "
                                                "system:serviceaccount:ops:netdiag-client")
    # `netdiag nats-auth` (services/natsauth): the NATS auth callout that admits node agents by their
    # Kubernetes ServiceAccount token, each with the permissions of its own node only
    nats_auth_issuer_seed_file: Path | None = Field(None, description="the issuer account's nkey seed (SA...), a "
                                                    "mounted Secret; never logged")
    nats_auth_agent_user: str | None = Field(None, description="the agents' Kubernetes user, "
                                             "system:serviceaccount:<namespace>:<serviceaccount>")
    nats_auth_audiences: tuple[str, ...] = Field(("nats",), description="comma-separated audiences the agent token "
                                                 "must be valid for")
    nats_auth_user_ttl_s: float = Field(0.0, ge=0, description="lifetime of an admitted agent's NATS identity "
                                        "(0: its connection's; every reconnect is checked anew). nats-py closes, "
                                        "rather than reconnects, when the server ends an expired identity")
    result_key: str | None = Field(None, description="shared secret with which the simulator signs `completed` "
                                   "events and the gateway checks them (None: unsigned, the gateway warns)")
    result_key_file: Path | None = Field(None, description="file holding result_key (a mounted Secret)")
    health_port: int | None = Field(None, ge=0, le=65535, description="a stage service's /healthz and /readyz "
                                    "port (None: off; the gateway answers them on its HTTP port)")
    pipeline_deadline_s: float = Field(300.0, gt=0, description="a diagnosis still queued this long after it was "
                                       "accepted is ended as failed by the gateway's reconciler")
    reconcile_interval_s: float = Field(15.0, gt=0, description="how often the gateway looks for overdue diagnoses")
    rate_limit_rps: float | None = Field(None, gt=0, description="sustained requests/s per client (None: no limit)")
    trusted_proxies: tuple[str, ...] = Field((), description="comma-separated CIDRs of the proxies in front of the "
                                             "gateway whose X-Forwarded-For names the client (rate limit, stream cap)")
    rate_limit_burst: int = Field(40, ge=1, description="requests a client may send at once")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port (None: off)")
    live_probe: bool = Field(False, description="node agents answer live probes and trace the kernel's drops of "
                             "them (bpftrace); diagnoses may then ask for `live: true`")
    probe_rate_per_s: float = Field(5.0, gt=0, le=100, description="live probes per second per node agent")
    probe_concurrency: int = Field(4, ge=1, le=64, description="live probes one node agent runs at once")
    drop_metrics: bool = Field(False, description="node agents export kernel drop counters (bpftrace, counted "
                               "in the kernel) as netdiag_kernel_drops_total on the metrics port")
    drop_metrics_interval_s: int = Field(5, ge=1, le=300, description="how often the kernel's counts are read")
    configmap_namespaces: tuple[str, ...] = Field(
        DEFAULT_CONFIGMAP_NAMESPACES, description="comma-separated namespaces whose ConfigMaps detection reads"
    )

    @field_validator("configmap_namespaces", "auth_audiences", "auth_allowed_groups", "auth_allowed_users",
                     "nats_auth_audiences", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # the environment gives one comma-separated string
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    def signing_key(self) -> bytes | None:
        if self.result_key_file is not None:
            return _read_key(self.result_key_file)
        return self.result_key.encode() if self.result_key else None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"NETDIAG_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
