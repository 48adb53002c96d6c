"""NetworkPolicy v1 objects compiled from API JSON dicts (camelCase) into matchable form.

Compilation happens once per index; evaluation never touches the raw dicts again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.selectors import LabelSelector, SelectorError, compile_selector
from shared.topology import isolated_directions

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Direction = Literal["ingress", "egress"]
PROTOCOLS = ("TCP", "UDP", "SCTP")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class PolicyRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Pod:
    """What NetworkPolicy needs to know about a pod (hostNetwork pods never become one)."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[IPAddress, ...]
    # (name, protocol) -> containerPort: named ports resolve against the destination pod
    named_ports: Mapping[tuple[str, str], int] = field(default_factory=dict)
    phase: str = "Running"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.cidr.version and ip in self.cidr and not self.excepted_by(ip)

    def excepted_by(self, ip: IPAddress) -> IPNetwork | None:
        return next((e for e in self.excepts if ip.version == e.version and ip in e), None)

    def __str__(self) -> str:
        if not self.excepts:
            return f"ipBlock {self.cidr}"
        return f"ipBlock {self.cidr} except {', '.join(map(str, self.excepts))}"


@dataclass(frozen=True)
class Peer:
    """One entry of from/to. Fields as in the API: None means the field is absent."""

    index: int
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @property
    def empty(self) -> bool:
        # `{}` is rejected by the API server ("must specify a peer"); see docs/network-policy.md
        return self.pod_selector is None and self.namespace_selector is None and self.ip_block is None

    def describe(self, policy_namespace: str) -> str:
        if self.ip_block is not None:
            return str(self.ip_block)
        if self.empty:
            return "empty peer {}"
        if self.namespace_selector is None:
            return f'pods {self.pod_selector} in namespace "{policy_namespace}"'
        ns = "all namespaces" if self.namespace_selector.empty else f"namespaces {self.namespace_selector}"
        if self.pod_selector is None or self.pod_selector.empty:
            return f"all pods in {ns}"
        return f"pods {self.pod_selector} in {ns}"


@dataclass(frozen=True)
class PortMatch:
    protocol: str  # TCP when the API object leaves it out
    port: int | None = None  # None: every port of the protocol
    end_port: int | None = None
    named: str | None = None

    def __str__(self) -> str:
        if self.named is not None:
            return f"{self.named}/{self.protocol}"
        if self.port is None:
            return f"all ports/{self.protocol}"
        if self.end_port is not None and self.end_port != self.port:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Rule:
    index: int
    peers: tuple[Peer, ...] | None  # None: from/to absent or [] — every peer
    ports: tuple[PortMatch, ...] | None  # None: ports absent or [] — every port and protocol


@dataclass(frozen=True)
class Policy:
    ref: PolicyRef
    pod_selector: LabelSelector
    isolates_ingress: bool
    isolates_egress: bool
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]

    def isolates(self, direction: Direction) -> bool:
        return self.isolates_ingress if direction == "ingress" else self.isolates_egress

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress


class PolicyCompileError(ValueError):
    pass


def compile_policy(obj: Mapping[str, Any]) -> Policy:
    meta = obj.get("metadata") or {}
    ref = PolicyRef(meta.get("namespace") or "default", meta.get("name") or "?")
    spec = obj.get("spec") or {}
    try:
        ingress = tuple(_rule(i, r, "from") for i, r in enumerate(spec.get("ingress") or []))
        egress = tuple(_rule(i, r, "to") for i, r in enumerate(spec.get("egress") or []))
        selector = compile_selector(spec.get("podSelector"))
        types = isolated_directions(spec)
    except (SelectorError, ValueError, TypeError, KeyError) as exc:
        raise PolicyCompileError(f"network policy {ref}: {exc}") from exc
    return Policy(ref, selector, "Ingress" in types, "Egress" in types, ingress, egress)


def _rule(index: int, raw: Mapping[str, Any], peers_key: str) -> Rule:
    raw_peers = raw.get(peers_key)
    raw_ports = raw.get("ports")
    peers = tuple(_peer(i, p) for i, p in enumerate(raw_peers)) if raw_peers else None
    ports = tuple(_port(p) for p in raw_ports) if raw_ports else None
    return Rule(index, peers, ports)


def _peer(index: int, raw: Mapping[str, Any]) -> Peer:
    block = raw.get("ipBlock")
    ip_block = None
    if block is not None:
        ip_block = IPBlock(
            ipaddress.ip_network(block["cidr"], strict=False),
            tuple(ipaddress.ip_network(e, strict=False) for e in block.get("except") or []),
        )
    return Peer(
        index,
        compile_selector(raw["podSelector"]) if raw.get("podSelector") is not None else None,
        compile_selector(raw["namespaceSelector"]) if raw.get("namespaceSelector") is not None else None,
        ip_block,
    )


def _port(raw: Mapping[str, Any]) -> PortMatch:
    protocol = str(raw.get("protocol") or "TCP").upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unsupported protocol {protocol}")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if isinstance(port, str) and not port.isdigit():
        return PortMatch(protocol, named=port)
    number = int(port) if port is not None else None
    return PortMatch(protocol, number, int(end_port) if end_port is not None and number is not None else None)


def compile_pod(obj: Mapping[str, Any]) -> Pod | None:
    """None for hostNetwork pods: NetworkPolicy treats them as their node (ipBlock only)."""
    spec = obj.get("spec") or {}
    if spec.get("hostNetwork"):
        return None
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    raw_ips = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
    named: dict[tuple[str, str], int] = {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("containerPort") is not None:
                named[(port["name"], str(port.get("protocol") or "TCP").upper())] = int(port["containerPort"])
    return Pod(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "?",
        labels=dict(meta.get("labels") or {}),
        ips=tuple(ipaddress.ip_address(ip) for ip in raw_ips if ip),
        named_ports=named,
        phase=status.get("phase") or "Unknown",
    )


def namespace_labels(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or "?"
    # the API server sets this label on every namespace (immutable since 1.21)
    return name, {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: name}
