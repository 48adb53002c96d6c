"""Alibaba Cloud provider: reads ECS, VPC and SLB state through the official SDK
(aliyun-python-sdk-core with -ecs, -vpc, -slb) into the cloud inventory.

* Nodes map to ECS instances through `spec.providerID` (`<region>.<instance-id>`), the region
  from the `topology.kubernetes.io/region` label (or the providerID); a node without a
  providerID is matched by its InternalIP and that is stated.
* Every list call uses a bounded page size and follows PageNumber or NextToken; throttling
  and transient errors are retried with exponential back-off and jitter.
* Credentials come from ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET (or ALICLOUD_ACCESS_KEY/
  ALICLOUD_SECRET_KEY) or a mounted secret; the secret never reaches logs or results.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkecs.request.v20140526.DescribeInstancesRequest import DescribeInstancesRequest
from aliyunsdkecs.request.v20140526.DescribeNetworkInterfacesRequest import DescribeNetworkInterfacesRequest
from aliyunsdkecs.request.v20140526.DescribePortRangeListEntriesRequest import DescribePortRangeListEntriesRequest
from aliyunsdkecs.request.v20140526.DescribePrefixListAttributesRequest import DescribePrefixListAttributesRequest
from aliyunsdkecs.request.v20140526.DescribeSecurityGroupAttributeRequest import DescribeSecurityGroupAttributeRequest
from aliyunsdkecs.request.v20140526.DescribeSecurityGroupsRequest import DescribeSecurityGroupsRequest
from aliyunsdkslb.request.v20140515.DescribeAccessControlListAttributeRequest import (
    DescribeAccessControlListAttributeRequest,
)
from aliyunsdkslb.request.v20140515.DescribeHealthStatusRequest import DescribeHealthStatusRequest
from aliyunsdkslb.request.v20140515.DescribeLoadBalancerAttributeRequest import DescribeLoadBalancerAttributeRequest
from aliyunsdkslb.request.v20140515.DescribeLoadBalancersRequest import DescribeLoadBalancersRequest
from aliyunsdkslb.request.v20140515.DescribeLoadBalancerTCPListenerAttributeRequest import (
    DescribeLoadBalancerTCPListenerAttributeRequest,
)
from aliyunsdkslb.request.v20140515.DescribeLoadBalancerUDPListenerAttributeRequest import (
    DescribeLoadBalancerUDPListenerAttributeRequest,
)
from aliyunsdkslb.request.v20140515.DescribeMasterSlaveServerGroupAttributeRequest import (
    DescribeMasterSlaveServerGroupAttributeRequest,
)
from aliyunsdkslb.request.v20140515.DescribeVServerGroupAttributeRequest import DescribeVServerGroupAttributeRequest
from aliyunsdkvpc.request.v20160428.DescribeEipAddressesRequest import DescribeEipAddressesRequest
from aliyunsdkvpc.request.v20160428.DescribeForwardTableEntriesRequest import DescribeForwardTableEntriesRequest
from aliyunsdkvpc.request.v20160428.DescribeNatGatewaysRequest import DescribeNatGatewaysRequest
from aliyunsdkvpc.request.v20160428.DescribeNetworkAclsRequest import DescribeNetworkAclsRequest
from aliyunsdkvpc.request.v20160428.DescribeRouteEntryListRequest import DescribeRouteEntryListRequest
from aliyunsdkvpc.request.v20160428.DescribeRouteTableListRequest import DescribeRouteTableListRequest
from aliyunsdkvpc.request.v20160428.DescribeSnatTableEntriesRequest import DescribeSnatTableEntriesRequest
from aliyunsdkvpc.request.v20160428.DescribeVpcsRequest import DescribeVpcsRequest
from aliyunsdkvpc.request.v20160428.DescribeVSwitchesRequest import DescribeVSwitchesRequest
from aliyunsdkvpc.request.v20160428.ListGatewayRouteTableEntriesRequest import ListGatewayRouteTableEntriesRequest
from aliyunsdkvpc.request.v20160428.ListIpv4GatewaysRequest import ListIpv4GatewaysRequest

from services.cloud.provider import CloudApiError, CloudError, CloudProvider
from shared.cloud import (
    AccessControlList,
    BackendHealth,
    CloudInventory,
    DnatEntry,
    Eip,
    Instance,
    Ipv4Gateway,
    LbBackend,
    Listener,
    LoadBalancer,
    NatGateway,
    NetworkAcl,
    NetworkAclEntry,
    NetworkInterface,
    NextHop,
    PortRangeList,
    PrefixList,
    RouteEntry,
    RouteTable,
    SecurityGroup,
    SecurityGroupRule,
    SnatEntry,
    Vpc,
    VServerGroup,
    VSwitch,
)
from shared.config import Settings

log = logging.getLogger("netdiag.cloud.alibaba")

REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
PAGE_SIZE = 50  # within every API's maximum (VPC lists cap at 50)
RETRYABLE = ("Throttling", "ServiceUnavailable", "InternalError", "UnknownError")
FATAL = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidAccessKeySecret", "IncompleteSignature")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)

    @classmethod
    def load(cls, secret_file: Path | None = None, env: dict[str, str] | None = None) -> Credentials:
        env = dict(os.environ) if env is None else env
        pairs = (("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
                 ("ALICLOUD_ACCESS_KEY_ID", "ALICLOUD_ACCESS_KEY_SECRET"),
                 ("ALICLOUD_ACCESS_KEY", "ALICLOUD_SECRET_KEY"))
        for key_id, secret in pairs:
            if env.get(key_id) and env.get(secret):
                return cls(env[key_id], env[secret])
        if secret_file is not None:
            return cls._from_file(secret_file)
        raise CloudError("no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                         "ALIBABA_CLOUD_ACCESS_KEY_SECRET, or mount a secret (cloud_credentials_file)")

    @classmethod
    def _from_file(cls, path: Path) -> Credentials:
        """A Kubernetes secret mounted as a directory of key files, or one JSON file."""
        try:
            if path.is_dir():
                values = {p.name: p.read_text().strip() for p in path.iterdir() if p.is_file()}
            else:
                values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CloudError(f"cannot read the cloud credentials secret {path}: {type(exc).__name__}") from None
        for key_id, secret in (("access-key-id", "access-key-secret"), ("AccessKeyId", "AccessKeySecret")):
            if values.get(key_id) and values.get(secret):
                return cls(values[key_id], values[secret])
        raise CloudError(f"{path} holds no access-key-id/access-key-secret (or AccessKeyId/AccessKeySecret)")


def _items(body: dict[str, Any], outer: str, inner: str) -> list[Any]:
    """`{outer: {inner: [...]}}` (RPC XML-style), or `{outer: [...]}` (the newer list APIs)."""
    value = body.get(outer) or {}
    return value if isinstance(value, list) else value.get(inner) or []


class AlibabaProvider(CloudProvider):
    name = "alibaba"

    def __init__(self, credentials: Credentials, region: str | None = None, endpoint: str | None = None,
                 max_attempts: int = 6, backoff_s: float = 0.2, workers: int = 8, timeout_s: float = 10.0) -> None:
        self.credentials = credentials
        self.default_region = region
        self.protocol, self.endpoint = "https", endpoint
        if endpoint and "://" in endpoint:
            self.protocol, self.endpoint = endpoint.split("://", 1)
            self.endpoint = self.endpoint.rstrip("/")
        self.max_attempts, self.backoff_s, self.workers, self.timeout_s = max_attempts, backoff_s, workers, timeout_s
        self._local = threading.local()
        self.calls = 0
        self.retries = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AlibabaProvider:
        return cls(Credentials.load(settings.cloud_credentials_file), region=settings.cloud_region,
                   endpoint=settings.cloud_endpoint)

    # ------------------------------------------------------------ calls

    def _client(self, region: str) -> AcsClient:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if region not in clients:
            # our own retry loop decides on back-off; the SDK's would double it
            clients[region] = AcsClient(self.credentials.access_key_id, self.credentials.access_key_secret,
                                        region, auto_retry=False, timeout=int(self.timeout_s),
                                        connect_timeout=int(self.timeout_s))
        return clients[region]

    def call(self, region: str, request: RpcRequest, **params: Any) -> dict[str, Any]:
        for key, value in params.items():
            if value is not None:
                request.add_query_param(key, value)
        if self.endpoint:
            request.set_endpoint(self.endpoint)
            request.set_protocol_type(self.protocol)
        action = request.get_action_name()
        for attempt in range(1, self.max_attempts + 1):
            self.calls += 1
            try:
                return json.loads(self._client(region).do_action_with_exception(request))
            except ServerException as exc:
                code = exc.get_error_code()
                if code.startswith(FATAL):
                    raise CloudError(f"{action}: {code} (check the AccessKey)") from None
                if not code.startswith(RETRYABLE) or attempt == self.max_attempts:
                    # the SDK's exception never leaves the provider: callers handle one error type
                    raise CloudApiError(action, code, exc.get_error_msg()) from None
            except ClientException as exc:
                if exc.get_error_code() != "SDK.HttpError" or attempt == self.max_attempts:
                    raise CloudError(f"{action}: {exc.get_error_code()}: {exc.get_error_msg()}") from None
            self.retries += 1
            delay = min(5.0, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.info("%s throttled or unavailable (attempt %d); retrying in %.2fs", action, attempt, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def paged(self, region: str, make: Callable[[], RpcRequest], outer: str, inner: str,
              **params: Any) -> Iterator[dict[str, Any]]:
        """PageNumber/PageSize pagination, stopping at TotalCount."""
        number = 1
        while True:
            body = self.call(region, make(), PageNumber=number, PageSize=PAGE_SIZE, **params)
            items = _items(body, outer, inner)
            yield from items
            if not items or number * int(body.get("PageSize", PAGE_SIZE)) >= int(body.get("TotalCount", 0)):
                return
            number += 1

    def tokened(self, region: str, make: Callable[[], RpcRequest], outer: str, inner: str,
                size_key: str = "MaxResults", **params: Any) -> Iterator[dict[str, Any]]:
        """NextToken pagination, for the APIs where the PageNumber style is deprecated."""
        token = None
        while True:
            body = self.call(region, make(), NextToken=token, **{size_key: PAGE_SIZE}, **params)
            yield from _items(body, outer, inner)
            token = body.get("NextToken")
            if not token:
                return

    # ------------------------------------------------------------ collection

    def collect(self, nodes: list[dict[str, Any]], addresses: Iterable[str] = (),
                load_balancer_ids: Iterable[str] = ()) -> CloudInventory:
        by_region, unmatched = self._node_regions(nodes)
        statements: list[str] = []
        errors: list[str] = []
        inv = CloudInventory(provider=self.name, regions=sorted(by_region) or [r for r in [self.default_region] if r],
                             prefix_lists=[], port_lists=[], network_acls=[], eips=[], ipv4_gateways=[])
        for region in inv.regions:
            wanted = by_region.get(region, {})
            instances = self._instances(region, list(wanted.values()))
            vpc_ids = sorted({i.vpc_id for i in instances if i.vpc_id})
            missing = sorted(set(wanted.values()) - {i.id for i in instances})
            for instance_id in missing:
                errors.append(f"instance {instance_id} (node {_node_of(wanted, instance_id)}) not found in {region}")
            for vpc_id in vpc_ids:
                self._collect_vpc(region, vpc_id, inv, errors)
            inv.nodes.update({n: i for n, i in wanted.items() if i not in missing})
            self._collect_lbs(region, set(addresses), set(load_balancer_ids), inv, errors)
            self._collect_rule_lists(region, inv, errors)
            try:  # EIPs are regional: the ones bound to secondary private IPs of ENIs matter here
                _add(inv, "eips", [_eip(e) for e in self.paged(region, DescribeEipAddressesRequest,
                                                               "EipAddresses", "EipAddress")])
            except CloudApiError as exc:
                inv.eips = None
                errors.append(f"EIPs of {region}: {exc}")
        if unmatched:
            self._match_by_ip(unmatched, inv, statements)
        inv.statements.extend(statements)
        inv.errors.extend(errors)
        return inv

    def _node_regions(self, nodes: list[dict[str, Any]]) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
        by_region: dict[str, dict[str, str]] = {}
        unmatched = []
        for node in nodes:
            name = node.get("metadata", {}).get("name", "?")
            provider_id = node.get("spec", {}).get("providerID", "")
            labels = node.get("metadata", {}).get("labels", {}) or {}
            region = next((labels[k] for k in REGION_LABELS if labels.get(k)), None)
            if provider_id.count(".") >= 1 and "://" not in provider_id:
                id_region, instance_id = provider_id.split(".", 1)
                by_region.setdefault(region or id_region, {})[name] = instance_id
            elif region or self.default_region:
                unmatched.append(node)
                by_region.setdefault(region or self.default_region or "", {})
            else:
                unmatched.append(node)
        return by_region, unmatched

    def _match_by_ip(self, nodes: list[dict[str, Any]], inv: CloudInventory, statements: list[str]) -> None:
        owner = {ip: i.id for i in inv.instances for ip in i.private_ips}
        for node in nodes:
            name = node.get("metadata", {}).get("name", "?")
            ips = [a.get("address") for a in node.get("status", {}).get("addresses", [])
                   if a.get("type") == "InternalIP"]
            match = next((owner[ip] for ip in ips if ip in owner), None)
            if match:
                inv.nodes[name] = match
                statements.append(f"node {name} has no Alibaba Cloud providerID; matched to {match} by InternalIP")
            else:
                inv.errors.append(f"node {name}: no providerID and no instance owns its InternalIP {ips}")

    def _instances(self, region: str, ids: list[str]) -> list[Instance]:
        found = []
        for start in range(0, len(ids), 100):  # InstanceIds takes at most 100 ids
            found += [_instance(raw, region) for raw in self.tokened(
                region, DescribeInstancesRequest, "Instances", "Instance",
                InstanceIds=json.dumps(ids[start:start + 100]))]
        return found

    def _collect_vpc(self, region: str, vpc_id: str, inv: CloudInventory, errors: list[str]) -> None:
        def part(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except CloudApiError as exc:  # one unreadable kind of object must not hide the others
                errors.append(f"{what} of {vpc_id}: {exc}")

        # every instance of the VPC, so group membership and route next hops resolve for non-nodes too
        part("instances", lambda: inv.instances.extend(self._instances_in(region, vpc_id)))
        part("network interfaces", lambda: inv.network_interfaces.extend(
            _eni(e) for e in self.tokened(region, DescribeNetworkInterfacesRequest,
                                          "NetworkInterfaceSets", "NetworkInterfaceSet", VpcId=vpc_id)))
        part("security groups", lambda: inv.security_groups.extend(self._security_groups(region, vpc_id)))
        part("VPC", lambda: inv.vpcs.extend(
            _vpc(v) for v in self.paged(region, DescribeVpcsRequest, "Vpcs", "Vpc",
                                        VpcId=vpc_id)))
        part("vSwitches", lambda: inv.vswitches.extend(
            _vswitch(s) for s in self.paged(region, DescribeVSwitchesRequest,
                                            "VSwitches", "VSwitch", VpcId=vpc_id)))
        part("route tables", lambda: inv.route_tables.extend(self._route_tables(region, vpc_id)))
        part("NAT gateways", lambda: inv.nat_gateways.extend(self._nat_gateways(region, vpc_id)))
        part("network ACLs", lambda: _add(inv, "network_acls", [
            _network_acl(a) for a in self.paged(region, DescribeNetworkAclsRequest, "NetworkAcls", "NetworkAcl",
                                                VpcId=vpc_id)]))
        part("IPv4 gateways", lambda: _add(inv, "ipv4_gateways", [
            _ipv4_gateway(g) for g in self.tokened(region, ListIpv4GatewaysRequest, "Ipv4GatewayModels",
                                                   "Ipv4GatewayModel", VpcId=vpc_id)]))
        part("gateway route tables", lambda: inv.route_tables.extend(self._gateway_tables(region, vpc_id, inv)))
        # a kind that could not be read is "not collected", never "none exist"
        for what, key in (("network ACLs", "network_acls"), ("IPv4 gateways", "ipv4_gateways")):
            if any(e.startswith(f"{what} of {vpc_id}:") for e in errors):
                setattr(inv, key, None)

    def _instances_in(self, region: str, vpc_id: str) -> list[Instance]:
        return [_instance(raw, region) for raw in self.tokened(
            region, DescribeInstancesRequest, "Instances", "Instance", VpcId=vpc_id)]

    def _fan_out(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(fn, items))

    def _security_groups(self, region: str, vpc_id: str) -> list[SecurityGroup]:
        groups = list(self.paged(region, DescribeSecurityGroupsRequest,
                                 "SecurityGroups", "SecurityGroup", VpcId=vpc_id))

        def detail(raw: dict[str, Any]) -> SecurityGroup:
            rules: list[dict[str, Any]] = []
            policy = "Accept"
            token = None
            while True:
                body = self.call(region, DescribeSecurityGroupAttributeRequest(),
                                 SecurityGroupId=raw["SecurityGroupId"], Direction="all", NextToken=token,
                                 MaxResults=PAGE_SIZE)
                policy = body.get("InnerAccessPolicy") or policy
                rules += _items(body, "Permissions", "Permission")
                token = body.get("NextToken")
                if not token:
                    break
            return SecurityGroup(
                id=raw["SecurityGroupId"], name=raw.get("SecurityGroupName", ""), vpc_id=raw.get("VpcId") or None,
                type=raw.get("SecurityGroupType") or "normal", inner_access_policy=policy,
                rules=[_rule(r) for r in rules])

        return self._fan_out(detail, groups)

    def _route_tables(self, region: str, vpc_id: str) -> list[RouteTable]:
        tables = list(self.paged(region, DescribeRouteTableListRequest,
                                 "RouterTableList", "RouterTableListType", VpcId=vpc_id))

        def detail(raw: dict[str, Any]) -> RouteTable:
            if raw.get("AssociateType") == "Gateway":  # bound to an IPv4 gateway: its own entry API
                entries = [_gateway_route_entry(e) for e in self.tokened(
                    region, ListGatewayRouteTableEntriesRequest, "GatewayRouteEntryModels", "GatewayRouteEntryModel",
                    GatewayRouteTableId=raw["RouteTableId"])]
            else:
                entries = [_route_entry(e) for e in self.tokened(
                    region, DescribeRouteEntryListRequest, "RouteEntrys", "RouteEntry", size_key="MaxResult",
                    RouteTableId=raw["RouteTableId"])]
            return RouteTable(
                id=raw["RouteTableId"], vpc_id=raw.get("VpcId", vpc_id), type=raw.get("RouteTableType") or "System",
                associate_type=raw.get("AssociateType") or None,
                vswitch_ids=_items(raw, "VSwitchIds", "VSwitchId"), entries=entries)

        return self._fan_out(detail, tables)

    def _gateway_tables(self, region: str, vpc_id: str, inv: CloudInventory) -> list[RouteTable]:
        """The gateway route table of each IPv4 gateway of the VPC that the route table listing did not hold."""
        known = {t.id for t in inv.route_tables}
        missing = [g.route_table_id for g in inv.ipv4_gateways or []
                   if g.vpc_id == vpc_id and g.route_table_id and g.route_table_id not in known]
        return [RouteTable(id=table, vpc_id=vpc_id, type="Custom", associate_type="Gateway", entries=[
            _gateway_route_entry(e) for e in self.tokened(
                region, ListGatewayRouteTableEntriesRequest, "GatewayRouteEntryModels", "GatewayRouteEntryModel",
                GatewayRouteTableId=table)]) for table in missing]

    def _nat_gateways(self, region: str, vpc_id: str) -> list[NatGateway]:
        gateways = list(self.paged(region, DescribeNatGatewaysRequest,
                                   "NatGateways", "NatGateway", VpcId=vpc_id))

        def detail(raw: dict[str, Any]) -> NatGateway:
            nat_id = raw["NatGatewayId"]
            snat = [SnatEntry(id=e["SnatEntryId"], snat_table_id=e.get("SnatTableId", table),
                              source_vswitch_id=e.get("SourceVSwitchId") or None,
                              source_cidr=e.get("SourceCIDR") or None, snat_ip=e.get("SnatIp", ""),
                              status=e.get("Status", "Available"))
                    for table in _items(raw, "SnatTableIds", "SnatTableId")
                    for e in self.paged(region, DescribeSnatTableEntriesRequest,
                                        "SnatTableEntries", "SnatTableEntry", SnatTableId=table)]
            dnat = [DnatEntry(id=e["ForwardEntryId"], forward_table_id=table, external_ip=e.get("ExternalIp", ""),
                              external_port=str(e.get("ExternalPort", "")), internal_ip=e.get("InternalIp", ""),
                              internal_port=str(e.get("InternalPort", "")), protocol=e.get("IpProtocol", "Any"),
                              status=e.get("Status", "Available"))
                    for table in _items(raw, "ForwardTableIds", "ForwardTableId")
                    for e in self.paged(region,
                                        DescribeForwardTableEntriesRequest,
                                        "ForwardTableEntries", "ForwardTableEntry", ForwardTableId=table)]
            return NatGateway(id=nat_id, name=raw.get("Name", ""), vpc_id=raw.get("VpcId", vpc_id),
                              status=raw.get("Status", "Available"), network_type=raw.get("NetworkType", "internet"),
                              ips=[ip["IpAddress"] for ip in _items(raw, "IpLists", "IpList")],
                              snat_entries=snat, dnat_entries=dnat,
                              vswitch_id=(raw.get("NatGatewayPrivateInfo") or {}).get("VswitchId") or None)

        return self._fan_out(detail, gateways)

    def _collect_rule_lists(self, region: str, inv: CloudInventory, errors: list[str]) -> None:
        """The prefix lists and port lists the collected security-group rules reference."""
        rules = [r for g in inv.security_groups for r in g.rules]
        prefix_ids = sorted({i for r in rules for i in (r.source_prefix_list_id, r.dest_prefix_list_id) if i})
        port_ids = sorted({r.port_range_list_id for r in rules if r.port_range_list_id})
        for pl_id in prefix_ids:
            try:
                body = self.call(region, DescribePrefixListAttributesRequest(), PrefixListId=pl_id)
            except CloudApiError as exc:
                errors.append(f"prefix list {pl_id}: {exc}")
                continue
            _add(inv, "prefix_lists", [PrefixList(
                id=pl_id, name=body.get("PrefixListName", ""), address_family=body.get("AddressFamily") or "IPv4",
                entries=[e["Cidr"] for e in _items(body, "Entries", "Entry")])])
        for pr_id in port_ids:
            try:
                body = self.call(region, DescribePortRangeListEntriesRequest(), PortRangeListId=pr_id)
            except CloudApiError as exc:
                errors.append(f"port list {pr_id}: {exc}")
                continue
            _add(inv, "port_lists", [PortRangeList(
                id=pr_id, entries=[e["PortRange"] for e in _items(body, "Entries", "Entry")])])

    def _collect_lbs(self, region: str, addresses: set[str], ids: set[str], inv: CloudInventory,
                     errors: list[str]) -> None:
        try:
            lbs = list(self.paged(region, DescribeLoadBalancersRequest,
                                  "LoadBalancers", "LoadBalancer"))
        except CloudApiError as exc:
            errors.append(f"load balancers of {region}: {exc}")
            return
        if addresses or ids:
            lbs = [lb for lb in lbs if lb.get("Address") in addresses or lb["LoadBalancerId"] in ids]

        def detail(raw: dict[str, Any]) -> LoadBalancer | None:
            try:
                return self._load_balancer(region, raw["LoadBalancerId"], inv)
            except CloudApiError as exc:
                errors.append(f"load balancer {raw['LoadBalancerId']}: {exc}")
                return None

        inv.load_balancers.extend(lb for lb in self._fan_out(detail, lbs) if lb is not None)

    def _load_balancer(self, region: str, lb_id: str, inv: CloudInventory) -> LoadBalancer:
        attr = self.call(region, DescribeLoadBalancerAttributeRequest(),
                         LoadBalancerId=lb_id)
        health = _items(self.call(region, DescribeHealthStatusRequest(),
                                  LoadBalancerId=lb_id), "BackendServers", "BackendServer")
        listeners, groups, master_slave = [], {}, {}
        for lp in _items(attr, "ListenerPortsAndProtocol", "ListenerPortAndProtocol"):
            protocol = str(lp.get("ListenerProtocol", "")).lower()
            port = int(lp["ListenerPort"])
            make = {"tcp": DescribeLoadBalancerTCPListenerAttributeRequest,
                    "udp": DescribeLoadBalancerUDPListenerAttributeRequest
                    }.get(protocol)
            if make is None:  # L7 listeners are out of scope: kept so the port is not "missing"
                listeners.append(Listener(port=port, protocol=protocol, status="unknown"))
                continue
            la = self.call(region, make(), LoadBalancerId=lb_id, ListenerPort=port)
            group_id = la.get("VServerGroupId") or None
            if group_id and group_id not in groups:
                vg = self.call(region, DescribeVServerGroupAttributeRequest(),
                               VServerGroupId=group_id)
                groups[group_id] = VServerGroup(id=group_id, name=vg.get("VServerGroupName", ""),
                                                backends=[_backend(b) for b in _items(vg, "BackendServers",
                                                                                       "BackendServer")])
            ms_id = la.get("MasterSlaveServerGroupId") or None
            if ms_id and ms_id not in master_slave:
                ms = self.call(region, DescribeMasterSlaveServerGroupAttributeRequest(), MasterSlaveServerGroupId=ms_id)
                master_slave[ms_id] = VServerGroup(
                    id=ms_id, name=ms.get("MasterSlaveServerGroupName", ""),
                    backends=[_backend(b) for b in _items(ms, "MasterSlaveBackendServers",
                                                          "MasterSlaveBackendServer")])
            acl_id = la.get("AclId") or None
            acl_ids = [a for a in _items(la, "AclIds", "AclId") if a] or ([acl_id] if acl_id else [])
            for one in acl_ids if la.get("AclStatus") == "on" else []:
                if one not in {a.id for a in inv.acls}:
                    inv.acls.append(self._acl(region, one))
            listeners.append(Listener(
                port=port, protocol=protocol, status=la.get("Status", "unknown"),
                backend_port=la.get("BackendServerPort"), vserver_group_id=group_id,
                acl_status=la.get("AclStatus") or "off", acl_type=la.get("AclType") or None, acl_id=acl_id,
                acl_ids=acl_ids, scheduler=la.get("Scheduler") or None,
                health_check=la.get("HealthCheck") or None, master_slave_server_group_id=ms_id,
                health=[BackendHealth(server_id=h["ServerId"], server_ip=h.get("ServerIp") or None,
                                      port=h.get("Port"), status=h.get("ServerHealthStatus", "unknown"))
                        for h in health if int(h.get("ListenerPort", port)) == port
                        and str(h.get("Protocol", protocol)).lower() == protocol]))
        return LoadBalancer(
            id=lb_id, name=attr.get("LoadBalancerName", ""), status=attr.get("LoadBalancerStatus", "unknown"),
            address=attr.get("Address") or None, address_type=attr.get("AddressType", "internet"),
            vpc_id=attr.get("VpcId") or None, listeners=listeners,
            backends=[_backend(b) for b in _items(attr, "BackendServers", "BackendServer")],
            vserver_groups=list(groups.values()), master_slave_server_groups=list(master_slave.values()))

    def _acl(self, region: str, acl_id: str) -> AccessControlList:
        entries, name, page = [], "", 1
        while True:
            body = self.call(region, DescribeAccessControlListAttributeRequest(),
                             AclId=acl_id, Page=page, PageSize=PAGE_SIZE)
            name = body.get("AclName", name)
            batch = [e["AclEntryIP"] for e in _items(body, "AclEntrys", "AclEntry")]
            entries += batch
            if not batch or len(entries) >= int(body.get("TotalAclEntry", len(entries))):
                return AccessControlList(id=acl_id, name=name, entries=entries)
            page += 1


def _add(inv: CloudInventory, key: str, items: list[Any]) -> None:
    """Extend one of the optional collections, unless an earlier failure marked it not collected (None)."""
    current = getattr(inv, key)
    if current is not None:
        current.extend(items)


def _node_of(wanted: dict[str, str], instance_id: str) -> str:
    return next((n for n, i in wanted.items() if i == instance_id), "?")


# ---------------------------------------------------------------- API shapes → inventory


def _instance(raw: dict[str, Any], region: str) -> Instance:
    vpc = raw.get("VpcAttributes") or {}
    eip = (raw.get("EipAddress") or {}).get("IpAddress") or None
    return Instance(
        id=raw["InstanceId"], name=raw.get("InstanceName", ""), region=raw.get("RegionId") or region,
        zone=raw.get("ZoneId", ""), status=raw.get("Status", "Unknown"), vpc_id=vpc.get("VpcId") or None,
        vswitch_id=vpc.get("VSwitchId") or None, private_ips=_items(vpc, "PrivateIpAddress", "IpAddress"),
        eip=eip, public_ips=_items(raw, "PublicIpAddress", "IpAddress"),
        security_group_ids=_items(raw, "SecurityGroupIds", "SecurityGroupId"),
        network_interface_ids=[n["NetworkInterfaceId"] for n in _items(raw, "NetworkInterfaces", "NetworkInterface")])


def _eni(raw: dict[str, Any]) -> NetworkInterface:
    ips = [s["PrivateIpAddress"] for s in _items(raw, "PrivateIpSets", "PrivateIpSet")]
    primary = raw.get("PrivateIpAddress") or (ips[0] if ips else None)
    ordered = ([primary] if primary else []) + [ip for ip in ips if ip != primary]
    return NetworkInterface(
        id=raw["NetworkInterfaceId"], instance_id=raw.get("InstanceId") or None, type=raw.get("Type", "Primary"),
        status=raw.get("Status", ""), vpc_id=raw.get("VpcId") or None, vswitch_id=raw.get("VSwitchId") or None,
        primary_ip=primary, private_ips=ordered, security_group_ids=_items(raw, "SecurityGroupIds", "SecurityGroupId"),
        public_ip=(raw.get("AssociatedPublicIp") or {}).get("PublicIpAddress") or None)


def _ports(text: str | None) -> tuple[int, int]:
    if not text:
        return -1, -1
    low, _, high = str(text).partition("/")
    return int(low), int(high or low)


def _rule(raw: dict[str, Any]) -> SecurityGroupRule:
    port_from, port_to = _ports(raw.get("PortRange"))
    sport_from, sport_to = _ports(raw.get("SourcePortRange"))
    return SecurityGroupRule(
        id=raw.get("SecurityGroupRuleId", ""), direction=raw["Direction"], policy=raw.get("Policy") or "accept",
        priority=int(raw.get("Priority") or 1), protocol=raw.get("IpProtocol") or "all",
        port_from=port_from, port_to=port_to,
        source_cidr=raw.get("SourceCidrIp") or raw.get("Ipv6SourceCidrIp") or None,
        dest_cidr=raw.get("DestCidrIp") or raw.get("Ipv6DestCidrIp") or None,
        source_group_id=raw.get("SourceGroupId") or None, dest_group_id=raw.get("DestGroupId") or None,
        source_port_from=sport_from, source_port_to=sport_to, nic_type=raw.get("NicType") or "intranet",
        description=raw.get("Description", ""), source_prefix_list_id=raw.get("SourcePrefixListId") or None,
        dest_prefix_list_id=raw.get("DestPrefixListId") or None, port_range_list_id=raw.get("PortRangeListId") or None,
        source_group_owner_account=raw.get("SourceGroupOwnerAccount") or None,
        dest_group_owner_account=raw.get("DestGroupOwnerAccount") or None)


def _vpc(raw: dict[str, Any]) -> Vpc:
    cidrs = [raw["CidrBlock"]] if raw.get("CidrBlock") else []
    return Vpc(id=raw["VpcId"], name=raw.get("VpcName", ""),
               cidrs=cidrs + _items(raw, "SecondaryCidrBlocks", "SecondaryCidrBlock"), router_id=raw.get("VRouterId"))


def _vswitch(raw: dict[str, Any]) -> VSwitch:
    return VSwitch(id=raw["VSwitchId"], vpc_id=raw["VpcId"], cidr=raw.get("CidrBlock", ""), zone=raw.get("ZoneId", ""),
                   route_table_id=(raw.get("RouteTable") or {}).get("RouteTableId") or None,
                   network_acl_id=raw.get("NetworkAclId") or None)


def _route_entry(raw: dict[str, Any]) -> RouteEntry:
    hops = [NextHop(type=h.get("NextHopType", ""), id=h.get("NextHopId") or None, enabled=bool(h.get("Enabled", 1)))
            for h in _items(raw, "NextHops", "NextHop")]
    return RouteEntry(id=raw.get("RouteEntryId", ""), destination=raw["DestinationCidrBlock"],
                      type=raw.get("Type", "Custom"), status=raw.get("Status", "Available"), next_hops=hops)


def _gateway_route_entry(raw: dict[str, Any]) -> RouteEntry:
    """A ListGatewayRouteTableEntries entry: next hop Local, an ECS instance (`EcsInstance`/`Instance`, one name
    once validated: NextHop) or an ENI."""
    hops = _items(raw, "NextHops", "NextHop") or [raw]
    return RouteEntry(id=raw.get("RouteEntryId", ""), destination=raw["DestinationCidrBlock"], type="Gateway",
                      status=raw.get("Status", "Available"), next_hops=[NextHop(
                          type=h.get("NextHopType", ""),
                          id=h.get("NextHopId") or None, enabled=bool(int(h.get("Enabled", 1)))) for h in hops])


def _backend(raw: dict[str, Any]) -> LbBackend:
    return LbBackend(server_id=raw["ServerId"], type=raw.get("Type") or "ecs", server_ip=raw.get("ServerIp") or None,
                     port=raw.get("Port"), weight=int(raw.get("Weight", 100)),
                     server_type=raw.get("ServerType") or None)


def _acl_entry(raw: dict[str, Any], peer_key: str) -> NetworkAclEntry:
    return NetworkAclEntry(id=raw.get("NetworkAclEntryId", ""), name=raw.get("NetworkAclEntryName", ""),
                           policy=raw.get("Policy") or "accept", protocol=raw.get("Protocol") or "all",
                           cidr=raw.get(peer_key) or raw.get(f"Ipv6{peer_key}") or "", port=raw.get("Port") or "-1/-1",
                           entry_type=raw.get("EntryType") or "custom")


def _network_acl(raw: dict[str, Any]) -> NetworkAcl:
    return NetworkAcl(
        id=raw["NetworkAclId"], name=raw.get("NetworkAclName", ""), vpc_id=raw.get("VpcId") or None,
        status=raw.get("Status", "Available"),
        vswitch_ids=[r["ResourceId"] for r in _items(raw, "Resources", "Resource")
                     if r.get("ResourceType", "VSwitch") == "VSwitch" and r.get("Status", "BINDED") != "UNBINDED"],
        ingress=[_acl_entry(e, "SourceCidrIp") for e in _items(raw, "IngressAclEntries", "IngressAclEntry")],
        egress=[_acl_entry(e, "DestinationCidrIp") for e in _items(raw, "EgressAclEntries", "EgressAclEntry")])


def _eip(raw: dict[str, Any]) -> Eip:
    return Eip(id=raw["AllocationId"], ip=raw.get("IpAddress", ""), status=raw.get("Status", ""),
               instance_type=raw.get("InstanceType", ""), instance_id=raw.get("InstanceId") or None,
               private_ip=raw.get("PrivateIpAddress") or None, mode=raw.get("Mode") or "NAT")


def _ipv4_gateway(raw: dict[str, Any]) -> Ipv4Gateway:
    return Ipv4Gateway(id=raw["Ipv4GatewayId"], vpc_id=raw.get("VpcId", ""), enabled=bool(raw.get("Enabled", True)),
                       status=raw.get("Status", ""), route_table_id=raw.get("Ipv4GatewayRouteTableId") or None)
