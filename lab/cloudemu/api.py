"""The RPC-style OpenAPI actions the cloud inspector calls, rendered from emulator state in
the shapes Alibaba Cloud returns (ECS 2014-05-26, VPC 2016-04-28, SLB 2014-05-15).

Each action takes the state and the request's query parameters and returns the response
body, or raises ApiError with the code, message and HTTP status the real API uses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

State = dict[str, Any]
Params = dict[str, str]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------- pagination


def _int(params: Params, key: str, default: int) -> int:
    raw = params.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"InvalidParameter.{key}", f"The specified parameter {key} is not valid.") from None


def by_page(items: list[Any], params: Params, max_size: int, number_key: str = "PageNumber",
            default_size: int = 10) -> tuple[list[Any], dict[str, int]]:
    number = _int(params, number_key, 1)
    size = _int(params, "PageSize", default_size)
    if not 1 <= size <= max_size:
        raise ApiError(400, "InvalidParameter.PageSize", f"The PageSize must be between 1 and {max_size}.")
    if number < 1:
        raise ApiError(400, f"InvalidParameter.{number_key}", f"The {number_key} must be at least 1.")
    start = (number - 1) * size
    return items[start:start + size], {"TotalCount": len(items), number_key: number, "PageSize": size}


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def by_token(items: list[Any], params: Params, max_size: int, size_key: str = "MaxResults",
             default_size: int = 10) -> tuple[list[Any], dict[str, Any]]:
    size = _int(params, size_key, default_size)
    if not 1 <= size <= max_size:
        raise ApiError(400, f"InvalidParameter.{size_key}", f"The {size_key} must be between 1 and {max_size}.")
    offset = 0
    if params.get("NextToken"):
        try:
            offset = int(base64.urlsafe_b64decode(params["NextToken"]).decode().removeprefix("offset:"))
        except ValueError:
            raise ApiError(400, "InvalidParameter.NextToken", "The specified NextToken is not valid.") from None
    page = items[offset:offset + size]
    nxt = _token(offset + size) if offset + size < len(items) else ""
    return page, {"TotalCount": len(items), "NextToken": nxt, size_key: size}


# ---------------------------------------------------------------- helpers


def _json_list(params: Params, key: str) -> list[str] | None:
    raw = params.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError(400, f"InvalidParameter.{key}", f"{key} must be a JSON array.") from None
    if not isinstance(value, list):
        raise ApiError(400, f"InvalidParameter.{key}", f"{key} must be a JSON array.")
    return [str(v) for v in value]


def _repeat_list(params: Params, key: str) -> list[str]:
    return [v for k, v in sorted(params.items()) if k.startswith(f"{key}.")]


def _filter(items: list[dict[str, Any]], params: Params, *keys: str) -> list[dict[str, Any]]:
    for key in keys:
        if params.get(key):
            items = [i for i in items if i.get(key) == params[key]]
    return items


def _find(state: State, collection: str, key: str, value: str | None, code: str) -> dict[str, Any]:
    for item in state[collection]:
        if item.get(key) == value:
            return item
    raise ApiError(404 if code.endswith("NotFound") else 400, code, f"The specified {key} {value} does not exist.")


def _required(params: Params, key: str) -> str:
    if not params.get(key):
        raise ApiError(400, f"MissingParameter.{key}", f"The input parameter {key} that is mandatory for "
                       "processing this request is not supplied.")
    return params[key]


def _region(state: State, params: Params) -> bool:
    return params.get("RegionId", state["region"]) == state["region"]


# ---------------------------------------------------------------- ECS


def network_interfaces(state: State) -> list[dict[str, Any]]:
    """State ENIs plus a primary ENI synthesised for every instance that lists none."""
    enis = list(state["network_interfaces"])
    have_primary = {e.get("InstanceId") for e in enis if e.get("Type", "Primary") == "Primary"}
    for inst in state["instances"]:
        if inst["InstanceId"] not in have_primary:
            enis.append({
                "NetworkInterfaceId": "eni-" + inst["InstanceId"].removeprefix("i-"),
                "InstanceId": inst["InstanceId"], "Type": "Primary", "VpcId": inst.get("VpcId"),
                "VSwitchId": inst.get("VSwitchId"), "PrivateIpAddress": (inst.get("PrivateIpAddress") or [""])[0],
                "SecurityGroupIds": inst.get("SecurityGroupIds", []),
            })
    return enis


def _eni_body(eni: dict[str, Any]) -> dict[str, Any]:
    primary = eni.get("PrivateIpAddress", "")
    ips = [{"PrivateIpAddress": primary, "Primary": True}]
    ips += [{"PrivateIpAddress": ip, "Primary": False} for ip in eni.get("SecondaryIps", [])]
    return {
        "NetworkInterfaceId": eni["NetworkInterfaceId"], "Status": eni.get("Status", "InUse"),
        "Type": eni.get("Type", "Primary"), "InstanceId": eni.get("InstanceId", ""),
        "VpcId": eni.get("VpcId", ""), "VSwitchId": eni.get("VSwitchId", ""),
        "PrivateIpAddress": primary, "MacAddress": eni.get("MacAddress", "00:16:3e:00:00:01"),
        "SecurityGroupIds": {"SecurityGroupId": eni.get("SecurityGroupIds", [])},
        "PrivateIpSets": {"PrivateIpSet": ips},
        "AssociatedPublicIp": {"PublicIpAddress": eni.get("PublicIp", "")},
    }


def describe_instances(state: State, params: Params) -> dict[str, Any]:
    items = state["instances"] if _region(state, params) else []
    items = _filter(items, params, "VpcId", "VSwitchId", "Status")
    wanted = _json_list(params, "InstanceIds")
    if wanted is not None:
        if len(wanted) > 100:
            raise ApiError(400, "InvalidParameter.InstanceIds", "At most 100 instance ids per call.")
        items = [i for i in items if i["InstanceId"] in wanted]
    if params.get("NextToken") or params.get("MaxResults"):
        page, meta = by_token(items, params, max_size=100)
    else:
        page, meta = by_page(items, params, max_size=100)
    enis = network_interfaces(state)
    out = []
    for inst in page:
        own = [e for e in enis if e.get("InstanceId") == inst["InstanceId"]]
        out.append({
            "InstanceId": inst["InstanceId"], "InstanceName": inst.get("InstanceName", ""),
            "RegionId": state["region"], "ZoneId": inst.get("ZoneId", ""), "Status": inst.get("Status", "Running"),
            "InstanceNetworkType": "vpc",
            "VpcAttributes": {
                "VpcId": inst.get("VpcId", ""), "VSwitchId": inst.get("VSwitchId", ""), "NatIpAddress": "",
                "PrivateIpAddress": {"IpAddress": inst.get("PrivateIpAddress", [])},
            },
            "EipAddress": {"IpAddress": inst.get("EipAddress", ""), "AllocationId": "",
                           "InternetChargeType": ""},
            "PublicIpAddress": {"IpAddress": inst.get("PublicIpAddress", [])},
            "InnerIpAddress": {"IpAddress": []},
            "SecurityGroupIds": {"SecurityGroupId": inst.get("SecurityGroupIds", [])},
            "NetworkInterfaces": {"NetworkInterface": [
                {"NetworkInterfaceId": e["NetworkInterfaceId"], "Type": e.get("Type", "Primary"),
                 "PrimaryIpAddress": e.get("PrivateIpAddress", ""), "MacAddress": e.get("MacAddress", ""),
                 "PrivateIpSets": _eni_body(e)["PrivateIpSets"]} for e in own
            ]},
        })
    return {"Instances": {"Instance": out}, **meta}


def describe_network_interfaces(state: State, params: Params) -> dict[str, Any]:
    items = network_interfaces(state) if _region(state, params) else []
    items = _filter(items, params, "VpcId", "VSwitchId", "InstanceId", "Type")
    ids = _repeat_list(params, "NetworkInterfaceId")
    if ids:
        items = [e for e in items if e["NetworkInterfaceId"] in ids]
    if params.get("NextToken") or params.get("MaxResults"):
        page, meta = by_token(items, params, max_size=500)
    else:
        page, meta = by_page(items, params, max_size=100)
    return {"NetworkInterfaceSets": {"NetworkInterfaceSet": [_eni_body(e) for e in page]}, **meta}


def describe_security_groups(state: State, params: Params) -> dict[str, Any]:
    items = state["security_groups"] if _region(state, params) else []
    items = _filter(items, params, "VpcId", "SecurityGroupId", "SecurityGroupType")
    wanted = _json_list(params, "SecurityGroupIds")
    if wanted is not None:
        items = [g for g in items if g["SecurityGroupId"] in wanted]
    if params.get("NextToken") or params.get("MaxResults"):
        page, meta = by_token(items, params, max_size=100)
    else:
        page, meta = by_page(items, params, max_size=50)
    out = [{
        "SecurityGroupId": g["SecurityGroupId"], "SecurityGroupName": g.get("SecurityGroupName", ""),
        "VpcId": g.get("VpcId", ""), "SecurityGroupType": g.get("SecurityGroupType", "normal"),
        "Description": g.get("Description", ""), "ServiceManaged": False,
    } for g in page]
    return {"SecurityGroups": {"SecurityGroup": out}, "RegionId": state["region"], **meta}


_RULE_FIELDS = ("SecurityGroupRuleId", "Direction", "Policy", "Priority", "IpProtocol", "PortRange",
                "SourceCidrIp", "DestCidrIp", "SourceGroupId", "DestGroupId", "SourcePortRange", "NicType",
                "Description", "Ipv6SourceCidrIp", "Ipv6DestCidrIp", "SourcePrefixListId", "DestPrefixListId",
                "PortRangeListId", "SourceGroupOwnerAccount", "DestGroupOwnerAccount")


def describe_security_group_attribute(state: State, params: Params) -> dict[str, Any]:
    group = _find(state, "security_groups", "SecurityGroupId", _required(params, "SecurityGroupId"),
                  "InvalidSecurityGroupId.NotFound")
    rules = []
    for n, rule in enumerate(group.get("Permissions", [])):
        body: dict[str, Any] = dict.fromkeys(_RULE_FIELDS, "")
        body.update({"SecurityGroupRuleId": f"sgr-{group['SecurityGroupId']}-{n}", "NicType": "intranet",
                     "Policy": "Accept", "Priority": 1, "SourcePortRange": "", "CreateTime": ""})
        body.update(rule)
        body["Priority"] = str(body["Priority"])  # the API returns Priority as a string
        rules.append(body)
    direction = params.get("Direction", "all")
    if direction != "all":
        rules = [r for r in rules if r["Direction"] == direction]
    meta: dict[str, Any] = {}
    if params.get("MaxResults") or params.get("NextToken"):
        rules, meta = by_token(rules, params, max_size=1000)
        meta.pop("TotalCount")
    return {
        "SecurityGroupId": group["SecurityGroupId"], "SecurityGroupName": group.get("SecurityGroupName", ""),
        "VpcId": group.get("VpcId", ""), "RegionId": state["region"], "Description": "",
        "InnerAccessPolicy": group.get("InnerAccessPolicy", "Accept"),
        "Permissions": {"Permission": rules}, **meta,
    }


def describe_prefix_list_attributes(state: State, params: Params) -> dict[str, Any]:
    pl = _find(state, "prefix_lists", "PrefixListId", _required(params, "PrefixListId"),
               "InvalidPrefixListId.NotFound")
    return {"PrefixListId": pl["PrefixListId"], "PrefixListName": pl.get("PrefixListName", ""),
            "AddressFamily": pl.get("AddressFamily", "IPv4"), "MaxEntries": pl.get("MaxEntries", 20),
            "Entries": {"Entry": [{"Cidr": e["Cidr"], "Description": e.get("Description", "")}
                                  for e in pl.get("Entries", [])]}}


def describe_port_range_list_entries(state: State, params: Params) -> dict[str, Any]:
    pl = _find(state, "port_lists", "PortRangeListId", _required(params, "PortRangeListId"),
               "InvalidPortRangeListId.NotFound")
    return {"Entries": [{"PortRange": e["PortRange"], "Description": e.get("Description", "")}
                        for e in pl.get("Entries", [])]}


# ---------------------------------------------------------------- VPC


def describe_network_acls(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["network_acls"] if _region(state, params) else [], params, "VpcId", "NetworkAclId")
    page, meta = by_page(items, params, max_size=50)
    out = [{
        "NetworkAclId": a["NetworkAclId"], "NetworkAclName": a.get("NetworkAclName", ""), "VpcId": a.get("VpcId", ""),
        "Status": a.get("Status", "Available"), "RegionId": state["region"],
        "Resources": {"Resource": [{"ResourceId": r["ResourceId"], "ResourceType": r.get("ResourceType", "VSwitch"),
                                    "Status": r.get("Status", "BINDED")} for r in a.get("Resources", [])]},
        "IngressAclEntries": {"IngressAclEntry": [
            {"NetworkAclEntryId": e.get("NetworkAclEntryId", f"nae-in-{n}"), "Policy": e.get("Policy", "accept"),
             "Protocol": e.get("Protocol", "all"), "SourceCidrIp": e["SourceCidrIp"], "Port": e.get("Port", "-1/-1"),
             "EntryType": e.get("EntryType", "custom"), "NetworkAclEntryName": e.get("NetworkAclEntryName", "")}
            for n, e in enumerate(a.get("IngressAclEntries", []))]},
        "EgressAclEntries": {"EgressAclEntry": [
            {"NetworkAclEntryId": e.get("NetworkAclEntryId", f"nae-out-{n}"), "Policy": e.get("Policy", "accept"),
             "Protocol": e.get("Protocol", "all"), "DestinationCidrIp": e["DestinationCidrIp"],
             "Port": e.get("Port", "-1/-1"), "EntryType": e.get("EntryType", "custom"),
             "NetworkAclEntryName": e.get("NetworkAclEntryName", "")}
            for n, e in enumerate(a.get("EgressAclEntries", []))]},
    } for a in page]
    return {"NetworkAcls": {"NetworkAcl": out}, **meta}


def describe_eip_addresses(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["eips"] if _region(state, params) else [], params, "AllocationId", "Status")
    page, meta = by_page(items, params, max_size=100)
    out = [{k: e.get(k, "") for k in ("AllocationId", "IpAddress", "InstanceType", "InstanceId", "PrivateIpAddress",
                                       "Mode")} | {"Status": e.get("Status", "InUse"), "RegionId": state["region"]}
           for e in page]
    return {"EipAddresses": {"EipAddress": out}, **meta}


def list_ipv4_gateways(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["ipv4_gateways"] if _region(state, params) else [], params, "VpcId")
    page, meta = by_token(items, params, max_size=100)
    return {"Ipv4GatewayModels": [{
        "Ipv4GatewayId": g["Ipv4GatewayId"], "VpcId": g["VpcId"], "Enabled": g.get("Enabled", True),
        "Status": g.get("Status", "Created"), "Ipv4GatewayRouteTableId": g.get("Ipv4GatewayRouteTableId", "")}
        for g in page], **meta}


def list_gateway_route_table_entries(state: State, params: Params) -> dict[str, Any]:
    """The entries of a gateway route table (one bound to an IPv4 gateway): per vSwitch CIDR a system route,
    next hop Local, or an ECS instance / ENI (a firewall) it was changed to (UpdateGatewayRouteTableEntryAttribute)."""
    table = _find(state, "route_tables", "RouteTableId", _required(params, "GatewayRouteTableId"),
                  "InvalidRouteTableId.NotFound")
    entries = [e for e in table.get("Entries", [])
               if not params.get("DestinationCidrBlock") or e["DestinationCidrBlock"] == params["DestinationCidrBlock"]]
    page, meta = by_token(entries, params, max_size=100)
    return {"GatewayRouteEntryModels": [{
        "DestinationCidrBlock": e["DestinationCidrBlock"], "NextHopType": e.get("NextHopType", "Local"),
        "NextHopId": e.get("NextHopId", ""), "Status": e.get("Status", "Available"), "Name": e.get("Name", ""),
        "Description": e.get("Description", ""),
        "NextHops": [{"NextHopType": e.get("NextHopType", "Local"), "NextHopId": e.get("NextHopId", ""),
                      "Enabled": 1, "Weight": 100}]}
        for e in page], "NextToken": meta["NextToken"], "TotalCount": str(meta["TotalCount"])}




def describe_vpcs(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["vpcs"] if _region(state, params) else [], params, "VpcId")
    page, meta = by_page(items, params, max_size=50)
    out = []
    for v in page:
        tables = [t["RouteTableId"] for t in state["route_tables"] if t.get("VpcId") == v["VpcId"]]
        out.append({
            "VpcId": v["VpcId"], "VpcName": v.get("VpcName", ""), "CidrBlock": v.get("CidrBlock", ""),
            "SecondaryCidrBlocks": {"SecondaryCidrBlock": v.get("SecondaryCidrBlocks", [])},
            "VRouterId": v.get("VRouterId", "vrt-" + v["VpcId"].removeprefix("vpc-")),
            "RouterTableIds": {"RouterTableIds": tables}, "Status": "Available", "RegionId": state["region"],
            "VSwitchIds": {"VSwitchId": [s["VSwitchId"] for s in state["vswitches"] if s["VpcId"] == v["VpcId"]]},
            "NatGatewayIds": {"NatGatewayIds": [n["NatGatewayId"] for n in state["nat_gateways"]
                                                 if n["VpcId"] == v["VpcId"]]},
        })
    return {"Vpcs": {"Vpc": out}, **meta}


def _table_of_vswitch(state: State, vsw: dict[str, Any]) -> dict[str, Any] | None:
    tables = [t for t in state["route_tables"] if t.get("VpcId") == vsw["VpcId"]]
    for t in tables:
        if vsw["VSwitchId"] in t.get("VSwitchIds", []):
            return t
    return next((t for t in tables if t.get("RouteTableType", "System") == "System"), None)


def describe_vswitches(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["vswitches"] if _region(state, params) else [], params, "VpcId", "VSwitchId")
    page, meta = by_page(items, params, max_size=50)
    out = []
    for s in page:
        table = _table_of_vswitch(state, s) or {}
        out.append({
            "VSwitchId": s["VSwitchId"], "VpcId": s["VpcId"], "CidrBlock": s.get("CidrBlock", ""),
            "ZoneId": s.get("ZoneId", ""), "Status": "Available",
            "RouteTable": {"RouteTableId": table.get("RouteTableId", ""),
                           "RouteTableType": table.get("RouteTableType", "")},
            "NetworkAclId": next((a["NetworkAclId"] for a in state["network_acls"]
                                  if any(r["ResourceId"] == s["VSwitchId"] for r in a.get("Resources", []))), ""),
        })
    return {"VSwitches": {"VSwitch": out}, **meta}


def describe_route_table_list(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["route_tables"] if _region(state, params) else [], params, "VpcId", "RouteTableId")
    page, meta = by_page(items, params, max_size=50)
    out = [{
        "RouteTableId": t["RouteTableId"], "VpcId": t["VpcId"], "RouteTableType": t.get("RouteTableType", "System"),
        "RouterId": "vrt-" + t["VpcId"].removeprefix("vpc-"), "RouterType": "VRouter", "Status": "Available",
        "VSwitchIds": {"VSwitchId": t.get("VSwitchIds", [])}, "AssociateType": t.get("AssociateType", "VSwitch"),
    } for t in page]
    return {"RouterTableList": {"RouterTableListType": out}, **meta}


def describe_route_entry_list(state: State, params: Params) -> dict[str, Any]:
    table = _find(state, "route_tables", "RouteTableId", _required(params, "RouteTableId"),
                  "InvalidRouteTableId.NotFound")
    page, meta = by_token(table.get("Entries", []), params, max_size=100, size_key="MaxResult")
    out = []
    for n, e in enumerate(page):
        hops = e.get("NextHops") or [{"NextHopType": e.get("NextHopType", ""), "NextHopId": e.get("NextHopId", "")}]
        out.append({
            "RouteEntryId": e.get("RouteEntryId", f"rte-{table['RouteTableId']}-{n}"),
            "RouteTableId": table["RouteTableId"], "DestinationCidrBlock": e["DestinationCidrBlock"],
            "Type": e.get("Type", "Custom"), "Status": e.get("Status", "Available"), "IpVersion": "ipv4",
            "NextHops": {"NextHop": [{"NextHopType": h.get("NextHopType", ""), "NextHopId": h.get("NextHopId", ""),
                                      "Enabled": h.get("Enabled", 1)} for h in hops]},
        })
    return {"RouteEntrys": {"RouteEntry": out}, "NextToken": meta["NextToken"]}


def _snat_table(nat: dict[str, Any]) -> str:
    return nat.get("SnatTableId", "stb-" + nat["NatGatewayId"].removeprefix("ngw-"))


def _forward_table(nat: dict[str, Any]) -> str:
    return nat.get("ForwardTableId", "ftb-" + nat["NatGatewayId"].removeprefix("ngw-"))


def describe_nat_gateways(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["nat_gateways"] if _region(state, params) else [], params, "VpcId", "NatGatewayId")
    page, meta = by_page(items, params, max_size=50)
    out = [{
        "NatGatewayId": n["NatGatewayId"], "Name": n.get("Name", ""), "VpcId": n["VpcId"],
        "Status": n.get("Status", "Available"), "NatType": "Enhanced", "NetworkType": n.get("NetworkType", "internet"),
        "SnatTableIds": {"SnatTableId": [_snat_table(n)]}, "ForwardTableIds": {"ForwardTableId": [_forward_table(n)]},
        "IpLists": {"IpList": [{"IpAddress": ip, "AllocationId": "", "SnatEntryEnabled": True}
                               for ip in n.get("IpList", [])]},
        "NatGatewayPrivateInfo": {"VswitchId": n.get("VSwitchId", ""), "PrivateIpAddress": n.get("PrivateIp", "")},
    } for n in page]
    return {"NatGateways": {"NatGateway": out}, **meta}


def _nat_by_table(state: State, params: Params, key: str, table_of: Callable[[dict[str, Any]], str]
                  ) -> dict[str, Any]:
    for nat in state["nat_gateways"]:
        if params.get(key) == table_of(nat) or params.get("NatGatewayId") == nat["NatGatewayId"]:
            return nat
    raise ApiError(404, f"InvalidParameter.{key}.NotFound", f"The specified {key} does not exist.")


def describe_snat_table_entries(state: State, params: Params) -> dict[str, Any]:
    nat = _nat_by_table(state, params, "SnatTableId", _snat_table)
    page, meta = by_page(nat.get("SnatEntries", []), params, max_size=100)
    out = [{
        "SnatEntryId": e["SnatEntryId"], "SnatTableId": _snat_table(nat),
        "SourceVSwitchId": e.get("SourceVSwitchId", ""),
        "SourceCIDR": e.get("SourceCIDR", ""), "SnatIp": e.get("SnatIp", ""), "Status": e.get("Status", "Available"),
        "SnatEntryName": e.get("SnatEntryName", ""),
    } for e in page]
    return {"SnatTableEntries": {"SnatTableEntry": out}, **meta}


def describe_forward_table_entries(state: State, params: Params) -> dict[str, Any]:
    nat = _nat_by_table(state, params, "ForwardTableId", _forward_table)
    page, meta = by_page(nat.get("ForwardEntries", []), params, max_size=50)
    out = [{
        "ForwardEntryId": e["ForwardEntryId"], "ForwardTableId": _forward_table(nat),
        "ExternalIp": e.get("ExternalIp", ""), "ExternalPort": str(e.get("ExternalPort", "")),
        "InternalIp": e.get("InternalIp", ""), "InternalPort": str(e.get("InternalPort", "")),
        "IpProtocol": e.get("IpProtocol", "Any"), "Status": e.get("Status", "Available"),
    } for e in page]
    return {"ForwardTableEntries": {"ForwardTableEntry": out}, **meta}


# ---------------------------------------------------------------- SLB


def describe_load_balancers(state: State, params: Params) -> dict[str, Any]:
    items = _filter(state["load_balancers"] if _region(state, params) else [], params, "VpcId", "Address")
    if params.get("LoadBalancerId"):
        ids = params["LoadBalancerId"].split(",")
        items = [lb for lb in items if lb["LoadBalancerId"] in ids]
    page, meta = by_page(items, params, max_size=100)
    out = [{k: lb.get(k, "") for k in ("LoadBalancerId", "LoadBalancerName", "Address", "AddressType", "VpcId",
                                         "VSwitchId")} | {"LoadBalancerStatus": lb.get("LoadBalancerStatus", "active"),
                                                         "NetworkType": "vpc", "RegionId": state["region"]}
           for lb in page]
    return {"LoadBalancers": {"LoadBalancer": out}, **meta}


def _lb(state: State, params: Params) -> dict[str, Any]:
    return _find(state, "load_balancers", "LoadBalancerId", _required(params, "LoadBalancerId"),
                 "InvalidLoadBalancerId.NotFound")


def describe_load_balancer_attribute(state: State, params: Params) -> dict[str, Any]:
    lb = _lb(state, params)
    listeners = lb.get("Listeners", [])
    return {
        "LoadBalancerId": lb["LoadBalancerId"], "LoadBalancerName": lb.get("LoadBalancerName", ""),
        "LoadBalancerStatus": lb.get("LoadBalancerStatus", "active"), "Address": lb.get("Address", ""),
        "AddressType": lb.get("AddressType", "internet"), "VpcId": lb.get("VpcId", ""), "RegionId": state["region"],
        "ListenerPorts": {"ListenerPort": [li["ListenerPort"] for li in listeners]},
        "ListenerPortsAndProtocol": {"ListenerPortAndProtocol": [
            {"ListenerPort": li["ListenerPort"], "ListenerProtocol": li.get("ListenerProtocol", "tcp")}
            for li in listeners]},
        "BackendServers": {"BackendServer": [
            {"ServerId": b["ServerId"], "Weight": b.get("Weight", 100), "Type": b.get("Type", "ecs"),
             "ServerIp": b.get("ServerIp", ""), "Description": ""} for b in lb.get("BackendServers", [])]},
    }


def _listener(state: State, params: Params, protocol: str) -> dict[str, Any]:
    lb = _lb(state, params)
    port = _int(params, "ListenerPort", 0)
    for li in lb.get("Listeners", []):
        if li["ListenerPort"] == port and li.get("ListenerProtocol", "tcp") == protocol:
            return li
    raise ApiError(400, "InvalidParameter", f"The specified {protocol.upper()} listener {port} does not exist.")


def _listener_attribute(protocol: str) -> Callable[[State, Params], dict[str, Any]]:
    def action(state: State, params: Params) -> dict[str, Any]:
        li = _listener(state, params, protocol)
        return {
            "ListenerPort": li["ListenerPort"], "BackendServerPort": li.get("BackendServerPort", li["ListenerPort"]),
            "Status": li.get("Status", "running"), "VServerGroupId": li.get("VServerGroupId", ""),
            "AclStatus": li.get("AclStatus", "off"), "AclType": li.get("AclType", ""), "AclId": li.get("AclId", ""),
            "AclIds": {"AclId": li.get("AclIds") or ([li["AclId"]] if li.get("AclId") else [])},
            "HealthCheck": li.get("HealthCheck", "on"), "Bandwidth": -1, "Scheduler": li.get("Scheduler", "wrr"),
            "MasterSlaveServerGroupId": li.get("MasterSlaveServerGroupId", ""),
        }
    return action


def describe_vserver_group_attribute(state: State, params: Params) -> dict[str, Any]:
    group = _find(state, "vserver_groups", "VServerGroupId", _required(params, "VServerGroupId"),
                  "InvalidVServerGroupId.NotFound")
    return {
        "VServerGroupId": group["VServerGroupId"], "VServerGroupName": group.get("VServerGroupName", ""),
        "LoadBalancerId": group.get("LoadBalancerId", ""),
        "BackendServers": {"BackendServer": [
            {"ServerId": b["ServerId"], "Port": b.get("Port"), "Weight": b.get("Weight", 100),
             "Type": b.get("Type", "ecs"), "ServerIp": b.get("ServerIp", ""), "Description": ""}
            for b in group.get("BackendServers", [])]},
    }


def describe_master_slave_server_group_attribute(state: State, params: Params) -> dict[str, Any]:
    group = _find(state, "master_slave_server_groups", "MasterSlaveServerGroupId",
                  _required(params, "MasterSlaveServerGroupId"), "InvalidMasterSlaveServerGroupId.NotFound")
    return {
        "MasterSlaveServerGroupId": group["MasterSlaveServerGroupId"],
        "MasterSlaveServerGroupName": group.get("MasterSlaveServerGroupName", ""),
        "LoadBalancerId": group.get("LoadBalancerId", ""),
        "MasterSlaveBackendServers": {"MasterSlaveBackendServer": [
            {"ServerId": b["ServerId"], "Port": b.get("Port"), "Weight": b.get("Weight", 100),
             "ServerType": b.get("ServerType", "Master"), "Type": b.get("Type", "ecs"),
             "ServerIp": b.get("ServerIp", ""), "Description": ""}
            for b in group.get("MasterSlaveBackendServers", [])]},
    }


def describe_access_control_list_attribute(state: State, params: Params) -> dict[str, Any]:
    acl = _find(state, "acls", "AclId", _required(params, "AclId"), "AclNotExist")
    page, meta = by_page(acl.get("Entries", []), params, max_size=50, number_key="Page", default_size=50)
    return {
        "AclId": acl["AclId"], "AclName": acl.get("AclName", ""), "AddressIPVersion": "ipv4",
        "AclEntrys": {"AclEntry": [{"AclEntryIP": e["AclEntryIP"], "AclEntryComment": e.get("AclEntryComment", "")}
                                   for e in page]},
        "TotalAclEntry": meta["TotalCount"], "Page": meta["Page"], "PageSize": meta["PageSize"],
    }


def describe_health_status(state: State, params: Params) -> dict[str, Any]:
    lb = _lb(state, params)
    port = params.get("ListenerPort")
    out = []
    for li in lb.get("Listeners", []):
        if port and str(li["ListenerPort"]) != port:
            continue
        if params.get("ListenerProtocol") and li.get("ListenerProtocol", "tcp") != params["ListenerProtocol"]:
            continue
        out += [{"ServerId": h["ServerId"], "ServerIp": h.get("ServerIp", ""), "Port": h.get("Port"),
                 "ServerHealthStatus": h.get("ServerHealthStatus", "normal"), "ListenerPort": li["ListenerPort"],
                 "Protocol": li.get("ListenerProtocol", "tcp")} for h in li.get("Health", [])]
    return {"BackendServers": {"BackendServer": out}}


ACTIONS: dict[tuple[str, str], Callable[[State, Params], dict[str, Any]]] = {
    ("2014-05-26", "DescribeInstances"): describe_instances,
    ("2014-05-26", "DescribeNetworkInterfaces"): describe_network_interfaces,
    ("2014-05-26", "DescribeSecurityGroups"): describe_security_groups,
    ("2014-05-26", "DescribeSecurityGroupAttribute"): describe_security_group_attribute,
    ("2014-05-26", "DescribePrefixListAttributes"): describe_prefix_list_attributes,
    ("2014-05-26", "DescribePortRangeListEntries"): describe_port_range_list_entries,
    ("2016-04-28", "DescribeNetworkAcls"): describe_network_acls,
    ("2016-04-28", "DescribeEipAddresses"): describe_eip_addresses,
    ("2016-04-28", "ListIpv4Gateways"): list_ipv4_gateways,
    ("2016-04-28", "ListGatewayRouteTableEntries"): list_gateway_route_table_entries,
    ("2016-04-28", "DescribeVpcs"): describe_vpcs,
    ("2016-04-28", "DescribeVSwitches"): describe_vswitches,
    ("2016-04-28", "DescribeRouteTableList"): describe_route_table_list,
    ("2016-04-28", "DescribeRouteEntryList"): describe_route_entry_list,
    ("2016-04-28", "DescribeNatGateways"): describe_nat_gateways,
    ("2016-04-28", "DescribeSnatTableEntries"): describe_snat_table_entries,
    ("2016-04-28", "DescribeForwardTableEntries"): describe_forward_table_entries,
    ("2014-05-15", "DescribeLoadBalancers"): describe_load_balancers,
    ("2014-05-15", "DescribeLoadBalancerAttribute"): describe_load_balancer_attribute,
    ("2014-05-15", "DescribeLoadBalancerTCPListenerAttribute"): _listener_attribute("tcp"),
    ("2014-05-15", "DescribeLoadBalancerUDPListenerAttribute"): _listener_attribute("udp"),
    ("2014-05-15", "DescribeVServerGroupAttribute"): describe_vserver_group_attribute,
    ("2014-05-15", "DescribeMasterSlaveServerGroupAttribute"): describe_master_slave_server_group_attribute,
    ("2014-05-15", "DescribeAccessControlListAttribute"): describe_access_control_list_attribute,
    ("2014-05-15", "DescribeHealthStatus"): describe_health_status,
}
