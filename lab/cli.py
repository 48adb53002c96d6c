"""`lab` commands: up / down / status / probe / demo.

Wired into the `netdiag` console script through the `netdiag.commands` entry-point group
(`lab = "lab.cli:register"`): `register(subparsers)` adds `lab` with its sub-commands; every leaf parser
sets `func(args) -> int`. `python -m lab ...` takes the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab import netns
from lab import state as lab_state
from lab.dataplane import Lab
from lab.demo import run_demo
from lab.scenario import Scenario, resolve


def _pick(name: str | None) -> str:
    if name:
        return name
    labs = lab_state.running()
    if len(labs) == 1:
        return labs[0]
    raise SystemExit(f"{len(labs)} labs are running ({', '.join(labs) or 'none'}): pass --name")


def cmd_up(args: argparse.Namespace) -> int:
    path = Path(args.scenario)
    try:
        scenario = Scenario.load(path)
    except (OSError, ValueError) as exc:
        print(f"invalid scenario {path}: {exc}", file=sys.stderr)
        return 2
    lab = Lab.up(resolve(scenario), prefix=args.name, scenario_path=path.resolve())
    st = lab.state
    print(f"lab {st.prefix} is up: scenario {st.scenario_name} ({st.cni}, iptables {st.iptables_backend}), "
          f"{len(st.nodes)} nodes, {len(st.pods)} pods")
    print(f"state: {lab_state.state_path(st.prefix)}")
    if args.api:
        try:
            api = lab.start_api()
        except Exception:
            lab.down()
            raise
        print(f"kubernetes api: http://{api.host}:{api.port} (kubeconfig {api.kubeconfig})")
    if scenario.cloud is not None:
        try:
            cloud = lab.start_cloud()
        except Exception:
            lab.down()
            raise
        print(f"cloud emulator: http://{cloud.endpoint} (NETDIAG_CLOUD_PROVIDER=alibaba "
              f"NETDIAG_CLOUD_ENDPOINT=http://{cloud.endpoint}, emulator AccessKey)")
    print(f"tear down with: lab down --name {st.prefix}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    prefix = _pick(args.name)
    removed = Lab.sweep(prefix)
    print(f"lab {prefix}: removed {len(removed)} namespaces")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    prefixes = [args.name] if args.name else lab_state.running()
    states = []
    for prefix in prefixes:
        try:
            states.append(lab_state.load(prefix))
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([json.loads(s.model_dump_json()) for s in states], indent=2))
        return 0
    if not states:
        print("no lab is running")
    for st in states:
        missing = [n for n in st.all_netns() if not netns.exists(n)]
        health = "ok" if not missing else f"{len(missing)} namespaces missing"
        print(f"lab {st.prefix}: scenario {st.scenario_name} ({st.cni}, iptables {st.iptables_backend}) "
              f"created {st.created_at:%Y-%m-%d %H:%M:%S} - {health}")
        for name, node in st.nodes.items():
            print(f"  node {name:<24} {node.ip:<15} netns {node.netns}  podCIDR {node.pod_cidr}")
        for key, pod in st.pods.items():
            alive = "-" if pod.pid is None else (
                f"pid {pod.pid}" if netns.pid_in_netns(pod.pid, pod.netns) else f"pid {pod.pid} (gone)")
            print(f"  pod  {key:<24} {pod.ip:<15} netns {pod.netns}  on {pod.node}  {alive}")
        if st.inet_netns:
            print(f"  internet {st.inet_ip} (netns {st.inet_netns}), external client {st.ext_ip} "
                  f"(netns {st.ext_netns})")
        api = f"http://{st.api.host}:{st.api.port} kubeconfig {st.api.kubeconfig}" if st.api else "not running"
        print(f"  kubernetes api: {api}")
        if st.cloud:
            print(f"  cloud emulator: http://{st.cloud.endpoint} (state {st.cloud.state_file})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    lab = Lab.attach(_pick(args.name))
    result = lab.probe(args.src, args.dst, args.port, args.protocol, args.timeout, args.dns_name)
    if args.json:
        print(result.model_dump_json())
    else:
        code = f" [{result.errno}]" if result.errno else ""
        print(f"{args.src} -> {args.dst}:{args.port}/{args.protocol}: {result.outcome}{code} "
              f"in {result.elapsed_ms:.1f} ms - {result.detail}")
    return 0 if result.ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True)
    up = sub.add_parser("up", help="build a lab from a scenario file")
    up.add_argument("--scenario", required=True, help="scenario YAML (see examples/lab/)")
    up.add_argument("--name", help="namespace name prefix (default: random ndtXXXXXX)")
    up.add_argument("--no-api", dest="api", action="store_false",
                    help="do not start the lab's Kubernetes API server")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="remove a lab's processes and namespaces (also after a crash)")
    down.add_argument("--name")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show running labs from their state files")
    status.add_argument("--name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    probe = sub.add_parser("probe", help="open a real socket inside a lab namespace")
    probe.add_argument("--from", dest="src", required=True, help="ns/pod, pod, node, ext or inet")
    probe.add_argument("--to", dest="dst", required=True,
                       help="IP, or pod:ns/name, node:name, svc:ns/name, lb:ns/name, inet")
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    probe.add_argument("--timeout", type=float, default=1.0)
    probe.add_argument("--dns-name", help="send a DNS query for this name (udp, or length-prefixed over tcp)")
    probe.add_argument("--name")
    probe.add_argument("--json", action="store_true")
    probe.set_defaults(func=cmd_probe)
    demo = sub.add_parser("demo", help="build the basic lab, diagnose a healthy and a broken path, tear down")
    demo.set_defaults(func=lambda _args: run_demo())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Entry point for the `netdiag.commands` group."""
    add_arguments(subparsers.add_parser("lab", help="the network-namespace Kubernetes lab"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="netdiag lab")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)
