"""Read Calico felix's policy chains back to the NetworkPolicies they enforce.

felix drops a workload's packet in its endpoint chain (cali-tw-<iface> for ingress, cali-fw-<iface> for
egress) with the end-of-tier rule ("End of tier default. Drop if no policies passed packet"; before Calico
v3.30 "Drop if no policies passed packet"), after jumping to one chain per policy (cali-pi-/cali-po-<id>,
often hashed to `cali-pi-_<hash>`) or per policy group (cali-gi-/cali-go-<uid>). The names are not in the
dropping rule: each policy chain's first rule carries felix's comment "<Kind> <namespace>/<name>
<direction>" (before v3.32: "Policy <namespace>/knp.default.<name> ingress"), which this reads.
"""

from __future__ import annotations

import re

from services.simulator.dataplane.netfilter.model import Ruleset

ENDPOINT_CHAIN = re.compile(r"^cali-[tf]w-")
TIER_DROP = re.compile(r"if no policies passed packet", re.IGNORECASE)
_JUMP = re.compile(r"\s-[jg]\s+(cali-(?:p[io]|g[io])-\S+)")
_K8S_PREFIX = re.compile(r"^(?:[\w-]+\.)?knp\.default\.")  # felix < v3.32 names k8s policies knp.default.<name>


def _policy_name(first_line: str) -> str | None:
    for text in re.findall(r'--comment "([^"]*)"', first_line):
        words = text.split()
        if len(words) == 3 and (words[0].endswith("NetworkPolicy") or words[0] == "Policy") \
                and words[2] in ("ingress", "egress"):
            namespace, _, name = words[1].rpartition("/")
            name = _K8S_PREFIX.sub("", name)
            return f"{namespace}/{name}" if namespace else name
    return None


def policies_behind(rs: Ruleset, table: str, chain: str, depth: int = 0) -> list[str]:
    """The policies (namespace/name) whose chains `chain` consults, in order (group chains followed)."""
    found = rs.chain(table, chain)
    if found is None or depth > 3:
        return []
    out: list[str] = []
    for line in found.lines:
        match = _JUMP.search(line)
        if match is None:
            continue
        target = match.group(1)
        if target.startswith(("cali-gi-", "cali-go-")):
            out += [p for p in policies_behind(rs, table, target, depth + 1) if p not in out]
            continue
        policy = rs.chain(table, target)
        name = _policy_name(policy.lines[0]) if policy is not None and policy.lines else None
        if name is not None and name not in out:
            out.append(name)
    return out


def tier_drop_policies(rulesets: list[Ruleset], table: str, chain: str, rule: str) -> list[str]:
    """The policies a felix end-of-tier drop in a workload chain speaks for ([] for any other rule)."""
    if not ENDPOINT_CHAIN.match(chain) or not TIER_DROP.search(rule):
        return []
    for rs in rulesets:
        if names := policies_behind(rs, table, chain):
            return names
    return []
