"""The cloud inventory contract: what the cloud inspector collected about the VPC a cluster
runs in (instances, ENIs, security groups, VPC routing, NAT gateways, CLBs).

Written to `<snapshot>/cloud/*.json` by snapshot capture and read back in snapshot mode;
the cloud stage stores it in the object store and the simulator evaluates it with the
cloud engine. Field names are snake_case and provider-neutral where the concept is; the
values keep the provider's vocabulary (Alibaba Cloud first) so evidence reads like the
console. Version bumps only for incompatible changes; new fields are optional.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.schemas import now

CLOUD_VERSION = 1
INVENTORY_FILE = "inventory.json"
# The Service annotation that names the CLB serving it (the cloud stage collects that CLB; the
# simulator evaluates it).
LB_ID_ANNOTATION = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-id"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecurityGroupRule(_Model):
    id: str = ""
    direction: Literal["ingress", "egress"]
    policy: Literal["accept", "drop"]
    priority: int = Field(1, ge=1, le=100, description="1 is the highest priority")
    protocol: Literal["tcp", "udp", "icmp", "icmpv6", "gre", "all"]
    port_from: int = Field(-1, description="-1/-1 means every port (and all non-port protocols)")
    port_to: int = -1
    source_cidr: str | None = None
    dest_cidr: str | None = None
    source_group_id: str | None = None
    dest_group_id: str | None = None
    source_port_from: int = -1
    source_port_to: int = -1
    nic_type: str = "intranet"
    description: str = ""
    # the peer as a prefix list (its entries are in CloudInventory.prefix_lists), a port list
    # instead of port_from/port_to (CloudInventory.port_lists), the account owning source_group_id
    source_prefix_list_id: str | None = None
    dest_prefix_list_id: str | None = None
    port_range_list_id: str | None = None
    source_group_owner_account: str | None = None
    dest_group_owner_account: str | None = None

    @field_validator("policy", "protocol", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    def describe(self) -> str:
        peer_key = "source" if self.direction == "ingress" else "dest"
        peer = (getattr(self, f"{peer_key}_group_id") or getattr(self, f"{peer_key}_prefix_list_id")
                or getattr(self, f"{peer_key}_cidr") or "any")
        owner = getattr(self, f"{peer_key}_group_owner_account")
        peer += f" (account {owner})" if owner else ""
        ports = (f"port list {self.port_range_list_id}" if self.port_range_list_id else
                 "all ports" if self.port_from == -1 else f"{self.port_from}/{self.port_to}")
        return (f"rule {self.id or '?'} ({self.direction} {self.policy} priority {self.priority} "
                f"{self.protocol} {ports} {peer_key} {peer})")


class SecurityGroup(_Model):
    id: str
    name: str = ""
    vpc_id: str | None = None
    type: Literal["normal", "enterprise"] = "normal"
    inner_access_policy: Literal["Accept", "Drop"] = "Accept"
    rules: list[SecurityGroupRule] = Field(default_factory=list)


class PrefixList(_Model):
    """An ECS prefix list: a named set of CIDRs security-group rules can reference."""

    id: str
    name: str = ""
    address_family: str = "IPv4"
    entries: list[str] = Field(default_factory=list, description="CIDRs")


class PortRangeList(_Model):
    """An ECS port list: a named set of port ranges security-group rules can reference."""

    id: str
    name: str = ""
    entries: list[str] = Field(default_factory=list, description='port ranges, "80/80" or "8000/8999"')


class NetworkAclEntry(_Model):
    id: str = ""
    name: str = ""
    policy: Literal["accept", "drop"]
    protocol: str = Field("all", description="all, tcp, udp, icmp, gre, icmpv6")
    cidr: str = Field(description="source CIDR (inbound) or destination CIDR (outbound); empty: not read")
    port: str = Field("-1/-1", description="destination port range; -1/-1 is every port")
    entry_type: str = Field("custom", description="custom, system or service")

    @field_validator("policy", "protocol", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    def describe(self) -> str:
        return f"entry {self.id or self.name or '?'} ({self.policy} {self.protocol} {self.cidr} port {self.port})"


class NetworkAcl(_Model):
    """A VPC network ACL: stateless, ordered inbound and outbound entries, bound to vSwitches."""

    id: str
    name: str = ""
    vpc_id: str | None = None
    status: str = "Available"
    vswitch_ids: list[str] = Field(default_factory=list)
    ingress: list[NetworkAclEntry] = Field(default_factory=list, description="in evaluation order")
    egress: list[NetworkAclEntry] = Field(default_factory=list, description="in evaluation order")


class Eip(_Model):
    """An elastic IP address and what it is bound to (an instance, or one private IP of an ENI)."""

    id: str = Field(description="AllocationId")
    ip: str
    status: str = "InUse"
    instance_type: str = Field("", description="EcsInstance, NetworkInterface, Nat, SlbInstance, HaVip, …")
    instance_id: str | None = None
    private_ip: str | None = Field(None, description="the private IP it serves (ENI bindings)")
    mode: str = Field("NAT", description="NAT, MULTI_BINDED or BINDED (cut-through)")


class Ipv4Gateway(_Model):
    id: str
    vpc_id: str
    enabled: bool = True
    status: str = "Created"
    route_table_id: str | None = Field(None, description="its gateway route table")


class NetworkInterface(_Model):
    """An ENI; its secondary private IPs are Terway pod addresses."""

    id: str
    instance_id: str | None = None
    type: str = "Primary"
    status: str = "InUse"
    vpc_id: str | None = None
    vswitch_id: str | None = None
    primary_ip: str | None = None
    private_ips: list[str] = Field(default_factory=list, description="every private IP, primary first")
    security_group_ids: list[str] = Field(default_factory=list)
    public_ip: str | None = None


class Instance(_Model):
    id: str
    name: str = ""
    region: str = ""
    zone: str = ""
    status: str = "Running"
    vpc_id: str | None = None
    vswitch_id: str | None = None
    private_ips: list[str] = Field(default_factory=list)
    eip: str | None = None
    public_ips: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    network_interface_ids: list[str] = Field(default_factory=list)


class Vpc(_Model):
    id: str
    name: str = ""
    cidrs: list[str] = Field(default_factory=list)
    router_id: str | None = None


class VSwitch(_Model):
    id: str
    vpc_id: str
    cidr: str
    zone: str = ""
    route_table_id: str | None = None
    network_acl_id: str | None = None


class NextHop(_Model):
    type: str = Field(description="Instance, NetworkInterface, NatGateway, HaVip, local, …")
    id: str | None = None
    enabled: bool = True

    @field_validator("type")
    @classmethod
    def _one_name_for_ecs(cls, value: str) -> str:
        # gateway route tables (ListGatewayRouteTableEntries) call an ECS next hop `EcsInstance`, VPC route tables
        # `Instance`: one name, whoever wrote the inventory (the provider, a hand-written snapshot)
        return "Instance" if value == "EcsInstance" else value


class RouteEntry(_Model):
    id: str = ""
    destination: str
    type: str = "Custom"
    status: str = "Available"
    next_hops: list[NextHop] = Field(default_factory=list)


class RouteTable(_Model):
    id: str
    vpc_id: str
    type: Literal["System", "Custom"] = "System"
    associate_type: str | None = Field(None, description="VSwitch, or Gateway for a gateway route table (bound to "
                                                         "an IPv4 gateway); None: not collected")
    vswitch_ids: list[str] = Field(default_factory=list)
    entries: list[RouteEntry] = Field(default_factory=list)


class SnatEntry(_Model):
    id: str
    snat_table_id: str = ""
    source_vswitch_id: str | None = None
    source_cidr: str | None = None
    snat_ip: str = ""
    status: str = "Available"


class DnatEntry(_Model):
    id: str
    forward_table_id: str = ""
    external_ip: str = ""
    external_port: str = ""
    internal_ip: str = ""
    internal_port: str = ""
    protocol: str = "Any"
    status: str = "Available"


class NatGateway(_Model):
    id: str
    name: str = ""
    vpc_id: str
    status: str = "Available"
    network_type: str = "internet"
    ips: list[str] = Field(default_factory=list)
    snat_entries: list[SnatEntry] = Field(default_factory=list)
    dnat_entries: list[DnatEntry] = Field(default_factory=list)
    vswitch_id: str | None = Field(None, description="the vSwitch it sits in: its route table carries the translated "
                                                     "traffic on (to an IPv4 gateway); None: not collected")


class AccessControlList(_Model):
    id: str
    name: str = ""
    entries: list[str] = Field(default_factory=list, description="CIDRs")


class LbBackend(_Model):
    server_id: str
    type: str = "ecs"
    server_ip: str | None = None
    port: int | None = Field(None, description="None: the listener's backend port")
    weight: int = Field(100, description="0: the load balancer forwards it no request")
    server_type: Literal["Master", "Slave"] | None = Field(None, description="in a primary/secondary group")


class BackendHealth(_Model):
    server_id: str
    server_ip: str | None = None
    port: int | None = None
    status: str = Field(description="normal, abnormal, unavailable")


class Listener(_Model):
    port: int
    protocol: Literal["tcp", "udp", "http", "https"]
    status: str = "running"
    backend_port: int | None = None
    vserver_group_id: str | None = None
    acl_status: Literal["on", "off"] = "off"
    acl_type: Literal["white", "black"] | None = None
    acl_id: str | None = None
    acl_ids: list[str] = Field(default_factory=list, description="every ACL of the listener (up to three)")
    health: list[BackendHealth] = Field(default_factory=list)
    scheduler: str | None = Field(None, description="wrr, rr, sch, tch, qch; None: not collected")
    health_check: Literal["on", "off"] | None = Field(None, description="None: not collected")
    master_slave_server_group_id: str | None = None


class VServerGroup(_Model):
    id: str
    name: str = ""
    backends: list[LbBackend] = Field(default_factory=list)


class LoadBalancer(_Model):
    id: str
    name: str = ""
    status: str = "active"
    address: str | None = None
    address_type: str = "internet"
    vpc_id: str | None = None
    listeners: list[Listener] = Field(default_factory=list)
    backends: list[LbBackend] = Field(default_factory=list, description="default server group")
    vserver_groups: list[VServerGroup] = Field(default_factory=list)
    master_slave_server_groups: list[VServerGroup] = Field(default_factory=list,
                                                           description="primary/secondary server groups")


class CloudInventory(_Model):
    version: int = CLOUD_VERSION
    provider: str = Field(description="'alibaba', 'none', …")
    regions: list[str] = Field(default_factory=list)
    collected_at: datetime = Field(default_factory=now)
    modelled: bool = Field(True, description="False: no cloud layer is modelled at all")
    statements: list[str] = Field(default_factory=list, description="what was (not) collected, and why")
    errors: list[str] = Field(default_factory=list, description="partial collection failures")
    nodes: dict[str, str] = Field(default_factory=dict, description="Kubernetes node name → instance id")
    instances: list[Instance] = Field(default_factory=list)
    network_interfaces: list[NetworkInterface] = Field(default_factory=list)
    security_groups: list[SecurityGroup] = Field(default_factory=list)
    vpcs: list[Vpc] = Field(default_factory=list)
    vswitches: list[VSwitch] = Field(default_factory=list)
    route_tables: list[RouteTable] = Field(default_factory=list)
    nat_gateways: list[NatGateway] = Field(default_factory=list)
    load_balancers: list[LoadBalancer] = Field(default_factory=list)
    acls: list[AccessControlList] = Field(default_factory=list)
    # collected since version 1 was defined: None means "not collected" (an older inventory), never "none exist"
    prefix_lists: list[PrefixList] | None = None
    port_lists: list[PortRangeList] | None = None
    network_acls: list[NetworkAcl] | None = None
    eips: list[Eip] | None = None
    ipv4_gateways: list[Ipv4Gateway] | None = None

    def merge(self, other: CloudInventory) -> CloudInventory:
        """Union of two inventories (e.g. one file per region). An optional collection one of them did
        not collect stays not collected (None): part of the cloud would otherwise pass for having none."""
        data = self.model_dump()
        for key, value in other.model_dump().items():
            if key in _OPTIONAL and (value is None or data[key] is None):
                data[key] = None
            elif isinstance(value, list):
                data[key] = data[key] + [v for v in value if v not in data[key]]
            elif isinstance(value, dict):
                data[key] = {**data[key], **value}
        data["modelled"] = self.modelled or other.modelled
        return CloudInventory.model_validate(data)


_OPTIONAL = ("prefix_lists", "port_lists", "network_acls", "eips", "ipv4_gateways")


def empty_inventory(provider: str = "none", reason: str = "no cloud provider configured") -> CloudInventory:
    return CloudInventory(provider=provider, modelled=False,
                          statements=[f"cloud layer not modelled: {reason}"])


def dump_inventory(inventory: CloudInventory, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / INVENTORY_FILE
    path.write_text(inventory.model_dump_json(indent=1))
    return path


def load_inventory(directory: Path) -> CloudInventory:
    """Read every `*.json` in `directory` and merge them; a missing or empty directory
    yields an unmodelled inventory saying so (never a silent empty cloud)."""
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        return empty_inventory("snapshot", f"no cloud inventory in {directory}")
    inventories = []
    for path in files:
        try:
            inventories.append(CloudInventory.model_validate(json.loads(path.read_text())))
        except ValueError as exc:
            raise ValueError(f"{path}: not a cloud inventory: {exc}") from exc
    merged = inventories[0]
    for inv in inventories[1:]:
        merged = merged.merge(inv)
    return merged
