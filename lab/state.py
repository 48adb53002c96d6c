"""The lab state file: /run/netdiag-lab/<prefix>/state.json.

It is how everything outside the builder finds a running lab: `lab status`/`lab down`/`lab probe`, the lab's
Kubernetes API server (which also fills the `api` slot), and the node agents, which learn from `nodes` which
network namespace is which Kubernetes node (`nodes["node-1"].netns`) and from `pods` which namespace holds
which pod. The scenario (as resolved input, after lab-time changes such as a NetworkPolicy added by a fault)
is kept in `scenario`, so readers can call `lab.scenario.resolve(Scenario.model_validate(state.scenario))`.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

RUN_DIR = Path(os.environ.get("NETDIAG_LAB_RUN_DIR", "/run/netdiag-lab"))


class ApiInfo(BaseModel):
    """Filled by the lab's Kubernetes API server (lab/kubeapi.py) once it listens."""

    host: str
    port: int
    token: str
    kubeconfig: str | None = None
    pid: int | None = None


class CloudInfo(BaseModel):
    """The lab's cloud OpenAPI emulator (lab/cloudstate.py), when the scenario asks for a cloud."""

    host: str
    port: int
    pid: int | None = None
    state_file: str

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class NodeState(BaseModel):
    netns: str
    ip: str
    pod_cidr: str
    gateway_ip: str


class PodState(BaseModel):
    netns: str  # the node's namespace for hostNetwork pods
    node: str
    ip: str
    host_network: bool = False
    veth: str | None = Field(None, description="node-side veth name (None for hostNetwork pods)")
    pid: int | None = Field(None, description="listener process; None when the pod listens on nothing")


class LabState(BaseModel):
    version: int = 1
    prefix: str
    scenario_path: str | None = None
    scenario_name: str
    scenario: dict[str, Any] = Field(description="the Scenario (by alias) the lab currently implements")
    cni: str
    iptables_backend: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    underlay_netns: str
    inet_netns: str | None = None
    ext_netns: str | None = None
    inet_ip: str | None = None
    ext_ip: str | None = None
    nodes: dict[str, NodeState] = Field(default_factory=dict)
    pods: dict[str, PodState] = Field(default_factory=dict, description="keyed by namespace/name")
    extra_pids: dict[str, int] = Field(default_factory=dict, description="e.g. the internet host's listener")
    api: ApiInfo | None = None
    cloud: CloudInfo | None = None

    def all_netns(self) -> list[str]:
        names = [self.underlay_netns, self.inet_netns, self.ext_netns,
                 *(n.netns for n in self.nodes.values()), *(p.netns for p in self.pods.values())]
        return sorted({n for n in names if n})

    def all_pids(self) -> list[int]:
        return [*(p.pid for p in self.pods.values() if p.pid), *self.extra_pids.values()]


def state_dir(prefix: str) -> Path:
    return RUN_DIR / prefix


def state_path(prefix: str) -> Path:
    return state_dir(prefix) / "state.json"


def save(state: LabState) -> Path:
    """Write atomically and privately (the api slot holds a token); keep api/cloud slots the daemons filled."""
    path = state_path(state.prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (state.api is None or state.cloud is None) and path.exists():
        with contextlib.suppress(ValueError):
            saved = LabState.model_validate_json(path.read_text())
            state.api, state.cloud = state.api or saved.api, state.cloud or saved.cloud
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: readers never see half a file
    return path


def load(prefix: str) -> LabState:
    path = state_path(prefix)
    if not path.exists():
        raise FileNotFoundError(f"no lab named {prefix!r} ({path} does not exist)")
    return LabState.model_validate_json(path.read_text())


def running() -> list[str]:
    """Prefixes of labs with a state file."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in RUN_DIR.iterdir() if (p / "state.json").exists())
