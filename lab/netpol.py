"""NetworkPolicy (networking.k8s.io/v1) enforcement in the node kernel, the way a policy agent does it.

kube-router style, one ruleset per node for the pods it hosts:
  filter FORWARD → KUBE-ROUTER-FORWARD → per pod and direction KUBE-PODIN-<h> / KUBE-PODEG-<h>
  filter INPUT   → KUBE-ROUTER-INPUT (a local pod's egress to the node's own addresses)
A pod chain returns ESTABLISHED/RELATED packets (replies are stateful), clears mark 0x10000, jumps to one
KUBE-NWPLCY-<h> chain per policy selecting the pod (each allow rule sets the mark), returns if marked and
otherwise DROPs with a comment naming the policies. ipBlock `except` uses a KUBE-NWPEXC-<h> sub-chain.
Traffic from the pod's own node is always allowed (upstream semantics), so OUTPUT is not filtered.

v1 semantics: a pod is isolated per direction by any policy selecting it with that policyType; allows
are the union of all rules; peers are podSelector (policy namespace), namespaceSelector, both, or
ipBlock with except; ports may be named (resolved on the destination pod), ranges (endPort); protocol
defaults to TCP; an absent/empty peer or port list matches everything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lab.iptables import Ruleset, chain_hash, comment
from lab.scenario import ResolvedPod, ResolvedScenario

ALLOW_MARK = "0x10000"
Direction = Literal["ingress", "egress"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Requirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[Requirement] = Field(default_factory=list, alias="matchExpressions")

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            ok = {
                "In": present and labels.get(req.key) in req.values,
                "NotIn": not present or labels.get(req.key) not in req.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class IPBlock(_Model):
    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


class Peer(_Model):
    pod_selector: LabelSelector | None = Field(None, alias="podSelector")
    namespace_selector: LabelSelector | None = Field(None, alias="namespaceSelector")
    ip_block: IPBlock | None = Field(None, alias="ipBlock")


class PolicyPort(_Model):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = Field(None, alias="endPort")


class Rule(_Model):
    from_: list[Peer] | None = Field(None, alias="from")
    to: list[Peer] | None = None
    ports: list[PolicyPort] | None = None


class PolicySpec(_Model):
    pod_selector: LabelSelector = Field(alias="podSelector")
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(None, alias="policyTypes")
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None

    def types(self) -> set[str]:
        if self.policy_types is not None:
            return set(self.policy_types)
        return {"Ingress", *(["Egress"] if self.egress else [])}


class Metadata(_Model):
    name: str
    namespace: str = "default"


class NetworkPolicy(_Model):
    metadata: Metadata
    spec: PolicySpec

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"


def parse(raw: Iterable[dict]) -> list[NetworkPolicy]:
    return [NetworkPolicy.model_validate(p) for p in raw]


class Cluster:
    """The label view of the scenario that selectors are evaluated against."""

    def __init__(self, sc: ResolvedScenario):
        self.ns_labels = {ns.name: {**ns.labels, "kubernetes.io/metadata.name": ns.name} for ns in sc.namespaces}
        self.pods = [p for p in sc.pods
                     if not p.spec.host_network and p.spec.phase not in ("Succeeded", "Failed")]

    def peer_pods(self, peer: Peer, policy_ns: str) -> list[ResolvedPod]:
        out = []
        for pod in self.pods:
            if peer.namespace_selector is not None:
                if not peer.namespace_selector.matches(self.ns_labels.get(pod.spec.namespace, {})):
                    continue
            elif pod.spec.namespace != policy_ns:
                continue
            if peer.pod_selector is None or peer.pod_selector.matches(pod.spec.labels):
                out.append(pod)
        return out


def named_port(pod: ResolvedPod, name: str, protocol: str) -> int | None:
    for container in pod.spec.containers:
        for cp in container.ports:
            if cp.name == name and cp.protocol == protocol:
                return cp.container_port
    return None


def _port_match(protocol: str, port: int | None, end_port: int | None) -> str:
    proto = protocol.lower()
    if port is None:
        return f"-p {proto}"
    span = f"{port}:{end_port}" if end_port else f"{port}"
    return f"-p {proto} -m {proto} --dport {span}"


def _in_block(ip: str, block: IPBlock) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr in ipaddress.ip_network(block.cidr) and not any(
        addr in ipaddress.ip_network(e) for e in block.except_)


def _policy_chain(rs: Ruleset, cl: Cluster, policy: NetworkPolicy, pod: ResolvedPod, direction: Direction,
                  chain: str) -> None:
    flag = "-s" if direction == "ingress" else "-d"
    mark = f"-j MARK --set-xmark {ALLOW_MARK}/{ALLOW_MARK}"
    rules = policy.spec.ingress if direction == "ingress" else policy.spec.egress
    rs.chain("filter", chain)
    for index, rule in enumerate(rules or []):
        note = comment(f"{policy.key} {direction} rule {index}")
        peers: list[Peer | None] = list((rule.from_ if direction == "ingress" else rule.to) or []) or [None]
        ports: list[PolicyPort | None] = list(rule.ports or []) or [None]
        for peer in peers:
            for pport in ports:
                named = pport is not None and isinstance(pport.port, str) and not pport.port.isdigit()
                if named and pport is not None and direction == "egress":
                    # A named egress port means "that port on the destination pod": expand per pod.
                    candidates = (cl.peer_pods(peer, policy.metadata.namespace)
                                  if peer is not None and peer.ip_block is None else
                                  [p for p in cl.pods
                                   if peer is None or peer.ip_block is None or _in_block(p.ip, peer.ip_block)])
                    for target in candidates:
                        number = named_port(target, str(pport.port), pport.protocol)
                        if number is not None:
                            rs.add("filter", chain, f"-d {target.ip}/32 "
                                   f"{_port_match(pport.protocol, number, None)} {note} {mark}")
                    continue
                if pport is None:
                    port_match = ""
                elif named:
                    number = named_port(pod, str(pport.port), pport.protocol)
                    if number is None:
                        continue  # the selected pod has no such port: the rule allows nothing here
                    port_match = _port_match(pport.protocol, number, None)
                else:
                    number = int(pport.port) if pport.port is not None else None
                    port_match = _port_match(pport.protocol, number, pport.end_port)
                if peer is None:
                    rs.add("filter", chain, f"{port_match} {note} {mark}".strip())
                elif peer.ip_block is not None:
                    jump = mark
                    if peer.ip_block.except_:
                        jump = "-j " + rs.chain("filter", chain_hash(
                            "KUBE-NWPEXC-", chain, str(index), peer.ip_block.cidr, port_match))
                        for excluded in peer.ip_block.except_:
                            rs.add("filter", jump[3:], f"{flag} {excluded} -j RETURN")
                        rs.add("filter", jump[3:], mark)
                    rs.add("filter", chain, f"{flag} {peer.ip_block.cidr} {port_match} {note} {jump}")
                else:
                    for peer_pod in cl.peer_pods(peer, policy.metadata.namespace):
                        rs.add("filter", chain, f"{flag} {peer_pod.ip}/32 {port_match} {note} {mark}")


def pod_chain(pod: ResolvedPod, direction: Direction) -> str:
    return chain_hash("KUBE-PODIN-" if direction == "ingress" else "KUBE-PODEG-", pod.spec.key)


def rules(sc: ResolvedScenario, node: str) -> Ruleset:
    """The policy agent's filter rules on `node` (empty when the scenario does not enforce policies)."""
    rs = Ruleset()
    if not sc.scenario.network_policy:
        return rs
    policies = parse(sc.scenario.network_policies)
    cl = Cluster(sc)
    rs.chain("filter", "KUBE-ROUTER-FORWARD")
    rs.chain("filter", "KUBE-ROUTER-INPUT")
    rs.add("filter", "INPUT", f'{comment("kube-router netpol - pod egress to this node")} -j KUBE-ROUTER-INPUT')
    rs.add("filter", "FORWARD", f'{comment("kube-router netpol - pod ingress and egress")} -j KUBE-ROUTER-FORWARD')
    for pod in (p for p in cl.pods if p.spec.node == node):
        for direction in ("egress", "ingress"):
            selecting = [
                p for p in policies
                if p.metadata.namespace == pod.spec.namespace and direction.capitalize() in p.spec.types()
                and p.spec.pod_selector.matches(pod.spec.labels)
            ]
            if not selecting:
                continue
            chain = rs.chain("filter", pod_chain(pod, direction))
            flag = "-d" if direction == "ingress" else "-s"
            jump = f'{flag} {pod.ip}/32 {comment(f"{direction} policies of {pod.spec.key}")} -j {chain}'
            rs.add("filter", "KUBE-ROUTER-FORWARD", jump)
            if direction == "egress":
                rs.add("filter", "KUBE-ROUTER-INPUT", jump)
            rs.add("filter", chain, "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
            rs.add("filter", chain, f"-j MARK --set-xmark 0x0/{ALLOW_MARK}")
            for policy in selecting:
                policy_chain = chain_hash("KUBE-NWPLCY-", pod.spec.key, policy.key, direction)
                _policy_chain(rs, cl, policy, pod, direction, policy_chain)
                rs.add("filter", chain, f"{comment(policy.key)} -j {policy_chain}")
            rs.add("filter", chain, f"-m mark --mark {ALLOW_MARK}/{ALLOW_MARK} -j RETURN")
            names = ",".join(p.key for p in selecting)
            rs.add("filter", chain, f'{comment(f"{direction} of {pod.spec.key} denied by {names}"[:250])} -j DROP')
    return rs
