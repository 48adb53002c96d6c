"""The `netdiag` command (composition root: the one place that imports every service).

Exit status of `diagnose`: 0 REACHABLE, 1 UNREACHABLE, 2 AMBIGUOUS/UNDETERMINED,
3 usage error, 4 system error (bus/gateway unreachable, diagnosis failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from services.cloud.provider import CloudError, make_provider
from services.collector.agent import run_agent
from services.collector.capture import capture_nodes
from services.natsauth.service import build_parser as natsauth_parser
from services.natsauth.service import run as run_natsauth
from services.render import render_diagnosis
from services.simulator.dataplane.trace_cli import register as register_trace
from services.simulator.matrix import compute_matrix
from services.simulator.policy import PolicyIndex
from services.stack import EmbeddedStack
from services.topology.capture import capture_kubernetes
from services.topology.plan import full_objects
from services.topology.sources.live import LiveSource
from services.topology.sources.snapshot import SnapshotError, load_snapshot
from shared.bus import Bus, BusUnavailable
from shared.cloud import dump_inventory, empty_inventory
from shared.config import Settings
from shared.kube import api_client
from shared.logs import setup_logging
from shared.schemas import Diagnosis, DiagnosisRequest, DiagnosisStatus, Verdict

EXIT = {Verdict.REACHABLE: 0, Verdict.UNREACHABLE: 1, Verdict.AMBIGUOUS: 2, Verdict.UNDETERMINED: 2}
EXIT_USAGE, EXIT_SYSTEM = 3, 4
BATCH_CONCURRENCY = 20
DEFAULT_WAIT_S = 120.0
SUBMIT_RETRIES = 4  # 503s retried with the same Idempotency-Key (about 5 s in all)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_SYSTEM) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ gateway client


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event, data = "message", list[str]()
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class GatewayClient:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base.rstrip("/")
        self.session = session

    async def submit(self, req: DiagnosisRequest) -> str:
        """POST with an Idempotency-Key, retrying a 503 (bus briefly down) with the same key: the
        request ends durably accepted once, or clearly refused."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": secrets.token_hex(16)}
        for attempt in range(SUBMIT_RETRIES + 1):
            try:
                async with self.session.post(f"{self.base}/api/v1/diagnoses", data=req.model_dump_json(),
                                             headers=headers) as resp:
                    body = await resp.json()
                    if resp.status == 202:
                        return str(body["id"])
                    if resp.status != 503 or attempt == SUBMIT_RETRIES:
                        raise CliError(f"gateway refused the request ({resp.status}): {body.get('error')}",
                                       EXIT_USAGE if resp.status < 500 else EXIT_SYSTEM)
            except aiohttp.ClientError as exc:
                raise CliError(f"cannot reach the gateway at {self.base}: {exc}") from exc
            await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def follow(self, diagnosis_id: str, on_progress: Callable[[dict[str, Any]], None]) -> Diagnosis:
        url = f"{self.base}/api/v1/diagnoses/{diagnosis_id}/events"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=DEFAULT_WAIT_S)) as resp:
            if resp.status != 200:
                raise CliError(f"gateway refused the event stream of {diagnosis_id} ({resp.status})")
            async for event, data in _sse(resp):
                if event == "result":
                    return Diagnosis.model_validate(data)
                on_progress(data)
        raise CliError(f"event stream of {diagnosis_id} ended without a result")

    @contextlib.asynccontextmanager
    async def results(self) -> AsyncIterator[AsyncIterator[Diagnosis]]:
        """The live stream of completed diagnoses. Once entered, the gateway has subscribed
        (it answers the headers after subscribing), so nothing submitted afterwards is missed."""
        async with self.session.get(f"{self.base}/api/v1/events",
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            if resp.status != 200:
                raise CliError(f"gateway refused the watch ({resp.status})")

            async def stream() -> AsyncIterator[Diagnosis]:
                async for event, data in _sse(resp):
                    if event == "result":
                        yield Diagnosis.model_validate(data)

            yield stream()

    async def get(self, diagnosis_id: str) -> Diagnosis | None:
        async with self.session.get(f"{self.base}/api/v1/diagnoses/{diagnosis_id}") as resp:
            return Diagnosis.model_validate(await resp.json()) if resp.status == 200 else None


def _auth_headers() -> dict[str, str]:
    """A gateway with auth (the Helm chart's) wants NETDIAG_TOKEN as a bearer token."""
    token = os.environ.get("NETDIAG_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.asynccontextmanager
async def gateway(args: argparse.Namespace) -> AsyncIterator[GatewayClient]:
    """A running gateway (--server), or an embedded stack started for this command."""
    async with aiohttp.ClientSession(headers=_auth_headers()) as session:
        if args.server:
            yield GatewayClient(args.server, session)
            return
        settings = Settings.from_env(snapshot=args.snapshot, kubeconfig=getattr(args, "kubeconfig", None),
                                     collect_timeout_s=getattr(args, "collect_timeout", None))
        try:
            async with EmbeddedStack(settings, agents=_agents(args)) as stack:
                yield GatewayClient(stack.url, session)
        except BusUnavailable as exc:
            raise CliError(str(exc)) from exc


def _agents(args: argparse.Namespace) -> dict[str, str | None]:
    """`--agent NODE[=NETNS]` (repeatable): node agents run inside the embedded stack."""
    out: dict[str, str | None] = {}
    for spec in getattr(args, "agent", None) or []:
        node, _, netns = spec.partition("=")
        if not node:
            raise CliError(f"--agent {spec!r}: expected NODE or NODE=NETNS", EXIT_USAGE)
        out[node] = netns or None
    return out


# ------------------------------------------------------------------ commands


def _progress_printer(enabled: bool) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if enabled:
            ms = f" {event['elapsed_ms']:.0f} ms" if event.get("elapsed_ms") else ""
            msg = f" {event['message']}" if event.get("message") else ""
            print(f"\r\033[K… {event['stage']}: {event['state']}{msg}{ms}", end="", file=sys.stderr, flush=True)
    return show


def _request_from_args(args: argparse.Namespace) -> DiagnosisRequest:
    missing = [f"--{n}" for n in ("src", "dst", "port", "protocol") if getattr(args, n) is None]
    if missing:
        raise CliError(f"missing {', '.join(missing)} (or use --batch FILE)", EXIT_USAGE)
    try:
        return DiagnosisRequest(src=args.src, dst=args.dst, port=args.port, protocol=args.protocol)
    except ValidationError as exc:
        details = "; ".join(f"--{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid request: {details}", EXIT_USAGE) from exc


async def cmd_diagnose(args: argparse.Namespace) -> int:
    if args.batch:
        return await _diagnose_batch(args)
    req = _request_from_args(args)
    async with gateway(args) as gw:
        diagnosis_id = await gw.submit(req)
        diagnosis = await gw.follow(diagnosis_id, _progress_printer(args.output == "text" and sys.stderr.isatty()))
    if args.output == "text" and sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    if args.output == "json":
        print(diagnosis.model_dump_json(indent=2))
    else:
        print(render_diagnosis(diagnosis, verbose=args.verbose))
    if diagnosis.status == DiagnosisStatus.FAILED or diagnosis.result is None:
        return EXIT_SYSTEM
    return EXIT[diagnosis.result.verdict]


async def _diagnose_batch(args: argparse.Namespace) -> int:
    """One request per line in, one JSON result per line out, same order; one stack start."""
    lines = Path(args.batch).read_text().splitlines() if args.batch != "-" else sys.stdin.read().splitlines()
    requests: list[DiagnosisRequest | str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            requests.append(DiagnosisRequest.model_validate_json(line))
        except ValidationError as exc:
            requests.append(f"line {n}: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()))
    async with gateway(args) as gw, gw.results() as completed:
        done: dict[str, Diagnosis] = {}
        arrived = asyncio.Condition()

        async def collect() -> None:
            async for d in completed:
                async with arrived:
                    done[d.id] = d
                    arrived.notify_all()

        collector = asyncio.create_task(collect())
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def run(req: DiagnosisRequest | str) -> dict[str, Any]:
            if isinstance(req, str):
                return {"error": req}
            request = json.loads(req.model_dump_json())
            async with slots:
                try:
                    diagnosis_id = await gw.submit(req)
                except CliError as exc:
                    return {"request": request, "error": str(exc)}
                try:
                    async with arrived:  # a result that arrived before we looked is already in `done`
                        await asyncio.wait_for(arrived.wait_for(lambda: diagnosis_id in done), DEFAULT_WAIT_S)
                    result: Diagnosis | None = done.pop(diagnosis_id)
                except TimeoutError:
                    result = await gw.get(diagnosis_id)  # the stream may have dropped: ask directly
                if result is None or result.status == DiagnosisStatus.QUEUED:
                    return {"request": request, "id": diagnosis_id,
                            "error": f"no result within {DEFAULT_WAIT_S:.0f}s"}
                return json.loads(result.model_dump_json())

        try:
            outputs = await asyncio.gather(*(run(r) for r in requests))
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    for out in outputs:
        print(json.dumps(out))
    # every diagnosis document carries "error" (null unless it failed): count only real ones
    errors = [o for o in outputs if o.get("error")]
    if any("request" not in o for o in errors):  # a line that is not a valid request
        return EXIT_USAGE
    return EXIT_SYSTEM if errors else 0


async def cmd_watch(args: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(headers=_auth_headers()) as session:
        gw = GatewayClient(args.server, session)
        count = 0
        async with gw.results() as completed:
            async for diagnosis in completed:
                if args.output == "json":
                    print(diagnosis.model_dump_json(), flush=True)
                else:
                    print(render_diagnosis(diagnosis), "\n", flush=True)
                count += 1
                if args.count and count >= args.count:
                    return 0
    return 0


async def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env(snapshot=args.snapshot, kubeconfig=args.kubeconfig)
    stack = EmbeddedStack(settings, data_dir=args.data_dir, host=args.host, port=args.port, agents=_agents(args))
    try:
        await stack.start()
    except BusUnavailable as exc:
        await stack.stop()
        raise CliError(str(exc)) from exc
    print(f"netdiag is up: {stack.url}  (NATS {stack.nats_url}; Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM too: `netdiag up` under a supervisor
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stack.stop()
    print("netdiag stopped", flush=True)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """Pod-to-pod reachability under the NetworkPolicies of a snapshot (no cluster needed)."""
    try:
        loaded = load_snapshot(args.snapshot)
    except SnapshotError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    objects = full_objects(loaded.model)
    if args.batch:
        return _policy_batch(objects, args.batch)
    matrix = compute_matrix(objects, namespace=args.namespace, port=args.port, protocol=args.protocol.upper())
    print(json.dumps(matrix.to_json()) if args.output == "json" else matrix.to_text())
    return 0


def _policy_batch(objects: Any, batch: str) -> int:
    """NetworkPolicy verdicts for many queries at once (one JSON request per line)."""
    index = PolicyIndex.build(objects)
    lines = Path(batch).read_text().splitlines() if batch != "-" else sys.stdin.read().splitlines()
    failed = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            req = DiagnosisRequest.model_validate_json(line)
        except ValidationError as exc:
            failed = True
            print(json.dumps({"error": f"line {n}: {exc.errors()[0]['msg']}"}))
            continue
        v = index.evaluate(req.src, req.dst, req.protocol, req.port)
        print(json.dumps({"src": str(req.src), "dst": str(req.dst), "port": req.port, "protocol": req.protocol,
                          "allowed": v.allowed, "egress": v.egress.explanation, "ingress": v.ingress.explanation}))
    return EXIT_USAGE if failed else 0


def _pod_ips(source: LiveSource) -> dict[str, str]:
    """Pod IP → ns/name, so each node dump names the pod behind each network namespace."""
    with source.model.lock:
        pods = list(source.model.objects["Pod"].values())
    return {ip["ip"]: f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in pods if not p.get("spec", {}).get("hostNetwork")
            for ip in (p.get("status", {}).get("podIPs") or [])}


async def cmd_snapshot_capture(args: argparse.Namespace) -> int:
    """Freeze a live cluster into a snapshot directory: Kubernetes objects, node dumps."""
    source = LiveSource(api_client(args.kubeconfig)).start()
    try:
        counts = await asyncio.to_thread(capture_kubernetes, source, args.out, sync_timeout_s=args.timeout)
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    finally:
        source.stop()
    print(f"kubernetes: {sum(counts.values())} objects ({', '.join(f'{k} {n}' for k, n in counts.items() if n)})")
    nodes = args.node or [n["metadata"]["name"] for n in source.model.objects["Node"].values()]
    agents = _agents(args)
    settings = Settings.from_env(nats_url=args.nats_url)
    stack = EmbeddedStack(settings, gateway=False, stages=(), agents=agents) if not args.nats_url else None
    try:
        if stack:
            await stack.start()
        bus = await Bus.connect(name="snapshot", settings=stack.settings if stack else settings)
        try:
            outcome = await capture_nodes(bus, nodes, args.out, timeout_s=args.timeout, pod_ips=_pod_ips(source))
        finally:
            await bus.close()
    except BusUnavailable as exc:
        raise CliError(str(exc)) from exc
    finally:
        if stack:
            await stack.stop()
    if settings.cloud_provider == "none":
        # written explicitly, so a diagnosis of this snapshot knows there is no cloud layer
        # (an absent cloud/ directory means "unknown")
        dump_inventory(empty_inventory("none", "cloud provider is 'none'"), Path(args.out) / "cloud")
    else:
        node_objects = [n for n in source.model.objects["Node"].values() if n["metadata"]["name"] in nodes]
        try:
            inventory = await asyncio.to_thread(make_provider(settings).collect, node_objects)
        except CloudError as exc:
            raise CliError(f"cloud inventory not captured: {exc}") from exc
        path = dump_inventory(inventory, Path(args.out) / "cloud")
        print(f"cloud: {len(inventory.instances)} instances, {len(inventory.security_groups)} security groups, "
              f"{len(inventory.load_balancers)} load balancers written to {path}"
              + "".join(f"\n  incomplete: {e}" for e in inventory.errors))
    for node, problem in outcome.items():
        print(f"node {node}: " + (problem or f"written to {Path(args.out) / 'nodes' / (node + '.json')}"))
    return EXIT_SYSTEM if any(outcome.values()) else 0


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netdiag", description="Kubernetes network diagnosis: why can't A reach B?")
    p.add_argument("--log-level", help="debug, info, warning (default), error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("diagnose", help="diagnose one path (or a batch)")
    d.add_argument("--src", help="source IP")
    d.add_argument("--dst", help="destination IP")
    d.add_argument("--port", type=int, help="destination port")
    d.add_argument("--protocol", choices=["tcp", "udp"], help="tcp or udp")
    d.add_argument("--batch", help="JSONL file of requests ('-' = stdin); prints one JSON result per line")
    d.add_argument("--server", help="gateway URL; without it an embedded stack runs for this command")
    d.add_argument("--snapshot", type=Path, help="snapshot directory to diagnose (embedded stack)")
    d.add_argument("--kubeconfig", type=Path, help="live cluster (embedded stack)")
    d.add_argument("--collect-timeout", type=float, help="seconds to wait for node agents (default 5)")
    d.add_argument("--agent", action="append", metavar="NODE[=NETNS]",
                   help="run a node agent in the embedded stack (repeatable; the lab uses NODE=NETNS)")
    d.add_argument("--output", choices=["text", "json"], default="text")
    d.add_argument("-v", "--verbose", action="store_true", help="show every step of every hop")
    d.set_defaults(func=cmd_diagnose)

    w = sub.add_parser("watch", help="print every diagnosis as it completes")
    w.add_argument("--server", default="http://127.0.0.1:8080")
    w.add_argument("--output", choices=["text", "json"], default="text")
    w.add_argument("--count", type=int, help="stop after this many")
    w.set_defaults(func=cmd_watch)

    u = sub.add_parser("up", help="run NATS, every service and the gateway in this process")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8080)
    u.add_argument("--data-dir", type=Path, default=Path.home() / ".netdiag")
    u.add_argument("--snapshot", type=Path)
    u.add_argument("--kubeconfig", type=Path)
    u.add_argument("--agent", action="append", metavar="NODE[=NETNS]", help="run a node agent in this process")
    u.set_defaults(func=cmd_up)

    a = sub.add_parser("agent", help="run the node agent of one node (a DaemonSet pod in a cluster)")
    a.add_argument("--node", required=True)
    a.add_argument("--netns", help="named netns that is this node's host namespace (the lab)")
    a.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    a.set_defaults(func=lambda args: run_agent(Settings.from_env(nats_url=args.nats_url), args.node, args.netns))

    na = natsauth_parser(sub.add_parser(
        "nats-auth", help="NATS auth callout: admit each node agent by its Kubernetes token, for its own node only"))
    na.set_defaults(func=run_natsauth)

    m = sub.add_parser("matrix", help="pod-to-pod reachability matrix under the NetworkPolicies of a snapshot")
    m.add_argument("--snapshot", type=Path, required=True)
    m.add_argument("--namespace", help="only pods of this namespace (default: all)")
    m.add_argument("--port", type=int, default=80)
    m.add_argument("--protocol", choices=["tcp", "udp", "sctp"], default="tcp")
    m.add_argument("--output", choices=["text", "json"], default="text")
    m.add_argument("--batch", help="JSONL of {src,dst,port,protocol} queries: one policy verdict per line")
    m.set_defaults(func=cmd_matrix)

    snap = sub.add_parser("snapshot", help="snapshot directories for offline analysis and bug reports")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    cap = snap_sub.add_parser("capture", help="write a snapshot of a live cluster")
    cap.add_argument("--out", type=Path, required=True)
    cap.add_argument("--kubeconfig", type=Path)
    cap.add_argument("--node", action="append", help="only these nodes' dumps (default: every node)")
    cap.add_argument("--nats", dest="nats_url", help="NATS the node agents answer on (default: run --agent here)")
    cap.add_argument("--agent", action="append", metavar="NODE[=NETNS]", help="run a node agent in this process")
    cap.add_argument("--timeout", type=float, default=30.0)
    cap.set_defaults(func=cmd_snapshot_capture)

    register_trace(sub)  # netdiag trace iptables ...

    for plugin in entry_points(group="netdiag.commands"):
        try:
            plugin.load()(sub)
        except (ImportError, AttributeError) as exc:
            print(f"netdiag: command plugin {plugin.name!r} unavailable: {exc}", file=sys.stderr)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    func = args.func
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except CliError as exc:
        print(f"netdiag: {exc}", file=sys.stderr)
        return exc.code
    except (aiohttp.ClientError, TimeoutError) as exc:  # never exit 1, which means UNREACHABLE
        print(f"netdiag: lost the gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_SYSTEM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
