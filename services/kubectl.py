"""`kubectl netdiag` (the `kubectl-netdiag` executable on PATH): the netdiag CLI, addressed in
Kubernetes terms.

    kubectl netdiag diagnose --from pod/web-1 -n shop --to svc/api --port 80 [--protocol tcp]

`pod/NAME`, `svc/NAME` (also `service/`) and `node/NAME` are resolved to addresses through the
kubeconfig with the official client (a bare IP passes through); then the normal CLI runs:
against a gateway with `--server`, or with no server at all — `netdiag snapshot capture` of
the cluster (API objects, plus node dumps from the agents on `--nats` or run here with
`--agent`), then `netdiag diagnose --snapshot` of it, locally. Any other command goes to the
netdiag CLI unchanged. Exit status is the CLI's (a usage error, an unloadable kubeconfig or a
name that does not resolve: 3).

Like `netdiag`, it imports the Kubernetes client only when `diagnose` runs, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
from pathlib import Path
from typing import Any

from services import cli

KINDS = {"pod": "pod", "pods": "pod", "po": "pod", "svc": "service", "service": "service", "services": "service",
         "node": "node", "nodes": "node", "no": "node"}


class ResolveError(Exception):
    pass


def resolve(api: Any, ref: str, namespace: str) -> str:
    """`pod/NAME`, `svc/NAME`, `node/NAME` or an IP address → the address to diagnose."""
    try:
        return str(ipaddress.ip_address(ref))
    except ValueError:
        pass
    kind, _, name = ref.partition("/")
    if kind.lower() not in KINDS or not name:
        raise ResolveError(f"{ref!r}: expected pod/NAME, svc/NAME, node/NAME or an IP address")
    kind = KINDS[kind.lower()]
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    try:
        if kind == "pod":
            pod = core.read_namespaced_pod(name, namespace)
            if not pod.status or not pod.status.pod_ip:
                raise ResolveError(f"pod {namespace}/{name} has no IP yet (phase {pod.status and pod.status.phase})")
            return str(pod.status.pod_ip)
        if kind == "service":
            svc = core.read_namespaced_service(name, namespace)
            cluster_ip = svc.spec.cluster_ip if svc.spec else None
            if not cluster_ip or cluster_ip == "None":
                raise ResolveError(f"service {namespace}/{name} is headless: diagnose one of its pods instead")
            return str(cluster_ip)
        node = core.read_node(name)
        addresses = {a.type: a.address for a in ((node.status and node.status.addresses) or [])}
        if "InternalIP" not in addresses:
            raise ResolveError(f"node {name} reports no InternalIP")
        return str(addresses["InternalIP"])
    except ApiException as exc:
        where = name if kind == "node" else f"{namespace}/{name}"
        reason = "not found" if exc.status == 404 else f"{exc.status} {exc.reason}"
        raise ResolveError(f"{kind} {where}: {reason}") from None


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="kubectl netdiag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diagnose", help="why can't --from reach --to on --port?")
    d.add_argument("--from", dest="src", required=True, metavar="pod/NAME|svc/NAME|node/NAME|IP")
    d.add_argument("--to", dest="dst", required=True, metavar="pod/NAME|svc/NAME|node/NAME|IP")
    d.add_argument("--port", type=cli.port_number, required=True, help="destination port (1-65535)")
    d.add_argument("--protocol", type=str.lower, choices=["tcp", "udp"], default="tcp")
    d.add_argument("-n", "--namespace", default="default", help="namespace of pod/ and svc/ names")
    d.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, in-cluster, ~/.kube/config")
    d.add_argument("--server", help="a netdiag gateway URL; without it, capture a snapshot and diagnose here")
    d.add_argument("--nats", dest="nats_url", help="(no --server) NATS the cluster's node agents answer on")
    d.add_argument("--collect-timeout", type=cli.collect_timeout, metavar="SECONDS",
                   help="seconds to wait for node agents (more than 0, at most 60; default 5)")
    d.add_argument("--agent", action="append", metavar="NODE[=NETNS]", help="(no --server) run a node agent here")
    d.add_argument("--output", choices=["text", "json"], default="text")
    d.add_argument("-v", "--verbose", action="store_true")
    return p


def diagnose_argv(args: argparse.Namespace, src: str, dst: str) -> list[str]:
    argv = ["diagnose", "--src", src, "--dst", dst, "--port", str(args.port), "--protocol", args.protocol,
            "--output", args.output]
    argv += ["--collect-timeout", str(args.collect_timeout)] if args.collect_timeout is not None else []
    return [*argv, "--verbose"] if args.verbose else argv


def _is_ip(ref: str) -> bool:
    try:
        ipaddress.ip_address(ref)
    except ValueError:
        return False
    return True


def run_diagnose(args: argparse.Namespace) -> int:
    needs_cluster = not (args.server and _is_ip(args.src) and _is_ip(args.dst))  # names, or a capture
    try:
        if needs_cluster:
            cli.require_cluster(args.kubeconfig)
    except cli.CliError as exc:
        print(f"kubectl-netdiag: {exc}", file=sys.stderr)
        return exc.code
    try:
        api = None
        if needs_cluster:
            from shared.kube import api_client

            api = api_client(args.kubeconfig)
        src, dst = resolve(api, args.src, args.namespace), resolve(api, args.dst, args.namespace)
    except ResolveError as exc:
        print(f"kubectl-netdiag: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    print(f"kubectl-netdiag: {args.src} = {src}, {args.dst} = {dst}", file=sys.stderr)
    if args.server:
        return cli.main([*diagnose_argv(args, src, dst), "--server", args.server])
    with tempfile.TemporaryDirectory(prefix="netdiag-snapshot-") as snapshot:
        capture = ["snapshot", "capture", "--out", snapshot]
        capture += ["--kubeconfig", str(args.kubeconfig)] if args.kubeconfig else []
        capture += ["--nats", args.nats_url] if args.nats_url else []
        for agent in args.agent or []:
            capture += ["--agent", agent]
        # a node that did not answer is no reason to stop: the diagnosis states what is missing
        if cli.main(capture) not in (0, cli.EXIT_SYSTEM):
            return cli.EXIT_SYSTEM
        return cli.main([*diagnose_argv(args, src, dst), "--snapshot", snapshot])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["diagnose"]:
        return cli.main(argv)  # every other netdiag command, unchanged
    return run_diagnose(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
