"""NetworkPolicy v1 verdicts with upstream semantics, explained.

A packet (as it is at the hop: after DNAT/SNAT) passes iff the source pod's egress and
the destination pod's ingress both allow it. Per direction, a pod is isolated iff some
policy selecting it has that policy type; then the packet passes iff at least one rule of
one of those policies matches (union of allows; there are no deny rules in v1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.simulator.policy.model import (
    PROTOCOLS,
    Direction,
    IPAddress,
    Peer,
    Pod,
    Policy,
    PolicyCompileError,
    PolicyRef,
    PortMatch,
    Rule,
    compile_pod,
    compile_policy,
    namespace_labels,
)
from shared.schemas import Assumption
from shared.selectors import format_labels
from shared.topology import ClusterObjects

STAGE = "simulator"
_TERMINAL_PHASES = ("Succeeded", "Failed")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
# labels controllers put on one replica or revision: a rule selecting them breaks on the next rollout
_PER_REPLICA_LABELS = frozenset({"pod-template-hash", "controller-revision-hash", "pod-template-generation",
                                 "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"})
_MAX_RULE_REASONS = 4


@dataclass(frozen=True)
class RuleMatch:
    """The rule that allowed the packet: rule index, and peer/port index inside it (None: all)."""

    policy: PolicyRef
    rule_index: int
    peer_index: int | None
    port_index: int | None
    by_ip_block: bool = False  # the peer was an ipBlock (matters when the remote end is a pod)

    def __str__(self) -> str:
        peer = "any peer" if self.peer_index is None else f"peer #{self.peer_index}"
        port = "any port" if self.port_index is None else f"port #{self.port_index}"
        return f"{self.policy} rule #{self.rule_index} ({peer}, {port})"


@dataclass(frozen=True)
class PolicyMiss:
    """Why one isolating policy did not allow the packet."""

    policy: PolicyRef
    reason: str


@dataclass(frozen=True)
class DirectionVerdict:
    direction: Direction
    allowed: bool
    isolated: bool
    subject: str | None  # the pod the policies apply to (ns/name); None: not a pod
    isolating: tuple[PolicyRef, ...] = ()
    allowed_by: RuleMatch | None = None
    denials: tuple[PolicyMiss, ...] = ()
    explanation: str = ""
    change: str = ""  # a denial: the smallest rule that would admit the packet (the finding's fix)

    def evidence(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "allowed": self.allowed,
            "isolated": self.isolated,
            "pod": self.subject,
            "isolating_policies": [str(p) for p in self.isolating],
            "allowed_by": None
            if self.allowed_by is None
            else {
                "policy": str(self.allowed_by.policy),
                "rule": self.allowed_by.rule_index,
                "peer": self.allowed_by.peer_index,
                "port": self.allowed_by.port_index,
            },
            "denials": [{"policy": str(d.policy), "reason": d.reason} for d in self.denials],
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class PacketKey:
    src: IPAddress
    dst: IPAddress
    protocol: str  # TCP, UDP, SCTP
    port: int

    def __str__(self) -> str:
        return f"{self.protocol.lower()} {self.src} → {self.dst}:{self.port}"


@dataclass(frozen=True)
class PolicyVerdict:
    packet: PacketKey
    egress: DirectionVerdict
    ingress: DirectionVerdict
    enforced: bool | None = None  # None: unknown CNI, policies assumed enforced
    is_reply: bool = False
    assumptions: tuple[Assumption, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    @property
    def dropped(self) -> bool:
        """Whether the dataplane drops the packet (False when the CNI enforces nothing)."""
        return not self.allowed and self.enforced is not False


@dataclass
class PolicyIndex:
    """Pods by IP, namespace labels and policies by namespace, built once per object set."""

    pods_by_ip: dict[IPAddress, Pod]
    pods: list[Pod]
    namespaces: dict[str, dict[str, str]]
    policies_by_namespace: dict[str, list[Policy]]
    problems: list[Assumption] = field(default_factory=list)
    _selected: dict[tuple[str, Direction], tuple[Policy, ...]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, objects: ClusterObjects | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> PolicyIndex:
        """From `TopologyReport.objects`, a dict with pods/namespaces/networkpolicies lists,
        or any iterable of API objects with `kind` (Lists are expanded)."""
        pods_raw, namespaces_raw, policies_raw = _split(objects)
        problems: list[Assumption] = []
        namespaces = dict(namespace_labels(ns) for ns in namespaces_raw)
        pods: list[Pod] = []
        pods_by_ip: dict[IPAddress, Pod] = {}
        for raw in pods_raw:
            pod = compile_pod(raw)
            if pod is None:
                continue
            pods.append(pod)
            for ip in pod.ips:
                # a terminated pod's IP may already belong to a new pod: the live one wins
                current = pods_by_ip.get(ip)
                if current is None or current.phase in _TERMINAL_PHASES:
                    pods_by_ip[ip] = pod
        policies: dict[str, list[Policy]] = {}
        for raw in policies_raw:
            try:
                policy = compile_policy(raw)
            except PolicyCompileError as exc:
                problems.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
                    f"{exc}; the API server would have rejected it, so it was ignored")))
                continue
            policies.setdefault(policy.ref.namespace, []).append(policy)
        for ns in sorted({p.namespace for p in pods} - namespaces.keys()):
            namespaces[ns] = {"kubernetes.io/metadata.name": ns}
            problems.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
                f'namespace "{ns}" object is missing: namespaceSelectors see only its '
                f"kubernetes.io/metadata.name label")))
        return cls(pods_by_ip, pods, namespaces, policies, problems)

    # ------------------------------------------------------------- evaluate

    def pod_at(self, ip: IPAddress | str) -> Pod | None:
        return self.pods_by_ip.get(ipaddress.ip_address(ip))

    def selecting(self, pod: Pod, direction: Direction) -> tuple[Policy, ...]:
        """Policies that select `pod` and isolate it for `direction` (cached per pod)."""
        key = (pod.key, direction)
        found = self._selected.get(key)
        if found is None:
            found = tuple(
                p for p in self.policies_by_namespace.get(pod.namespace, ())
                if p.isolates(direction) and p.pod_selector.matches(pod.labels)
            )
            self._selected[key] = found
        return found

    def evaluate(
        self,
        src: IPAddress | str,
        dst: IPAddress | str,
        protocol: str,
        port: int,
        *,
        is_reply: bool = False,
        enforced: bool | None = None,
    ) -> PolicyVerdict:
        packet = PacketKey(ipaddress.ip_address(src), ipaddress.ip_address(dst), _protocol(protocol), int(port))
        src_pod, dst_pod = self.pods_by_ip.get(packet.src), self.pods_by_ip.get(packet.dst)
        assumptions = list(self.problems)
        if is_reply:
            why = "reply of an allowed connection: NetworkPolicy is stateful and never blocks replies"
            return PolicyVerdict(packet, _open("egress", src_pod, why), _open("ingress", dst_pod, why),
                                 enforced, True, tuple(assumptions))
        if src_pod is not None and packet.src == packet.dst:
            why = ("traffic from a pod to its own IP stays on its loopback and never reaches the CNI "
                   "(upstream e2e leaves loopback undefined)")
            assumptions.append(Assumption(stage=STAGE, text=f"pod {src_pod}: {why}"))
            return PolicyVerdict(packet, _open("egress", src_pod, why), _open("ingress", dst_pod, why),
                                 enforced, False, tuple(assumptions))
        egress = self._direction("egress", src_pod, dst_pod, packet)
        ingress = self._direction("ingress", dst_pod, src_pod, packet)
        verdict_allowed = egress.allowed and ingress.allowed
        if (egress.allowed_by and egress.allowed_by.by_ip_block and dst_pod) or (
                ingress.allowed_by and ingress.allowed_by.by_ip_block and src_pod):
            assumptions.append(Assumption(stage=STAGE, text=(
                "an ipBlock peer matched a pod IP: like Calico, Cilium and kube-router (and the upstream e2e "
                "CIDR tests), netdiag lets ipBlock match pod IPs, which the API leaves implementation-defined"),
                could_change_outcome=True))
        if (egress.isolated or ingress.isolated) and enforced is None:
            assumptions.append(Assumption(stage=STAGE, could_change_outcome=not verdict_allowed, text=(
                "the CNI is unknown: NetworkPolicies are assumed to be enforced")))
        if not verdict_allowed and enforced is False:
            assumptions.append(Assumption(stage=STAGE, text=(
                "the CNI does not enforce NetworkPolicy: the policy verdict is reported, the packet is not "
                "dropped")))
        return PolicyVerdict(packet, egress, ingress, enforced, False, tuple(assumptions))

    def allows(self, src: Pod, dst: Pod, protocol: str, port: int) -> tuple[bool, bool]:
        """(egress allowed, ingress allowed) pod to pod without explanations: the matrix fast path."""
        packet_protocol = _protocol(protocol)
        return (
            self._allowing_rule("egress", src, dst, dst, dst.ips[0], packet_protocol, port) is not None
            if self.selecting(src, "egress") else True,
            self._allowing_rule("ingress", dst, src, dst, src.ips[0], packet_protocol, port) is not None
            if self.selecting(dst, "ingress") else True,
        )

    # -------------------------------------------------------------- internals

    def _direction(self, direction: Direction, subject: Pod | None, remote: Pod | None,
                   packet: PacketKey) -> DirectionVerdict:
        if subject is None:
            # the subject is the sender for egress, the receiver for ingress (_side names the remote end)
            subject_side = "source" if direction == "egress" else "destination"
            return _open(direction, None, f"the {subject_side} is not a pod: no {direction} NetworkPolicy applies")
        isolating = self.selecting(subject, direction)
        refs = tuple(p.ref for p in isolating)
        if not isolating:
            return DirectionVerdict(direction, True, False, subject.key, explanation=(
                f"pod {subject} is not isolated for {direction}: no policy selecting it has policyType "
                f"{direction.capitalize()}"))
        dst_pod = subject if direction == "ingress" else remote
        remote_ip = packet.src if direction == "ingress" else packet.dst
        match = self._allowing_rule(direction, subject, remote, dst_pod, remote_ip, packet.protocol, packet.port)
        if match is not None:
            return DirectionVerdict(direction, True, True, subject.key, refs, match, explanation=(
                f"pod {subject} is isolated for {direction} by {_names(refs)}; allowed by {match}"))
        misses = tuple(
            PolicyMiss(p.ref, self._policy_miss(p, direction, remote, dst_pod, remote_ip, packet))
            for p in isolating
        )
        return DirectionVerdict(direction, False, True, subject.key, refs, None, misses, explanation=(
            f"pod {subject} is isolated for {direction} and no rule allows "
            f"{_remote_words(direction, remote, remote_ip)} on port {packet.port}/{packet.protocol}"),
            change=self._change(direction, subject, remote, remote_ip, packet, refs[0]))

    def _change(self, direction: Direction, subject: Pod, remote: Pod | None, remote_ip: IPAddress,
                packet: PacketKey, policy: PolicyRef) -> str:
        """The concrete rule that admits this packet: its peer by the selectors of the remote pod and
        its namespace (by address when the remote is not a pod), on this port."""
        if remote is None:
            peer = f"ipBlock {ipaddress.ip_network(remote_ip)}"
        else:
            pods = f"podSelector {_selector(remote.labels, _PER_REPLICA_LABELS)}"
            if remote.namespace == subject.namespace:
                peer = pods
            else:
                ns_labels = self.namespaces.get(remote.namespace, {})
                custom = {k: v for k, v in ns_labels.items() if k != NAMESPACE_NAME_LABEL}
                peer = (f"namespaceSelector {_selector(custom or {NAMESPACE_NAME_LABEL: remote.namespace})} "
                        f"+ {pods}")
        return f"Add to policy {policy} an {direction} peer {peer} on port {packet.port}/{packet.protocol}"

    def _allowing_rule(self, direction: Direction, subject: Pod, remote: Pod | None, dst_pod: Pod | None,
                       remote_ip: IPAddress, protocol: str, port: int) -> RuleMatch | None:
        for policy in self.selecting(subject, direction):
            for rule in policy.rules(direction):
                port_index = _matching_port(rule, dst_pod, protocol, port)
                if port_index is False:
                    continue
                peer_index = self._matching_peer(rule, policy, remote, remote_ip)
                if peer_index is not False:
                    by_ip_block = (peer_index is not None and rule.peers is not None
                                   and rule.peers[peer_index].ip_block is not None)
                    return RuleMatch(policy.ref, rule.index, peer_index, port_index, by_ip_block)
        return None

    def _matching_peer(self, rule: Rule, policy: Policy, remote: Pod | None,
                       remote_ip: IPAddress) -> int | bool | None:
        """Index of the first matching peer, None if the rule admits every peer, False if none."""
        if rule.peers is None:
            return None
        for peer in rule.peers:
            if self._peer_miss(peer, policy, remote, remote_ip) is None:
                return peer.index
        return False

    def _peer_miss(self, peer: Peer, policy: Policy, remote: Pod | None, ip: IPAddress) -> str | None:
        """None when `peer` matches the remote end, else why not (in an operator's words)."""
        if peer.ip_block is not None:
            if peer.ip_block.contains(ip):
                return None
            excepted = peer.ip_block.excepted_by(ip)
            if excepted is not None and ip in peer.ip_block.cidr:
                return f"{ip} is inside {peer.ip_block.cidr} but excluded by except {excepted}"
            return f"{ip} is outside {peer.ip_block}"
        if peer.empty:
            return "the peer is empty ({}), which the API server rejects; it matches nothing"
        if remote is None:
            return f"{ip} is not a pod, so only ipBlock peers can match it"
        if peer.namespace_selector is None:
            if remote.namespace != policy.ref.namespace:
                return (f'podSelector {peer.pod_selector} alone selects pods in namespace '
                        f'"{policy.ref.namespace}" only, {remote} is in namespace "{remote.namespace}"')
        else:
            ns_labels = self.namespaces.get(remote.namespace, {})
            if not peer.namespace_selector.matches(ns_labels):
                return (f'namespace "{remote.namespace}" {format_labels(ns_labels)} does not match '
                        f"namespaceSelector {peer.namespace_selector}")
        if peer.pod_selector is not None and not peer.pod_selector.matches(remote.labels):
            return f"pod {remote} {format_labels(remote.labels)} does not match podSelector {peer.pod_selector}"
        return None

    def _policy_miss(self, policy: Policy, direction: Direction, remote: Pod | None, dst_pod: Pod | None,
                     remote_ip: IPAddress, packet: PacketKey) -> str:
        rules = policy.rules(direction)
        if not rules:
            return f"it has no {direction} rules, so it denies all {direction} of the pods it selects"
        reasons = []
        for rule in rules:
            peer_index = self._matching_peer(rule, policy, remote, remote_ip)
            if peer_index is False:
                assert rule.peers is not None
                peers = "; ".join(
                    f"{peer.describe(policy.ref.namespace)}: {self._peer_miss(peer, policy, remote, remote_ip)}"
                    for peer in rule.peers
                )
                reasons.append(f"rule #{rule.index} {_side(direction)} mismatch ({peers})")
            else:
                assert rule.ports is not None
                reasons.append(f"rule #{rule.index} port mismatch ("
                               f"{_port_miss(rule.ports, dst_pod, packet.protocol, packet.port)})")
        if len(reasons) > _MAX_RULE_REASONS:
            reasons = [*reasons[:_MAX_RULE_REASONS], f"{len(reasons) - _MAX_RULE_REASONS} more rules"]
        return "; ".join(reasons)


# ---------------------------------------------------------------------- helpers


def _matching_port(rule: Rule, dst_pod: Pod | None, protocol: str, port: int) -> int | bool | None:
    """Index of the first matching port entry, None if the rule admits every port, False if none."""
    if rule.ports is None:
        return None
    for index, entry in enumerate(rule.ports):
        if _port_matches(entry, dst_pod, protocol, port):
            return index
    return False


def _port_matches(entry: PortMatch, dst_pod: Pod | None, protocol: str, port: int) -> bool:
    if entry.protocol != protocol:
        return False
    if entry.named is not None:
        # named ports resolve on the destination pod, for egress rules too
        return dst_pod is not None and dst_pod.named_ports.get((entry.named, protocol)) == port
    if entry.port is None:
        return True
    return entry.port <= port <= (entry.end_port or entry.port)


def _port_miss(ports: tuple[PortMatch, ...], dst_pod: Pod | None, protocol: str, port: int) -> str:
    allowed = ", ".join(map(str, ports))
    named = [p.named for p in ports if p.named is not None and p.protocol == protocol]
    detail = f"{port}/{protocol} is not among {allowed}"
    if named and dst_pod is None:
        detail += "; named ports never match a destination that is not a pod"
    elif named and dst_pod is not None:
        resolved = [f"{n}={dst_pod.named_ports.get((n, protocol), 'undefined')}" for n in named]
        detail += f"; on pod {dst_pod} {', '.join(resolved)}"
    return detail


def _open(direction: Direction, subject: Pod | None, why: str) -> DirectionVerdict:
    return DirectionVerdict(direction, True, False, subject.key if subject else None, explanation=why)


def _protocol(protocol: str) -> str:
    value = protocol.upper()
    if value not in PROTOCOLS:
        raise ValueError(f"NetworkPolicy covers TCP, UDP and SCTP, not {protocol!r}")
    return value


def _side(direction: Direction) -> str:
    return "source" if direction == "ingress" else "destination"


def _remote_words(direction: Direction, remote: Pod | None, ip: IPAddress) -> str:
    side = _side(direction)
    if remote is None:
        return f"{side} {ip} (not a pod)"
    return f'{side} pod {remote} (namespace "{remote.namespace}", labels {format_labels(remote.labels)})'


def _selector(labels: Mapping[str, str], drop: frozenset[str] = frozenset()) -> str:
    kept = sorted((k, v) for k, v in labels.items() if k not in drop)
    return ",".join(f"{k}={v}" for k, v in kept) if kept else "{} (every pod)"


def _names(refs: Iterable[PolicyRef]) -> str:
    return ", ".join(map(str, refs))


def _split(objects: Any) -> tuple[Sequence[Mapping[str, Any]], ...]:
    if isinstance(objects, ClusterObjects):
        return objects.pods, objects.namespaces, objects.networkpolicies
    if isinstance(objects, Mapping):
        return (list(objects.get("pods") or []), list(objects.get("namespaces") or []),
                list(objects.get("networkpolicies") or []))
    by_kind: dict[str, list[Mapping[str, Any]]] = {"Pod": [], "Namespace": [], "NetworkPolicy": []}
    stack = list(objects)
    while stack:
        obj = stack.pop(0)
        if not obj:
            continue
        kind = obj.get("kind", "")
        if kind.endswith("List") and "items" in obj:
            # API lists (PodList …) omit the kind of their items; kubectl's `List` keeps it
            item_kind = kind[: -len("List")]
            stack[:0] = [{"kind": item_kind, **item} if item_kind else item for item in obj["items"]]
        elif obj.get("kind") in by_kind:
            by_kind[obj["kind"]].append(obj)
    return by_kind["Pod"], by_kind["Namespace"], by_kind["NetworkPolicy"]
