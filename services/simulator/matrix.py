"""All-pairs pod-to-pod reachability under the NetworkPolicies (`netdiag matrix`).

Only NetworkPolicy is evaluated here (no dataplane): a cell is "." when both the source's
egress and the destination's ingress allow the port, "X" otherwise — the notation of the
upstream e2e truth tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.simulator.policy import PolicyIndex
from services.simulator.policy.model import Pod
from shared.schemas import MatrixRequest
from shared.topology import ClusterObjects

_TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Matrix:
    port: int
    protocol: str
    pods: list[str]  # ns/name, row and column order
    allowed: list[list[bool]]  # allowed[src][dst]
    # (src, dst) -> "egress", "ingress" or "egress+ingress": which side denied
    denied_by: dict[tuple[int, int], str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # pods left out (no IP, terminated)
    notes: list[str] = field(default_factory=list)

    def get(self, src: str, dst: str) -> bool:
        return self.allowed[self.pods.index(src)][self.pods.index(dst)]

    def to_text(self) -> str:
        width = max([len(p) for p in self.pods] + [4])
        lines = [f"NetworkPolicy reachability on port {self.port}/{self.protocol} "
                 f"(row = source, column = destination; . allowed, X denied)"]
        lines.append(" " * width + " " + " ".join(f"{i:>3}" for i in range(len(self.pods))))
        for i, src in enumerate(self.pods):
            cells = " ".join(f"{'.' if ok else 'X':>3}" for ok in self.allowed[i])
            lines.append(f"{src:<{width}} {cells}  [{i}]")
        lines += [f"skipped {p}" for p in self.skipped] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "pods": self.pods,
            "matrix": {src: {dst: self.allowed[i][j] for j, dst in enumerate(self.pods)}
                       for i, src in enumerate(self.pods)},
            "denied": [{"src": self.pods[i], "dst": self.pods[j], "denied_by": side}
                       for (i, j), side in sorted(self.denied_by.items())],
            "allowed_count": sum(map(sum, self.allowed)),
            "denied_count": len(self.denied_by),
            "skipped": self.skipped,
            "notes": self.notes,
        }


def compute_matrix(
    objects: ClusterObjects | Mapping[str, Any] | Iterable[Mapping[str, Any]] | PolicyIndex,
    namespace: str | None = None,
    port: int = 80,
    protocol: str = "TCP",
) -> Matrix:
    """Reachability of every pod pair (optionally only pods of `namespace`) on port/protocol.

    Raises pydantic's ValidationError (a ValueError) for a port or protocol a diagnosis would refuse."""
    query = MatrixRequest.model_validate({"port": port, "protocol": protocol.lower(), "namespace": namespace})
    namespace, port, protocol = query.namespace, query.port, query.protocol.upper()
    index = objects if isinstance(objects, PolicyIndex) else PolicyIndex.build(objects)
    pods: list[Pod] = []
    skipped: list[str] = []
    for pod in sorted(index.pods, key=lambda p: p.key):
        if namespace is not None and pod.namespace != namespace:
            continue
        if not pod.ips or pod.phase in _TERMINAL_PHASES:
            skipped.append(f"{pod.key} (no pod IP)" if not pod.ips else f"{pod.key} (phase {pod.phase})")
            continue
        pods.append(pod)
    n = len(pods)
    allowed = [[True] * n for _ in range(n)]
    denied_by: dict[tuple[int, int], str] = {}
    egress_isolated = [bool(index.selecting(p, "egress")) for p in pods]
    ingress_isolated = [bool(index.selecting(p, "ingress")) for p in pods]
    for i, src in enumerate(pods):
        for j, dst in enumerate(pods):
            if i == j or not (egress_isolated[i] or ingress_isolated[j]):
                continue  # loopback never reaches the CNI; unisolated pairs are always allowed
            egress_ok, ingress_ok = index.allows(src, dst, protocol, port)
            if not (egress_ok and ingress_ok):
                allowed[i][j] = False
                denied_by[(i, j)] = "+".join(
                    side for side, ok in (("egress", egress_ok), ("ingress", ingress_ok)) if not ok)
    notes = [a.text for a in index.problems]
    notes.append("a pod's traffic to itself is shown allowed: it stays on the pod's loopback")
    return Matrix(port, protocol, [p.key for p in pods], allowed, denied_by, skipped, notes)
