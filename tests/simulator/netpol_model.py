"""The upstream e2e NetworkPolicy model (test/e2e/network/netpol/model.go) as API objects.

Namespaces x, y, z (labels ns=<name> plus kubernetes.io/metadata.name), pods a, b, c in each
(label pod=<name>), one container port per port x protocol named serve-<port>-<proto>.
`Reachability` mirrors reachability.go: a default expectation plus Expect* overrides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP", "SCTP")
ALL_PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)


def pod_ip(pod: str) -> str:
    ns, name = pod.split("/")
    return f"10.{NAMESPACES.index(ns) + 1}.0.{POD_NAMES.index(name) + 10}"


def make_large_cidr_for_ip(ip: str) -> str:
    # upstream makeLargeCIDRForIP: the /4 around the pod IP
    return str(ipaddress.ip_network(f"{ip}/4", strict=False))


def namespace(name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"ns": name, "kubernetes.io/metadata.name": name,
                                                   **(extra or {})}}}


def pod(ref: str, extra_labels: dict[str, str] | None = None, ip: str | None = None) -> dict[str, Any]:
    ns, name = ref.split("/")
    ip = ip or pod_ip(ref)
    containers = [
        {"name": f"cont-{port}-{proto.lower()}", "image": "agnhost",
         "ports": [{"containerPort": port, "name": f"serve-{port}-{proto.lower()}", "protocol": proto}]}
        for port in PORTS for proto in PROTOCOLS
    ]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"pod": name, **(extra_labels or {})}},
            "spec": {"containers": containers, "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def model_objects(policies: Iterable[dict[str, Any]], pod_labels: dict[str, dict[str, str]] | None = None,
                  ns_labels: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    pod_labels, ns_labels = pod_labels or {}, ns_labels or {}
    return [
        *(namespace(ns, ns_labels.get(ns)) for ns in NAMESPACES),
        *(pod(p, pod_labels.get(p)) for p in ALL_PODS),
        *policies,
    ]


class Reachability:
    def __init__(self, default: bool = True) -> None:
        self.expected = {(f, t): default for f in ALL_PODS for t in ALL_PODS}

    @staticmethod
    def _match(pod_ref: str, ns: str | None, name: str | None) -> bool:
        pns, pname = pod_ref.split("/")
        return (ns is None or ns == pns) and (name is None or name == pname)

    def expect_peer(self, from_ns: str | None, from_pod: str | None, to_ns: str | None, to_pod: str | None,
                    connected: bool) -> Reachability:
        for f in ALL_PODS:
            for t in ALL_PODS:
                if self._match(f, from_ns, from_pod) and self._match(t, to_ns, to_pod):
                    self.expected[(f, t)] = connected
        return self

    def expect(self, src: str, dst: str, connected: bool) -> Reachability:
        self.expected[(src, dst)] = connected
        return self

    def expect_all_ingress(self, dst: str, connected: bool) -> Reachability:
        ns, name = dst.split("/")
        return self.expect_peer(None, None, ns, name, connected)

    def expect_all_egress(self, src: str, connected: bool) -> Reachability:
        ns, name = src.split("/")
        return self.expect_peer(ns, name, None, None, connected)
