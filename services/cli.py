"""The `netdiag` command (composition root: the one place that may import every service).

Exit status (README "Exit status" lists it per command):
  diagnose   0 REACHABLE, 1 UNREACHABLE, 2 AMBIGUOUS/UNDETERMINED, 3 usage error,
             4 system error (bus/gateway unreachable, diagnosis failed)
  --batch    the highest status any line would have had alone (services/batch.py)
  every command: 3 for a usage error (argparse's own 2 would read as AMBIGUOUS), 4 for a system error.

Start-up is kept short: at module level only argparse and the thin gateway client
(services/client.py, standard library only). The stack, the services, pydantic models,
msgspec and the Kubernetes client are imported by the commands that use them, so `--help`
and `diagnose --server` do not pay for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from services.client import EXIT_SYSTEM, EXIT_USAGE, CommandError, Gateway

EXIT = {"REACHABLE": 0, "UNREACHABLE": 1, "AMBIGUOUS": 2, "UNDETERMINED": 2}
BATCH_CONCURRENCY = 16
LOG_LEVELS = ("debug", "info", "warning", "error")
EXAMPLE_SNAPSHOT = "examples/snapshots/shop"

CliError = CommandError  # the name the commands (and plugins) raise


# ------------------------------------------------------------------ argument checking


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit 3: argparse's own 2 would read as
    AMBIGUOUS/UNDETERMINED to a script checking the exit status."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: use 1-65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: use 1-65535")
    return value


def listen_port(text: str) -> int:
    """A port to listen on: 0 lets the kernel pick a free one."""
    return 0 if text.strip() == "0" else port_number(text)


def collect_timeout(text: str) -> float:
    """Seconds, within the API's own bounds (DiagnosisOptions.collect_timeout_s)."""
    from pydantic import ValidationError

    from shared.schemas import DiagnosisOptions

    try:
        return DiagnosisOptions(collect_timeout_s=float(text)).collect_timeout_s
    except (ValueError, ValidationError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not a number"
        raise argparse.ArgumentTypeError(f"{text!r}: {reason.lower()} (seconds)") from None


def _snapshot_dir(path: Path | None, flag: str = "--snapshot") -> None:
    """Fail fast, before any stack starts, on a snapshot path that cannot be one."""
    if path is None:
        return
    if not path.exists():
        raise CliError(f"{flag} {path}: no such directory (a snapshot directory, e.g. {EXAMPLE_SNAPSHOT})",
                       EXIT_USAGE)
    if not (path / "kubernetes").is_dir():
        raise CliError(f"{flag} {path}: not a snapshot (no kubernetes/ directory; see docs/snapshot.md)",
                       EXIT_USAGE)


def require_cluster(kubeconfig: Path | None) -> None:
    """A live-cluster command needs a kubeconfig that loads (or the in-cluster account): say so on
    one line, naming what to pass, instead of starting and failing every diagnosis."""
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise CliError(f"--kubeconfig {kubeconfig}: no such file", EXIT_USAGE)
    from shared.kube import api_client

    try:
        api_client(kubeconfig)
    except Exception as exc:  # ConfigException, YAML and key errors of a broken file: all "no cluster"
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "no Kubernetes cluster configured"
        reason = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        raise CliError(f"{where} ({reason}): pass --kubeconfig FILE, or --snapshot {EXAMPLE_SNAPSHOT} to try "
                       "the bundled example", EXIT_USAGE) from None


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from pydantic import ValidationError

    from shared.config import Settings

    try:
        # --live with in-process agents (--agent): they answer the probe and trace its drops
        live = {"live_probe": True} if getattr(args, "live", False) else {}
        return Settings.from_env(snapshot=getattr(args, "snapshot", None), kubeconfig=getattr(args, "kubeconfig", None),
                                 collect_timeout_s=getattr(args, "collect_timeout", None), **{**live, **extra})
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(map(str, e["loc"]))
        raise CliError(f"configuration {field} (NETDIAG_{field.upper()}): {e['msg']}", EXIT_USAGE) from None


def _agents(args: argparse.Namespace) -> dict[str, str | None]:
    """`--agent NODE[=NETNS]` (repeatable): node agents run inside the embedded stack."""
    out: dict[str, str | None] = {}
    for spec in getattr(args, "agent", None) or []:
        node, _, netns = spec.partition("=")
        if not node:
            raise CliError(f"--agent {spec!r}: expected NODE or NODE=NETNS", EXIT_USAGE)
        out[node] = netns or None
    return out


# ------------------------------------------------------------------ gateway: --server or embedded


def with_gateway(args: argparse.Namespace, work: Callable[[str], int]) -> int:
    """`work(gateway_url)` against --server, or against an embedded stack started for it."""
    if args.server:
        Gateway(args.server)  # a malformed URL is a usage error before anything runs
        return work(args.server)
    # the client is synchronous: it runs in a thread while this loop serves the stack
    return with_stack(args, lambda stack: _in_thread(work, stack.url))


async def _in_thread(work: Callable[[str], int], url: str) -> int:
    import asyncio

    return await asyncio.to_thread(work, url)


def with_stack(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    """`await work(stack)` on an embedded stack started for the command's cluster."""
    import asyncio

    from services.stack import EmbeddedStack
    from shared.bus import BusUnavailable

    settings = _settings(args)
    if settings.snapshot is None:
        require_cluster(settings.kubeconfig)
    _snapshot_dir(settings.snapshot)

    async def run() -> int:
        async with EmbeddedStack(settings, agents=_agents(args)) as stack:
            return await work(stack)

    try:
        return asyncio.run(run())
    except BusUnavailable as exc:
        raise CliError(str(exc)) from exc


# ------------------------------------------------------------------ commands


def _progress_printer(enabled: bool) -> Callable[[dict[str, Any]], None] | None:
    if not enabled:
        return None

    def show(event: dict[str, Any]) -> None:
        ms = f" {event['elapsed_ms']:.0f} ms" if event.get("elapsed_ms") else ""
        msg = f" {event['message']}" if event.get("message") else ""
        print(f"\r\033[K… {event.get('stage')}: {event.get('state')}{msg}{ms}", end="", file=sys.stderr, flush=True)
    return show


FLAGS = {"src": "--src", "dst": "--dst", "port": "--port", "protocol": "--protocol",
         "options.collect_timeout_s": "--collect-timeout"}


def _invalid(fields: list[dict[str, str]], fallback: str) -> CliError:
    details = "; ".join(f"{FLAGS.get(f['field'], f['field'])}: {f['message']}" for f in fields) or fallback
    return CliError(f"invalid request: {details}", EXIT_USAGE)


def _request_json(args: argparse.Namespace) -> str:
    """The command line as a request body. Validated exactly as the API validates a body: here
    for an embedded stack; by the gateway itself with --server (its 422 names the same fields),
    so a command against a running gateway does not import pydantic before it sends."""
    missing = [f"--{n}" for n in ("src", "dst", "port", "protocol") if getattr(args, n) is None]
    if missing:
        raise CliError(f"missing {', '.join(missing)} (or use --batch FILE)", EXIT_USAGE)
    body: dict[str, Any] = {"src": args.src, "dst": args.dst, "port": args.port, "protocol": args.protocol}
    if args.collect_timeout is not None:
        body["options"] = {"collect_timeout_s": args.collect_timeout}
    if args.live:  # the kernel as a second witness (docs/live.md)
        body.setdefault("options", {})["live"] = True
        if args.live_timeout is not None:
            body["options"]["live_timeout_s"] = args.live_timeout
    if args.server:
        return json.dumps(body)
    from shared.intake import RequestInvalid, parse_request

    try:
        return parse_request(json.dumps(body)).model_dump_json()
    except RequestInvalid as exc:
        raise _invalid(exc.fields, str(exc)) from None


def print_diagnosis(doc: dict[str, Any], output: str, verbose: bool = False) -> int:
    """Print one diagnosis document; its exit status."""
    if output == "json":
        print(json.dumps(doc, indent=2), flush=True)
    else:
        from services.render import render_diagnosis
        from shared.schemas import Diagnosis

        print(render_diagnosis(Diagnosis.model_validate(doc), verbose=verbose), flush=True)
    result = doc.get("result")
    if doc.get("status") == "failed" or not isinstance(result, dict):
        return EXIT_SYSTEM
    return EXIT.get(str(result.get("verdict")), EXIT_SYSTEM)


def cmd_diagnose(args: argparse.Namespace) -> int:
    if args.batch:
        return _diagnose_batch(args)
    request = _request_json(args)
    show = args.output == "text" and sys.stderr.isatty()

    def work(url: str) -> int:
        gw = Gateway(url)
        try:
            doc = gw.follow(gw.submit(request), _progress_printer(show))
        except CommandError as exc:
            if exc.fields:  # the gateway refused a field: the same message as a local check
                raise _invalid(exc.fields, str(exc)) from None
            raise
        finally:
            gw.close()
        if show:
            print("\r\033[K", end="", file=sys.stderr)
        return print_diagnosis(doc, args.output, args.verbose)

    return with_gateway(args, work)


def _diagnose_batch(args: argparse.Namespace) -> int:
    import asyncio

    from services.batch import diagnose_batch, diagnose_batch_embedded, open_batch

    if any(getattr(args, n) is not None for n in ("src", "dst", "port", "protocol")):
        raise CliError("--batch takes the requests from the file: drop --src/--dst/--port/--protocol", EXIT_USAGE)
    fh = open_batch(args.batch)
    try:
        if args.server:
            Gateway(args.server)  # a malformed URL is a usage error before anything runs
            return asyncio.run(diagnose_batch(fh, args.server, args.concurrency))
        # embedded: the lines go straight to the stack's own gateway intake, on its loop
        return with_stack(args, lambda stack: diagnose_batch_embedded(fh, stack, args.concurrency))
    finally:
        fh.close()


def cmd_watch(args: argparse.Namespace) -> int:
    gw = Gateway(args.server)
    for count, doc in enumerate(gw.results(), 1):
        if args.output == "json":
            print(json.dumps(doc), flush=True)
        else:
            from services.render import render_diagnosis
            from shared.schemas import Diagnosis

            print(render_diagnosis(Diagnosis.model_validate(doc)), "\n", flush=True)
        if args.count and count >= args.count:
            return 0
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from services.stack import EmbeddedStack
    from shared.bus import BusUnavailable

    settings = _settings(args)
    _snapshot_dir(settings.snapshot)
    if settings.snapshot is None:
        require_cluster(settings.kubeconfig)  # never "up" and "ready" while no cluster model can load

    async def serve() -> int:
        stack = EmbeddedStack(settings, data_dir=args.data_dir, host=args.host, port=args.port,
                              agents=_agents(args))
        try:
            await stack.start()
        except BusUnavailable as exc:
            await stack.stop()
            raise CliError(str(exc)) from exc
        source = f"snapshot {settings.snapshot}" if settings.snapshot else "live cluster"
        print(f"netdiag is up: {stack.url}  ({source}; NATS {stack.nats_url}; Ctrl-C stops)", flush=True)
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

    return asyncio.run(serve())


def cmd_matrix(args: argparse.Namespace) -> int:
    """Pod-to-pod reachability under the NetworkPolicies of a snapshot (no cluster needed).
    Exit status: the table 0; --batch the highest of its lines (0 allowed, 1 denied, 3 invalid line)."""
    from services.topology.plan import full_objects
    from services.topology.sources.snapshot import SnapshotError, load_snapshot

    _snapshot_dir(args.snapshot)
    fh = None
    if args.batch:
        from services.batch import open_batch

        fh = open_batch(args.batch)
    try:
        loaded = load_snapshot(args.snapshot)
    except SnapshotError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    objects = full_objects(loaded.model)
    if fh is not None:
        try:
            return _policy_batch(objects, fh)
        finally:
            fh.close()
    if args.namespace is not None:
        known = {n["metadata"]["name"] for n in objects.namespaces} | {
            p["metadata"].get("namespace", "default") for p in objects.pods}
        if args.namespace not in known:
            raise CliError(f"--namespace {args.namespace}: no such namespace in {args.snapshot} "
                           f"(namespaces: {', '.join(sorted(known))})", EXIT_USAGE)
    from services.simulator.matrix import compute_matrix

    matrix = compute_matrix(objects, namespace=args.namespace, port=args.port, protocol=args.protocol.upper())
    print(json.dumps(matrix.to_json()) if args.output == "json" else matrix.to_text())
    return 0


def _policy_batch(objects: Any, fh: Any) -> int:
    """NetworkPolicy verdicts for many queries at once (one JSON request per line, in order)."""
    from services.batch import validated
    from services.simulator.policy import PolicyIndex

    index = PolicyIndex.build(objects)
    worst = 0
    for _, req in validated(fh):
        if isinstance(req, dict):
            worst = max(worst, EXIT_USAGE)
            print(json.dumps(req))
            continue
        v = index.evaluate(req.src, req.dst, req.protocol, req.port)
        worst = max(worst, 0 if v.allowed else 1)
        print(json.dumps({"src": str(req.src), "dst": str(req.dst), "port": req.port, "protocol": req.protocol,
                          "allowed": v.allowed, "egress": v.egress.explanation, "ingress": v.ingress.explanation}))
    return worst


def _pod_ips(source: Any) -> dict[str, str]:
    """Pod IP → ns/name, so each node dump names the pod behind each network namespace."""
    with source.model.lock:
        pods = list(source.model.objects["Pod"].values())
    return {ip["ip"]: f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in pods if not p.get("spec", {}).get("hostNetwork")
            for ip in (p.get("status", {}).get("podIPs") or [])}


def cmd_snapshot_capture(args: argparse.Namespace) -> int:
    """Freeze a live cluster into a snapshot directory: Kubernetes objects, node dumps."""
    require_cluster(args.kubeconfig)
    import asyncio

    return asyncio.run(_snapshot_capture(args))


async def _snapshot_capture(args: argparse.Namespace) -> int:
    import asyncio

    from services.cloud.factory import make_provider
    from services.cloud.provider import CloudError
    from services.collector.capture import capture_nodes
    from services.stack import EmbeddedStack
    from services.topology.capture import capture_kubernetes
    from services.topology.sources.live import LiveSource
    from shared.bus import Bus, BusUnavailable
    from shared.cloud import dump_inventory, empty_inventory
    from shared.config import Settings
    from shared.kube import api_client

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


def cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    from services.collector.agent import run_agent
    from shared.bus import BusUnavailable

    try:
        settings = _settings(args, nats_url=args.nats_url, live_probe=args.live_probe or None,
                             drop_metrics=args.drop_metrics or None, metrics_port=args.metrics_port)
        asyncio.run(run_agent(settings, args.node, args.netns))
    except BusUnavailable as exc:
        raise CliError(str(exc)) from exc
    return 0


# ------------------------------------------------------------------ parser


def _register_natsauth(sub: argparse._SubParsersAction) -> None:
    from services.natsauth.service import build_parser, run

    build_parser(sub.add_parser(
        "nats-auth", help="NATS auth callout: admit each node agent by its Kubernetes token, for its own node only",
    )).set_defaults(func=run)


def _register_trace(sub: argparse._SubParsersAction) -> None:
    from services.simulator.dataplane.trace_cli import register

    register(sub)


Registrar = Callable[[argparse._SubParsersAction], None]


def _lazy_commands() -> dict[str, tuple[str, Registrar]]:
    """Commands whose modules are imported only when they run: name → (help, registrar).
    Plugins (the `netdiag.commands` entry points, e.g. the lab's `lab`) are among them."""
    from importlib.metadata import entry_points

    lazy: dict[str, tuple[str, Registrar]] = {
        "trace": ("trace a packet through one engine (iptables-save)", _register_trace),
        "nats-auth": ("NATS auth callout for the node agents (a Deployment in a cluster)", _register_natsauth),
    }
    for plugin in entry_points(group="netdiag.commands"):
        lazy[plugin.name] = (f"(plugin {plugin.value})", _plugin_registrar(plugin))
    return lazy


def _plugin_registrar(plugin: Any) -> Registrar:
    def register(sub: argparse._SubParsersAction) -> None:
        try:
            plugin.load()(sub)
        except (ImportError, AttributeError) as exc:
            raise CliError(f"command plugin {plugin.name!r} unavailable: {exc}") from exc
    return register


def build_parser(full: str | None = None) -> Parser:
    """The `netdiag` parser; lazy commands are stubs unless `full` names the one to register."""
    p = Parser(prog="netdiag", description="Kubernetes network diagnosis: why can't A reach B?")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="debug, info, warning (default), error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("diagnose", help="diagnose one path (or a batch)")
    d.add_argument("--src", help="source IP")
    d.add_argument("--dst", help="destination IP")
    d.add_argument("--port", type=port_number, help="destination port (1-65535)")
    d.add_argument("--protocol", type=str.lower, choices=["tcp", "udp"], help="tcp or udp")
    d.add_argument("--batch", metavar="FILE",
                   help="JSONL file of requests ('-' = stdin); prints one JSON document per line, in order, "
                        "as each completes")
    d.add_argument("--concurrency", type=int, default=BATCH_CONCURRENCY, choices=range(1, 257), metavar="N",
                   help=f"--batch: diagnoses in flight at once (1-256, default {BATCH_CONCURRENCY})")
    source = d.add_mutually_exclusive_group()  # one cluster at a time
    source.add_argument("--server", help="gateway URL; without it an embedded stack runs for this command")
    source.add_argument("--snapshot", type=Path, help="snapshot directory to diagnose (embedded stack)")
    source.add_argument("--kubeconfig", type=Path, help="live cluster (embedded stack)")
    d.add_argument("--collect-timeout", type=collect_timeout, metavar="SECONDS",
                   help="seconds to wait for node agents (more than 0, at most 60; default 5)")
    d.add_argument("--agent", action="append", metavar="NODE[=NETNS]",
                   help="run a node agent in the embedded stack (repeatable; the lab uses NODE=NETNS)")
    d.add_argument("--live", action="store_true", help="also probe for real from the source and trace the kernel's "
                   "drops of that flow (node agents with live probes on); the kernel's answer wins")
    d.add_argument("--live-timeout", type=float, metavar="SECONDS", help="the live probe's timeout (≤ 5, default 2)")
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
    u.add_argument("--port", type=listen_port, default=8080, help="0: any free port (default 8080)")
    u.add_argument("--data-dir", type=Path, default=Path.home() / ".netdiag")
    source = u.add_mutually_exclusive_group()
    source.add_argument("--snapshot", type=Path, help=f"serve this snapshot (try {EXAMPLE_SNAPSHOT})")
    source.add_argument("--kubeconfig", type=Path, help="serve this live cluster")
    u.add_argument("--agent", action="append", metavar="NODE[=NETNS]", help="run a node agent in this process")
    u.set_defaults(func=cmd_up)

    a = sub.add_parser("agent", help="run the node agent of one node (a DaemonSet pod in a cluster)")
    a.add_argument("--node", required=True)
    a.add_argument("--netns", help="named netns that is this node's host namespace (the lab)")
    a.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    a.add_argument("--live-probe", action="store_true", help="answer live probes and trace their kernel drops")
    a.add_argument("--drop-metrics", action="store_true", help="export kernel drop counters (by reason, location, "
                   "pod) on the metrics port (--metrics-port / NETDIAG_METRICS_PORT)")
    a.add_argument("--metrics-port", type=int, help="Prometheus /metrics port")
    a.set_defaults(func=cmd_agent)

    m = sub.add_parser("matrix", help="pod-to-pod reachability matrix under the NetworkPolicies of a snapshot")
    m.add_argument("--snapshot", type=Path, required=True)
    m.add_argument("--namespace", help="only pods of this namespace (default: all)")
    m.add_argument("--port", type=port_number, default=80)
    m.add_argument("--protocol", type=str.lower, choices=["tcp", "udp", "sctp"], default="tcp")
    m.add_argument("--output", choices=["text", "json"], default="text")
    m.add_argument("--batch", metavar="FILE", help="JSONL of {src,dst,port,protocol} queries: one policy verdict "
                                                   "per line")
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

    for name, (help_text, register) in _lazy_commands().items():
        if name == full:
            register(sub)
        else:  # a stub for --help; the real parser is built when the command runs
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:  # a lazy command: parse again with it registered
        args = build_parser(full=args.command).parse_args(argv)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        from shared.logs import setup_logging

        try:
            setup_logging(args.log_level)
        except ValueError as exc:  # NETDIAG_LOG_LEVEL from the environment
            raise CliError(f"log level: {exc}; use one of {', '.join(LOG_LEVELS)}", EXIT_USAGE) from None
        result = args.func(args)
        if hasattr(result, "__await__"):  # a plugin's async command
            import asyncio

            result = asyncio.run(result)
        return int(result or 0)
    except CliError as exc:
        print(f"netdiag: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, TimeoutError) as exc:  # never exit 1, which means UNREACHABLE
        print(f"netdiag: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_SYSTEM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
