"""VPC routing and NAT gateway SNAT lookups.

A vSwitch forwards by the route table associated with it (a custom table, else the VPC's
system table): longest prefix over the entries that are Available, plus the implicit
local routes of the VPC's vSwitch CIDRs (traffic between vSwitches of one VPC is always
delivered). A NAT gateway translates a source only when an Available SNAT entry covers it:
by its vSwitch (SourceVSwitchId), or by CIDR (a custom CIDR, or an instance's address/32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.simulator.cloudeval.index import IP, CloudIndex, contains, network
from shared.cloud import NatGateway, NetworkInterface, RouteEntry, RouteTable, SnatEntry, VSwitch


@dataclass
class RouteDecision:
    table: RouteTable | None
    entry: RouteEntry | None = None
    local: VSwitch | None = None  # delivered inside the VPC through this vSwitch's local route
    notes: list[str] = field(default_factory=list)

    @property
    def next_hop(self) -> tuple[str, str | None] | None:
        if self.local is not None:
            return ("local", self.local.id)
        if self.entry is None:
            return None
        hop = next((h for h in self.entry.next_hops if h.enabled), None)
        return (hop.type, hop.id) if hop else None

    @property
    def is_default(self) -> bool:
        return self.entry is not None and network(self.entry.destination).prefixlen == 0

    def describe(self) -> str:
        if self.table is None:
            return "no route table"
        if self.local is not None:
            return f"{self.table.id}: local route of vSwitch {self.local.id} ({self.local.cidr})"
        if self.entry is None:
            return f"{self.table.id}: no matching route entry"
        hop = self.next_hop
        return f"{self.table.id}: {self.entry.destination} → {hop[0]} {hop[1] or ''}".rstrip() if hop else \
            f"{self.table.id}: {self.entry.destination} has no enabled next hop"

    def evidence(self) -> dict[str, object]:
        return {"route_table": self.table.id if self.table else None,
                "route_table_type": self.table.type if self.table else None,
                "entry": self.entry.model_dump() if self.entry else None,
                "local_vswitch": self.local.id if self.local else None, "notes": self.notes}


def route_lookup(index: CloudIndex, nic: NetworkInterface, dst: IP) -> RouteDecision:
    table = index.route_table_of(nic.vswitch_id, nic.vpc_id)
    decision = RouteDecision(table=table)
    if table is None:
        decision.notes.append(f"no route table found for vSwitch {nic.vswitch_id}")
        return decision
    best: tuple[int, RouteEntry | VSwitch] | None = None
    for vsw, net in index.vswitch_networks:
        if vsw.vpc_id == table.vpc_id and dst.version == net.version and dst in net \
                and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, vsw)
    for entry in table.entries:
        if not contains(entry.destination, dst):
            continue
        net = network(entry.destination)
        if entry.status != "Available":
            decision.notes.append(f"route entry {entry.destination} is {entry.status}, not Available: ignored")
            continue
        if entry.next_hops and entry.next_hops[0].type == "local":
            continue  # the vSwitch local routes are modelled from the vSwitches themselves
        if best is None or net.prefixlen > best[0]:
            best = (net.prefixlen, entry)
    if best is not None:
        if isinstance(best[1], VSwitch):
            decision.local = best[1]
        else:
            decision.entry = best[1]
    return decision


def snat_entry_for(index: CloudIndex, nat: NatGateway, src: IP, nic: NetworkInterface) -> SnatEntry | None:
    """The SNAT entry that translates `src` leaving through `nic`, most specific first."""
    candidates: list[tuple[int, SnatEntry]] = []
    for entry in nat.snat_entries:
        if entry.status != "Available":
            continue
        if entry.source_vswitch_id:
            vsw = index.vswitches.get(entry.source_vswitch_id)
            if vsw is not None and contains(vsw.cidr, src):
                candidates.append((network(vsw.cidr).prefixlen, entry))
                continue
            if vsw is None and entry.source_vswitch_id == nic.vswitch_id:  # vSwitch not collected: by id
                candidates.append((0, entry))
                continue
        if entry.source_cidr and contains(entry.source_cidr, src):
            candidates.append((network(entry.source_cidr).prefixlen, entry))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None
