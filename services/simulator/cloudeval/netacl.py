"""VPC network ACLs with Alibaba Cloud's documented semantics ("Network ACLs", VPC user guide;
pages cited in docs/cloud.md).

* A network ACL filters the ENIs of the vSwitches it is bound to; traffic between ENIs of one
  vSwitch is not filtered by it.
* Stateless: the request and its reply are checked separately (inbound at the receiving
  vSwitch, outbound at the sending one).
* Entries are evaluated in order, the first match decides; the port range matches the
  destination port; inbound entries match the source, outbound entries the destination.
* An ACL without entries (or where no entry matches) denies; the cloud's DNS servers
  (100.100.2.128/28, 100.100.2.112/28) and the metadata server (100.100.100.200/32) are
  always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.simulator.cloudeval.index import CloudIndex, contains
from services.simulator.cloudeval.security_groups import Flow
from shared.cloud import NetworkAcl, NetworkAclEntry

ALWAYS_ALLOWED = ("100.100.2.128/28", "100.100.2.112/28", "100.100.100.200/32")
# An unknown destination port is a reply to a client's ephemeral port: Linux clients use 32768-60999
# (net.ipv4.ip_local_port_range; the ACL page lists 32768-61000 for Linux)
EPHEMERAL = (32768, 60999)


@dataclass
class AclDecision:
    acl: NetworkAcl
    vswitch: str
    direction: str
    allowed: bool
    entry: NetworkAclEntry | None = None
    reason: str = ""
    undecided: list[str] = field(default_factory=list)  # entries ahead whose port match is unknown
    assumed: list[str] = field(default_factory=list)  # what was taken for an unknown port

    def evidence(self) -> dict[str, object]:
        return {"network_acl": self.acl.id, "vswitch": self.vswitch, "direction": self.direction,
                "entry": self.entry.model_dump() if self.entry else None, "reason": self.reason,
                "undecided": self.undecided, "assumed": self.assumed}


def _ports(entry: NetworkAclEntry) -> tuple[int, int] | None:
    if entry.port in ("", "-1/-1"):
        return None
    low, _, high = entry.port.partition("/")
    return int(low), int(high or low)


def check(index: CloudIndex, vswitch: str | None, peer_vswitch: str | None, direction: str,
          flow: Flow) -> AclDecision | None:
    """The decision of the network ACL bound to `vswitch` on `flow` crossing it in `direction`
    ("ingress": entering, "egress": leaving); None when no ACL applies (none bound, the other end
    in the same vSwitch, or ACLs not collected — the caller states the latter)."""
    if index.network_acls is None or not vswitch or vswitch == peer_vswitch:
        return None
    acl = index.network_acls.get(vswitch)
    if acl is None:
        return None
    peer = flow.src if direction == "ingress" else flow.dst
    decision = AclDecision(acl=acl, vswitch=vswitch, direction=direction, allowed=False)
    if any(contains(cidr, peer) for cidr in ALWAYS_ALLOWED):
        decision.allowed, decision.reason = True, f"{peer} is a cloud DNS/metadata address, always allowed"
        return decision
    entries = acl.ingress if direction == "ingress" else acl.egress
    pending: list[NetworkAclEntry] = []  # entries ahead of the decision whose port match is unknown
    for entry in entries:
        if entry.protocol not in ("all", flow.protocol):
            continue
        if not entry.cidr:  # an entry whose address the API did not give: its match is unknown
            pending.append(entry)
            continue
        if not contains(entry.cidr, peer):
            continue
        ports = _ports(entry) if flow.protocol in ("tcp", "udp") else None
        if ports is not None:
            if flow.dport is None:
                if ports[0] <= EPHEMERAL[0] and ports[1] >= EPHEMERAL[1]:
                    decision.assumed.append(f"{entry.describe()} covers every Linux ephemeral port "
                                            f"({EPHEMERAL[0]}-{EPHEMERAL[1]}) the unknown destination port can be")
                elif ports[1] < EPHEMERAL[0] or ports[0] > EPHEMERAL[1]:
                    continue
                else:
                    pending.append(entry)
                    continue
            elif not ports[0] <= flow.dport <= ports[1]:
                continue
        decision.allowed, decision.entry, decision.reason = entry.policy == "accept", entry, entry.describe()
        break
    else:
        decision.reason = ("the ACL has no entries: it denies everything" if not entries else
                           f"no {direction} entry matches: denied")
    # an undecided entry only matters if it would have decided the other way
    decision.undecided = [f"{e.describe()}: {'the destination port is unknown' if e.cidr else 'its CIDR was not read'}"
                          for e in pending if (e.policy == "accept") != decision.allowed]
    return decision
