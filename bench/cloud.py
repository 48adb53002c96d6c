"""Cloud inspector benchmark.

1. Inventory collection through the real Alibaba Cloud SDK against the emulator (run as its
   own process, `python -m lab.cloudemu`) for a VPC with 500 instances, 50 security groups
   x 200 rules and 20 route tables.
2. Security-group evaluation throughput (a NIC in 5 groups = 1000 rules) and full
   node-to-node cloud evaluations per second.

    .venv/bin/python bench/cloud.py
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET
from services.cloud.alibaba import AlibabaProvider, Credentials
from services.simulator.cloudeval.evaluate import evaluate_node_to_node
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.security_groups import Flow, evaluate
from shared.schemas import Packet

INSTANCES, GROUPS, RULES, TABLES, GROUPS_PER_NIC = 500, 50, 200, 20, 5


def big_state() -> dict[str, Any]:
    rng = random.Random(7)
    vswitches = [{"VSwitchId": f"vsw-{n}", "VpcId": "vpc-big", "CidrBlock": f"10.{n}.0.0/16"} for n in range(TABLES)]
    groups = []
    for g in range(GROUPS):
        rules = []
        for r in range(RULES):
            low = rng.randint(1, 60000)
            rules.append({"Direction": "ingress" if r % 4 else "egress", "Policy": "Drop" if r % 7 == 0 else "Accept",
                          "Priority": rng.randint(1, 100), "IpProtocol": rng.choice(["TCP", "UDP", "ALL"]),
                          "PortRange": f"{low}/{low + rng.randint(0, 100)}",
                          "SourceCidrIp" if r % 4 else "DestCidrIp":
                              f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.0/24"})
        groups.append({"SecurityGroupId": f"sg-{g}", "VpcId": "vpc-big", "Permissions": rules})
    instances = []
    for n in range(INSTANCES):
        vsw = n % TABLES
        sgs = [f"sg-{(n + k) % GROUPS}" for k in range(GROUPS_PER_NIC)]
        instances.append({"InstanceId": f"i-{n}", "VpcId": "vpc-big", "VSwitchId": f"vsw-{vsw}",
                          "PrivateIpAddress": [f"10.{vsw}.{n // 250}.{n % 250 + 1}"], "SecurityGroupIds": sgs})
    tables = [{"RouteTableId": f"vtb-{t}", "VpcId": "vpc-big", "RouteTableType": "System" if t == 0 else "Custom",
               "VSwitchIds": [f"vsw-{t}"],
               "Entries": [{"DestinationCidrBlock": f"172.{16 + n // 256}.{n % 256}.0/24", "NextHopType": "Instance",
                            "NextHopId": f"i-{n}"} for n in range(INSTANCES)]} for t in range(TABLES)]
    return {"region": "cn-hangzhou", "vpcs": [{"VpcId": "vpc-big", "CidrBlock": "10.0.0.0/8"}],
            "vswitches": vswitches, "instances": instances, "security_groups": groups, "route_tables": tables,
            "nat_gateways": [{"NatGatewayId": "ngw-big", "VpcId": "vpc-big",
                              "SnatEntries": [{"SnatEntryId": f"snat-{t}", "SourceVSwitchId": f"vsw-{t}",
                                               "SourceCIDR": f"10.{t}.0.0/16"} for t in range(TABLES)]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int) -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/calls", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("emulator did not start")


def main() -> None:
    state = big_state()
    nodes = [{"metadata": {"name": f"node-{n}"}, "spec": {"providerID": f"cn-hangzhou.i-{n}"}}
             for n in range(0, INSTANCES, 10)]  # 50 nodes of the cluster in a 500-instance VPC
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_text(json.dumps(state))
        port = free_port()
        emu = subprocess.Popen([sys.executable, "-m", "lab.cloudemu", "--state", str(path), "--port", str(port)],
                               cwd=Path(__file__).resolve().parents[1])
        try:
            wait_ready(port)
            provider = AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET),
                                       endpoint=f"http://127.0.0.1:{port}")
            started = time.perf_counter()
            inv = provider.collect(nodes)
            took = time.perf_counter() - started
        finally:
            emu.terminate()
            emu.wait(10)
    rules = sum(len(g.rules) for g in inv.security_groups)
    entries = sum(len(t.entries) for t in inv.route_tables)
    print(f"collection: {took:.2f} s for {len(inv.instances)} instances, {len(inv.network_interfaces)} ENIs, "
          f"{len(inv.security_groups)} groups / {rules} rules, {len(inv.route_tables)} route tables / {entries} "
          f"entries; {provider.calls} API calls ({provider.calls / took:.0f} calls/s), errors={len(inv.errors)}")

    started = time.perf_counter()
    index = CloudIndex(inv)
    print(f"index build: {(time.perf_counter() - started) * 1000:.1f} ms")
    rng = random.Random(1)
    nics = [index.primary_eni(i) for i in inv.instances]
    primary = {nic.id: ip_address(nic.primary_ip) for nic in nics if nic.primary_ip}
    assert len(primary) == len(nics), "every emulated instance has a primary address"
    flows = [Flow(ip_address(f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.9"), primary[nic.id],
                  rng.choice(["tcp", "udp"]), None, rng.randint(1, 65535)) for nic in nics for _ in range(20)]
    started = time.perf_counter()
    targets = [nic for nic in nics for _ in range(20)]
    allowed = sum(evaluate(index, nic, "ingress", flow).allowed for nic, flow in zip(targets, flows, strict=True))
    took = time.perf_counter() - started
    print(f"security-group evaluation: {len(flows) / took:,.0f} decisions/s "
          f"({GROUPS_PER_NIC * RULES} rules per NIC, {len(flows)} flows, {allowed} allowed)")
    pairs = [(f"node-{a}", f"node-{b}") for a in range(0, INSTANCES, 10) for b in range(0, 100, 10)]
    started = time.perf_counter()
    for src, dst in pairs:
        d = index.instance_of_node(dst)
        assert d is not None, f"{dst} is not an emulated instance"
        evaluate_node_to_node(index, src, dst, Packet(src="172.16.0.9", dst=d.private_ips[0], protocol="tcp",
                                                      dport=443))
    took = time.perf_counter() - started
    print(f"node-to-node cloud evaluation (SG egress + route + SG ingress): {len(pairs) / took:,.0f} paths/s")


if __name__ == "__main__":
    main()
