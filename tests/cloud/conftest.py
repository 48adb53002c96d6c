"""Cloud fixtures: the OpenAPI emulator (in-process, own thread) and the real SDK provider."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator, load_state
from services.cloud.alibaba import AlibabaProvider, Credentials
from shared.cloud import CloudInventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cloud"
REGION = "cn-hangzhou"


def node(name: str, instance: str, region: str = REGION) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/region": region}},
            "spec": {"providerID": f"{region}.{instance}"},
            "status": {"addresses": []}}


NODES = [node("node-1", "i-node1"), node("node-2", "i-node2"), node("node-3", "i-node3")]


def healthy() -> dict[str, Any]:
    return copy.deepcopy(load_state(EXAMPLES / "healthy.json"))


@pytest.fixture(scope="session")
def emulator() -> Iterator[CloudEmulator]:
    with CloudEmulator(healthy()) as emu:
        yield emu


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's key pair in the provider's credentials file format."""
    path = tmp_path_factory.mktemp("secret") / "alibaba.json"
    path.write_text(json.dumps({"AccessKeyId": DEFAULT_KEY_ID, "AccessKeySecret": DEFAULT_KEY_SECRET}))
    return path


@pytest.fixture
def provider(emulator: CloudEmulator) -> AlibabaProvider:
    emulator.set_state(healthy())
    emulator.throttle(0)
    return AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET), endpoint=f"http://{emulator.endpoint}",
                           backoff_s=0.01)


@pytest.fixture
def collect(emulator: CloudEmulator, provider: AlibabaProvider):
    """Load a state (dict or file) into the emulator and collect it through the real SDK."""

    def run(state: dict[str, Any] | Path, nodes: list[dict[str, Any]] | None = None) -> CloudInventory:
        emulator.set_state(load_state(state) if isinstance(state, Path) else state)
        inventory = provider.collect(NODES if nodes is None else nodes)
        json.loads(inventory.model_dump_json())  # JSON-serialisable, always
        return inventory

    return run


# The Alibaba Cloud page each cloud finding code's expectation comes from (docs/cloud.md, Sources).
PAGES: dict[str, str] = {
    "SG_DENY": "ECS, Security group rules — https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules",
    "SG_NOT_SHARED": "ECS, Basic and advanced security groups — https://www.alibabacloud.com/help/en/ecs/user-guide/"
                     "basic-security-groups-and-advanced-security-groups",
    "VPC_NO_ROUTE": "VPC, Route tables — https://www.alibabacloud.com/help/en/vpc/vpc-route-table",
    "VPC_WRONG_NEXT_HOP": "VPC, Route tables — https://www.alibabacloud.com/help/en/vpc/vpc-route-table",
    "VPC_NETWORK_ACL_DENY": "VPC, Network ACLs — https://www.alibabacloud.com/help/en/vpc/network-acl-overview",
    "VPC_NEXT_HOP_NOT_FORWARDING": "ECS, Instance lifecycle — https://www.alibabacloud.com/help/doc-detail/25380.htm",
    "NAT_NO_SNAT": "NAT Gateway, Create and manage SNAT entries — https://www.alibabacloud.com/help/en/nat-gateway/"
                   "latest/create-and-manage-snat-entries",
    "NAT_NO_DNAT": "NAT Gateway API, CreateForwardEntry — https://www.alibabacloud.com/help/doc-detail/36058.htm",
    "LB_NOT_ACTIVE": "CLB API, DescribeLoadBalancerTCPListenerAttribute — "
                     "https://www.alibabacloud.com/help/doc-detail/27608.html",
    "LB_NO_LISTENER": "CLB API, DescribeLoadBalancerTCPListenerAttribute — "
                      "https://www.alibabacloud.com/help/doc-detail/27608.html",
    "LB_LISTENER_NOT_RUNNING": "CLB API, DescribeLoadBalancerTCPListenerAttribute — "
                               "https://www.alibabacloud.com/help/doc-detail/27608.html",
    "LB_ACL_DENY": "CLB, Access control — https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/"
                   "overview-3",
    "LB_BACKEND_UNHEALTHY": "CLB, Configure and manage CLB health checks — https://alibabacloud.com/help/ja/slb/"
                            "classic-load-balancer/user-guide/configure-and-manage-health-checks",
    "LB_BACKEND_WEIGHT_ZERO": "CLB API, SetBackendServers — https://alibabacloud.com/help/en/slb/"
                              "classic-load-balancer/developer-reference/api-slb-2014-05-15-setbackendservers",
    "VPC_GATEWAY_ROUTE_REDIRECT": "VPC, Use the gateway route table to control traffic entering the VPC — "
                                  "https://www.alibabacloud.com/help/en/vpc/use-the-gateway-route-table-to-control-"
                                  "traffic-entering-the-vpc",
    "LB_BACKEND_MISMATCH": "CLB, CLB server groups — https://www.alibabacloud.com/help/en/slb/classic-load-balancer/"
                           "user-guide/backend-server-overview/",
}
