"""NetworkPolicy enforcement as Calico felix programs it (iptables dataplane), for the `calico` and
`terway-eniip` labs (Terway's policy container runs felix in policy-only mode with the same chains).

Rendered after felix's rule renderer (projectcalico/calico felix/rules: static.go, dispatch.go,
endpoints.go, policy.go; libcalico-go's k8s NetworkPolicy conversion), for one node:
  filter FORWARD → cali-FORWARD: clear the mark bits but accept, then `-i cali+` → cali-from-wl-dispatch
    and `-o cali+` → cali-to-wl-dispatch, which go to the per-interface chains by name (a prefix tree of
    cali-from-wl-dispatch-<c> children when several interfaces share the next character; an unknown
    interface is dropped); felix's appended FORWARD rules accept what carries the accept mark.
  cali-fw-<iface> (from the workload: its egress) / cali-tw-<iface> (to it: its ingress): conntrack
    RELATED,ESTABLISHED → ACCEPT, INVALID → DROP, clear accept|pass, (fw only) drop VXLAN/IPIP from the
    workload, then per tier "default": clear pass, jump to each policy chain cali-pi-/cali-po-<id> (or a
    cali-gi-/cali-go-<uid> group chain for consecutive policies with the same selector), return when the
    accept mark is set, and the end-of-tier DROP; with no policy, the namespace and service-account
    profiles (cali-pri-/cali-pro-kns.<ns>, ksa.<ns>.default) and "Drop if no profiles matched".
  A policy chain sets the accept mark (felix's first mark bit of IptablesMarkMask, 0x10000 by default) per
  allowing rule and returns; selectors are ipsets cali40s:<hash> of the endpoints' IPs, named ports
  cali40n:<hash> (hash:ip,port); an ipBlock `except` or several port kinds use felix's match blocks on
  the scratch bits.
  INPUT → cali-INPUT: from a workload `-g cali-wl-to-host` → cali-from-wl-dispatch (its egress policy)
    then DefaultEndpointToHostAction; OUTPUT → cali-OUTPUT returns for `-o cali+` (host → local pod is
    not policed, as upstream requires).
Every rule carries felix's `cali:<hash>` comment (sha224 chained over the chain name and the rules).
Not rendered: host endpoints (their dispatch chains are empty), raw/mangle chains, failsafes, flow logs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from lab.iptables import Ruleset
from lab.netpol import Cluster, NetworkPolicy, Peer, PolicyPort, named_port, parse
from lab.scenario import ResolvedPod, ResolvedScenario

FELIX_CNIS = ("calico", "terway-eniip")
IFACE_PREFIX = "cali"  # FELIX_INTERFACEPREFIX of calico.yaml and of Terway's policy container
MAX_CHAIN, MAX_IPSET, HASH_LEN = 28, 31, 16  # iptables.MaxChainNameLength, ipsets.MaxIPSetNameLength
TIER = "default"
ALL_VXLAN_NET = "cali40all-vxlan-net"  # felix's IPSetIDAllVXLANSourceNets: the VXLAN peers' host IPs
VXLAN_PORT = 4789
Direction = Literal["ingress", "egress"]


@dataclass(frozen=True)
class Marks:
    """felix's mark bits, allocated from IptablesMarkMask's lowest set bit up (dataplane/driver.go):
    accept, pass, drop, scratch-0, scratch-1."""

    accept: int
    pass_: int
    drop: int
    scratch0: int
    scratch1: int

    @classmethod
    def from_mask(cls, mask: int) -> Marks:
        bits = [1 << i for i in range(32) if mask >> i & 1]
        if len(bits) < 5:
            raise ValueError(f"iptablesMarkMask {mask:#x} has fewer than the 5 mark bits felix allocates")
        return cls(*bits[:5])

    @property
    def all_calico(self) -> int:  # static.go allCalicoMarkBits()
        return self.accept | self.pass_ | self.scratch0 | self.scratch1


def _x(value: int) -> str:
    return f"{value:#x}"


def set_mark(bits: int) -> str:
    return f"-j MARK --set-xmark {_x(bits)}/{_x(bits)}"


def clear_mark(bits: int) -> str:
    return f"-j MARK --set-xmark 0x0/{_x(bits)}"


def mark_set(bit: int) -> str:
    return f"-m mark --mark {_x(bit)}/{_x(bit)}"


def mark_clear(bits: int) -> str:
    return f"-m mark --mark 0x0/{_x(bits)}"


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def length_limited(prefix: str, suffix: str, max_len: int = MAX_CHAIN) -> str:
    """libcalico-go hash.GetLengthLimitedID: prefix+suffix, or prefix + "_" + base64url(sha256) cut to fit."""
    suffix = suffix or "_"
    total = len(prefix) + len(suffix)
    if total > max_len or (total == max_len and suffix.startswith("_")):
        digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).decode().rstrip("=")
        return prefix + "_" + digest[:max_len - 1 - len(prefix)]
    return prefix + suffix


def unique_id(prefix: str, content: str) -> str:
    """libcalico-go hash.MakeUniqueID: "<prefix>:" + base64url(sha224("<prefix>:<content>"))."""
    digest = hashlib.sha224(f"{prefix}:{content}".encode()).digest()
    return f"{prefix}:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def ipset_name(set_id: str) -> str:
    """ipsets.IPVersionConfig.NameForMainIPSet for IPv4: "cali40" + the id, truncated to 31 characters."""
    return ("cali40" + set_id)[:MAX_IPSET]


def rule_hashes(chain: str, rules: list[str]) -> list[str]:
    """generictables.RuleHashes: sha224 of the chain name, then chained over each rule."""
    digest = hashlib.sha224(chain.encode()).digest()
    out = []
    for rule in rules:
        digest = hashlib.sha224(digest + rule.encode()).digest()
        out.append(base64.urlsafe_b64encode(digest).decode()[:HASH_LEN])
    return out


def policy_chain(direction: Direction, policy: NetworkPolicy) -> str:
    """rules.PolicyChainName: cali-pi-/cali-po- + the policy ID "knp/<namespace>/<name>", length-limited."""
    return length_limited("cali-pi-" if direction == "ingress" else "cali-po-",
                          f"knp/{policy.metadata.namespace}/{policy.metadata.name}")


def endpoint_chain(prefix: str, iface: str) -> str:
    return length_limited(prefix, iface)


# ------------------------------------------------------------------ selectors (libcalico-go conversion)


def _k8s_selector(match_labels: dict[str, str], expressions: Iterable[tuple[str, str, list[str]]],
                  pod: bool, label_prefix: str = "") -> str:
    """conversion.k8sSelectorToCalico (pod selectors gain the orchestrator term; namespace labels are the
    pcns.-prefixed profile labels felix matches them by)."""
    parts = ["projectcalico.org/orchestrator == 'k8s'"] if pod else []
    parts += [f"{label_prefix}{k} == '{v}'" for k, v in sorted(match_labels.items())]
    ops = {"In": "{k} in {{ '{v}' }}", "NotIn": "{k} not in {{ '{v}' }}", "Exists": "has({k})",
           "DoesNotExist": "! has({k})"}
    parts += [ops[op].format(k=label_prefix + k, v="', '".join(vals)) for k, op, vals in expressions]
    if not pod and not parts:
        return "all()"
    return " && ".join(parts)


def peer_selector(peer: Peer, policy_ns: str) -> str:
    """The selector felix's calculation graph evaluates for a pod/namespace peer (namespaced policy)."""
    ps = peer.pod_selector
    pod = _k8s_selector(ps.match_labels if ps else {},
                        [(r.key, r.operator, r.values) for r in (ps.match_expressions if ps else [])], pod=True)
    if peer.namespace_selector is None:
        return f"({pod}) && projectcalico.org/namespace == '{policy_ns}'"
    ns = peer.namespace_selector
    nss = _k8s_selector(ns.match_labels, [(r.key, r.operator, r.values) for r in ns.match_expressions],
                        pod=False, label_prefix="pcns.")
    return f"({pod}) && ({nss})"


# ------------------------------------------------------------------ the node's rules


@dataclass
class IpSet:
    kind: str  # hash:ip, hash:net, hash:ip,port
    members: set[str] = field(default_factory=set)


@dataclass
class _Blocks:
    """felix's matchBlockBuilder (policy.go): rules that OR within a block and AND blocks on scratch bits."""

    marks: Marks
    rules: list[str] = field(default_factory=list)
    used: bool = False
    first_positive_done: bool = False

    def _start(self, initial: int) -> None:
        if not self.used:
            both = self.marks.scratch0 | self.marks.scratch1
            self.rules.append(f"-j MARK --set-xmark {_x(initial)}/{_x(both)}")
            self.used = True

    def positive(self, matches: list[str]) -> None:
        self._start(0)
        bit = self.marks.scratch1 if self.first_positive_done else self.marks.scratch0
        self.rules += [f"{m} {set_mark(bit)}" for m in matches]
        if self.first_positive_done:
            self.rules.append(f"{mark_clear(self.marks.scratch1)} {clear_mark(self.marks.scratch0)}")
        self.first_positive_done = True

    def negative(self, matches: list[str]) -> None:
        self._start(self.marks.scratch0)
        self.rules += [f"{m} {clear_mark(self.marks.scratch0)}" for m in matches]


@dataclass
class _CalicoRule:
    """One Calico rule of a converted k8s rule (conversion.k8sRuleToCalico): per protocol, per peer."""

    protocol: str | None
    ports: list[tuple[int, int]]  # numeric ranges
    named: list[str]  # named-port ipset names
    selector_set: str | None  # the peer's ipset (src for ingress, dst for egress)
    nets: list[str]
    not_nets: list[str]


class FelixNode:
    """felix's filter-table chains and ipsets on one node."""

    def __init__(self, sc: ResolvedScenario, node: str, iface: Callable[[str], str]):
        self.sc, self.node, self.iface = sc, node, iface
        felix = sc.scenario.felix
        self.marks = Marks.from_mask(int(felix.iptables_mark_mask, 0))
        self.to_host_action = felix.default_endpoint_to_host_action
        self.insert = felix.chain_insert_mode == "insert"
        self.vxlan = sc.scenario.cni == "calico" and sc.scenario.calico.vxlan_mode != "Never"
        self.cluster = Cluster(sc)
        self.policies = sorted(parse(sc.scenario.network_policies) if sc.scenario.network_policy else [],
                               key=lambda p: (p.metadata.namespace, p.metadata.name))  # order 1000, then name
        self.chains: dict[str, list[str]] = {}
        self.ipsets: dict[str, IpSet] = {}
        self.head: dict[str, list[str]] = {"INPUT": [], "FORWARD": [], "OUTPUT": []}  # jumps into felix
        self.tail: list[str] = []  # felix's appended FORWARD rules

    # ---- helpers

    def _chain(self, name: str, rules: list[str] | None = None) -> str:
        self.chains.setdefault(name, []).extend(rules or [])
        return name

    def _ipset(self, set_id: str, kind: str, members: Iterable[str]) -> str:
        name = ipset_name(set_id)
        self.ipsets.setdefault(name, IpSet(kind)).members.update(members)
        return name

    def _selector_set(self, peer: Peer, policy_ns: str) -> str:
        selector = peer_selector(peer, policy_ns)
        pods = self.cluster.peer_pods(peer, policy_ns)
        return self._ipset(unique_id("s", selector), "hash:ip", (p.ip for p in pods))

    def _named_port_set(self, selector: str, pods: list[ResolvedPod], protocol: str, name: str) -> str:
        members = [f"{p.ip},{protocol.lower()}:{n}" for p in pods
                   if (n := named_port(p, name, protocol)) is not None]
        set_id = unique_id("n", f"{unique_id('s', selector)},{protocol.lower()},{name}")
        return self._ipset(set_id, "hash:ip,port", members)

    # ---- policies

    def _convert(self, policy: NetworkPolicy, direction: Direction) -> list[_CalicoRule]:
        ns = policy.metadata.namespace
        out: list[_CalicoRule] = []
        for rule in (policy.spec.ingress if direction == "ingress" else policy.spec.egress) or []:
            peers: list[Peer | None] = list((rule.from_ if direction == "ingress" else rule.to) or []) or [None]
            by_proto: dict[str, list[PolicyPort] | None] = {}
            for port in rule.ports or []:
                if port.port is None:
                    by_proto[port.protocol] = None
                elif (listed := by_proto.setdefault(port.protocol, [])) is not None:  # None: all ports already
                    listed.append(port)
            protocols: list[str | None] = list(sorted(by_proto)) if rule.ports else [None]
            for proto in protocols:
                ports = by_proto.get(proto) if proto else None
                for peer in peers:
                    out.append(self._calico_rule(policy, direction, ns, proto, ports or [], peer))
        return out

    def _calico_rule(self, policy: NetworkPolicy, direction: Direction, ns: str, proto: str | None,
                     ports: list[PolicyPort], peer: Peer | None) -> _CalicoRule:
        numeric: list[tuple[int, int]] = []
        named: list[str] = []
        for p in ports:
            if isinstance(p.port, str) and not p.port.isdigit():
                # the named port's (ip, port) members: the rule's destination selector (egress: the peer;
                # ingress: the policy's namespace, where the selected pod is)
                if direction == "egress" and peer is not None and peer.ip_block is None:
                    selector, pods = peer_selector(peer, ns), self.cluster.peer_pods(peer, ns)
                elif direction == "egress":
                    selector, pods = "all()", self.cluster.pods
                else:
                    selector = f"projectcalico.org/namespace == '{ns}'"
                    pods = [q for q in self.cluster.pods if q.spec.namespace == ns]
                named.append(self._named_port_set(selector, pods, p.protocol, p.port))
            elif p.port is not None:
                numeric.append((int(p.port), p.end_port or int(p.port)))
        sel_set = nets = None
        not_nets: list[str] = []
        if peer is not None and peer.ip_block is not None:
            nets, not_nets = [peer.ip_block.cidr], list(peer.ip_block.except_)
        elif peer is not None:
            sel_set = self._selector_set(peer, ns)
        return _CalicoRule(proto, sorted(set(numeric)), named, sel_set, nets or [], not_nets)

    def _render_rule(self, r: _CalicoRule, direction: Direction) -> list[str]:
        """ProtoRuleToIptablesRules for an allow rule: match blocks, then the match setting the accept mark,
        then the return when it is set."""
        side = "src" if direction == "ingress" else "dst"
        flag = "-s" if side == "src" else "-d"
        proto = f"-p {r.protocol.lower()}" if r.protocol else ""
        blocks = _Blocks(self.marks)
        ports = ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in r.ports)
        port_match = f"-m multiport --destination-ports {ports}" if ports else ""
        if (1 if ports else 0) + len(r.named) > 1:
            blocks.positive(([f"{proto} {port_match}"] if ports else [])
                            + [f"-m set --match-set {n} dst,dst" for n in r.named])
            port_match = ""
        elif r.named:
            port_match = f"-m set --match-set {r.named[0]} dst,dst"
        net_match = f"{flag} {r.nets[0]}" if r.nets else ""
        if len(r.nets) + len(r.not_nets) > 1:
            blocks.negative([f"{flag} {n}" for n in r.not_nets])
        elif r.not_nets:
            net_match = f"! {flag} {r.not_nets[0]}"
        set_match = f"-m set --match-set {r.selector_set} {side}" if r.selector_set else ""
        parts = [proto, net_match, set_match, port_match]
        if blocks.used:
            parts.append(mark_set(self.marks.scratch0))
        match = " ".join(p for p in parts if p)
        return [*blocks.rules, f"{match} {set_mark(self.marks.accept)}".strip(),
                f"{mark_set(self.marks.accept)} -j RETURN"]

    def _policy_chain(self, policy: NetworkPolicy, direction: Direction) -> str:
        name = policy_chain(direction, policy)
        if name in self.chains:
            return name
        rules = [line for r in self._convert(policy, direction) for line in self._render_rule(r, direction)]
        while rules and rules[-1].endswith("-j RETURN"):  # trailing returns are no-ops: felix strips them
            rules.pop()
        note = _comment(f"KubernetesNetworkPolicy {policy.key} {direction}")
        rules = [f"{note} {rules[0]}", *rules[1:]] if rules else [note]
        return self._chain(name, rules)

    def _groups(self, selecting: list[NetworkPolicy], direction: Direction) -> list[str]:
        """Policy groups (endpoints.go PolicyGroup): consecutive policies with the same selector share a
        cali-gi-/cali-go- chain; a group of one is jumped to directly."""
        groups: list[list[NetworkPolicy]] = []
        for p in selecting:
            if groups and groups[-1][0].spec.pod_selector == p.spec.pod_selector:
                groups[-1].append(p)
            else:
                groups.append([p])
        targets = []
        for group in groups:
            chains = [self._policy_chain(p, direction) for p in group]
            if len(group) == 1:
                targets.append(chains[0])
                continue
            sel = _k8s_selector(group[0].spec.pod_selector.match_labels,
                                [(r.key, r.operator, r.values) for r in group[0].spec.pod_selector.match_expressions],
                                pod=True)
            lines = [sel, "inbound" if direction == "ingress" else "outbound", str(len(group))]
            lines += [f"{{Name: {p.metadata.name}, Namespace: {p.metadata.namespace}, Kind: KubernetesNetworkPolicy}}"
                      for p in group]
            uid = base64.urlsafe_b64encode(hashlib.sha3_224("".join(f"{x}\n" for x in lines).encode())
                                           .digest()).decode().rstrip("=")[:MAX_CHAIN - 8]
            name = ("cali-gi-" if direction == "ingress" else "cali-go-") + uid
            both = self.marks.pass_ | self.marks.accept
            rules = []
            for i, chain in enumerate(chains):
                if i and i % 5 == 0:
                    rules.append(f"-m mark ! --mark 0x0/{_x(both)} {_comment('Return on verdict')} -j RETURN")
                rules.append(f"-j {chain}" if i % 5 == 0 else f"{mark_clear(both)} -j {chain}")
            targets.append(self._chain(name, rules))
        return targets

    def _endpoint_chain(self, pod: ResolvedPod, direction: Direction) -> str:
        """endpointIptablesChain for a workload: cali-tw-<iface> (ingress) / cali-fw-<iface> (egress)."""
        m = self.marks
        iface = self.iface(pod.spec.key)
        name = endpoint_chain("cali-tw-" if direction == "ingress" else "cali-fw-", iface)
        rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                 "-m conntrack --ctstate INVALID -j DROP",
                 clear_mark(m.accept | m.pass_)]
        if direction == "egress":  # AllowVXLANPacketsFromWorkloads / AllowIPIPPacketsFromWorkloads false
            rules += [f"-p udp -m multiport --destination-ports {VXLAN_PORT} "
                      f"{_comment('Drop VXLAN encapped packets originating in workloads')} -j DROP",
                      f"-p ipencap {_comment('Drop IPinIP encapped packets originating in workloads')} -j DROP"]
        selecting = [p for p in self.policies
                     if p.metadata.namespace == pod.spec.namespace and direction.capitalize() in p.spec.types()
                     and p.spec.pod_selector.matches(pod.spec.labels)]
        if selecting:
            rules.append(f"{_comment(f'Start of tier {TIER}')} {clear_mark(m.pass_)}")
            for target in self._groups(selecting, direction):
                rules += [f"{mark_clear(m.pass_)} -j {target}",
                          f"{mark_set(m.accept)} {_comment('Return if policy accepted')} -j RETURN"]
            rules.append(f"{mark_clear(m.pass_)} "
                         f"{_comment(f'End of tier {TIER}. Drop if no policies passed packet')} -j DROP")
        pfx = "cali-pri-" if direction == "ingress" else "cali-pro-"
        for profile in (f"kns.{pod.spec.namespace}", f"ksa.{pod.spec.namespace}.default"):
            rules += [f"-j {self._profile_chain(pfx, profile, direction)}",
                      f"{mark_set(m.accept)} {_comment('Return if profile accepted')} -j RETURN"]
        rules.append(f"{_comment('Drop if no profiles matched')} -j DROP")
        return self._chain(name, rules)

    def _profile_chain(self, prefix: str, profile: str, direction: Direction) -> str:
        """The namespace profile allows everything; the service account's carries no rules."""
        name = length_limited(prefix, profile)
        if name not in self.chains:
            note = _comment(f"Profile {profile} {direction}")
            self._chain(name, [f"{note} {set_mark(self.marks.accept)}" if profile.startswith("kns.") else note])
        return name

    def _dispatch(self, root: str, flag: str, target_prefix: str, ifaces: list[str]) -> None:
        """dispatch.go buildSingleDispatchChainTree: goto per interface, children per next character."""
        names = sorted(set(ifaces))
        common = names[0] if len(names) == 1 else _common_prefix(names)
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(n[:len(common) + 1] if len(n) > len(common) else common, []).append(n)
        drop = f"{_comment('Unknown interface')} -j DROP"
        rules = []
        for prefix, members in groups.items():
            if len(members) > 1:
                child = f"{root}-{prefix[len(common):]}"
                rules.append(f"{flag} {prefix}+ -g {child}")
                self._chain(child, [f"{flag} {n} -g {endpoint_chain(target_prefix, n)}" for n in members] + [drop])
            else:
                rules.append(f"{flag} {members[0]} -g {endpoint_chain(target_prefix, members[0])}")
        self._chain(root, [*rules, drop])

    def build(self) -> FelixNode:
        m = self.marks
        pods = [p for p in self.cluster.pods if p.spec.node == self.node]
        for pod in pods:
            self._endpoint_chain(pod, "egress")
            self._endpoint_chain(pod, "ingress")
        ifaces = [self.iface(p.spec.key) for p in pods]
        if ifaces:
            self._dispatch("cali-from-wl-dispatch", "-i", "cali-fw-", ifaces)
            self._dispatch("cali-to-wl-dispatch", "-o", "cali-tw-", ifaces)
        else:
            self._chain("cali-from-wl-dispatch", [f"{_comment('Unknown interface')} -j DROP"])
            self._chain("cali-to-wl-dispatch", [f"{_comment('Unknown interface')} -j DROP"])
        for empty in ("cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block",
                      "cali-from-host-endpoint", "cali-to-host-endpoint"):
            self._chain(empty)
        wl = f"{IFACE_PREFIX}+"
        self._chain("cali-FORWARD", [
            clear_mark(m.all_calico & ~m.accept),
            f"{mark_clear(m.accept)} -j cali-from-hep-forward",
            f"-i {wl} -j cali-from-wl-dispatch", f"-o {wl} -j cali-to-wl-dispatch",
            "-j cali-to-hep-forward", "-j cali-cidr-block"])
        vxlan_in, vxlan_out = [], []
        if self.vxlan:
            self._ipset(ALL_VXLAN_NET[6:], "hash:net", (f"{n.ip}/32" for n in self.sc.nodes if n.name != self.node))
            udp = f"-p udp -m multiport --destination-ports {VXLAN_PORT}"
            vxlan_in = [f"{udp} -m set --match-set {ALL_VXLAN_NET} src -m addrtype --dst-type LOCAL "
                        f"{_comment('Allow IPv4 VXLAN packets from allowed hosts')} -j ACCEPT",
                        f"{udp} -m addrtype --dst-type LOCAL "
                        f"{_comment('Drop IPv4 VXLAN packets from non-allowed hosts')} -j DROP"]
            vxlan_out = [f"{udp} -m addrtype --src-type LOCAL -m set --match-set {ALL_VXLAN_NET} dst "
                         f"{_comment('Allow IPv4 VXLAN packets to other allowed hosts')} -j ACCEPT"]
        accepted = f"{mark_set(m.accept)} {_comment('Host endpoint policy accepted packet.')} -j ACCEPT"
        self._chain("cali-INPUT", [*vxlan_in, f"-i {wl} -g cali-wl-to-host", f"{mark_set(m.accept)} -j ACCEPT",
                                   clear_mark(m.all_calico), "-j cali-from-host-endpoint", accepted])
        to_host = _comment("Configured DefaultEndpointToHostAction")
        self._chain("cali-wl-to-host", ["-j cali-from-wl-dispatch", f"{to_host} -j {self.to_host_action}"])
        self._chain("cali-OUTPUT", [f"{mark_set(m.accept)} -j ACCEPT", f"-o {wl} -j RETURN", *vxlan_out,
                                    clear_mark(m.all_calico), "-m conntrack ! --ctstate DNAT -j cali-to-host-endpoint",
                                    accepted])
        for builtin in self.head:
            self.head[builtin].append(f"-j cali-{builtin}")
        self.tail = [f"{mark_set(m.accept)} {_comment('Policy explicitly accepted packet.')} -j ACCEPT",
                     set_mark(m.accept)]
        return self

    # ---- output

    def rulesets(self) -> tuple[Ruleset, Ruleset]:
        """(rules before everyone else's, rules after): ChainInsertMode insert puts felix's jumps first in
        the builtin chains, append after the other agents'; felix's FORWARD accept rules always come last."""
        head, tail = Ruleset(), Ruleset()
        for name, rules in self.chains.items():
            head.chain("filter", name)
            for h, rule in zip(rule_hashes(name, rules), rules, strict=True):
                head.add("filter", name, f'-m comment --comment "cali:{h}" {rule}'.rstrip())
        for builtin, jumps in self.head.items():
            target = head if self.insert else tail
            for h, rule in zip(rule_hashes(builtin, jumps), jumps, strict=True):
                target.add("filter", builtin, f'-m comment --comment "cali:{h}" {rule}')
        for h, rule in zip(rule_hashes("FORWARD", self.tail), self.tail, strict=True):
            tail.add("filter", "FORWARD", f'-m comment --comment "cali:{h}" {rule}')
        return head, tail

    def ipset_restore(self) -> str:
        """`ipset restore` input: felix's selector and named-port sets (members replaced on every sync)."""
        lines = []
        for name, s in sorted(self.ipsets.items()):
            lines += [f"create {name} {s.kind} family inet -exist", f"flush {name}"]
            lines += [f"add {name} {m} -exist" for m in sorted(s.members)]
        return "\n".join(lines) + "\n" if lines else ""


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def enforces(sc: ResolvedScenario) -> bool:
    """Calico always runs felix; Terway's policy container only unless eni-config disables policies."""
    return sc.scenario.cni == "calico" or (sc.scenario.cni in FELIX_CNIS and sc.scenario.network_policy)


def node(sc: ResolvedScenario, name: str, iface: Callable[[str], str]) -> FelixNode:
    """felix's chains and ipsets for node `name` (`iface`: a pod key's host-side interface name)."""
    return FelixNode(sc, name, iface).build()
