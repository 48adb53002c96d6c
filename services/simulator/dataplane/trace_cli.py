"""`netdiag trace iptables`: trace one packet through a node's `iptables-save` output.

Prints the verdict, every DNAT destination with its probability, whether the packet is
masqueraded, the rules that matched and the assumptions made. A branch that exists only because
a rule we do not model was assumed to match (or not) has no probability: it is a possibility,
listed as such, so the probabilities shown never add past 100 %.

Exit status: 0 every branch accepts, 1 some branch drops or rejects, 3 bad input (arguments, or
a save file `iptables-restore` would refuse: cut short, garbled or empty — with the line number).
kube-proxy's own packet-flow tests (pkg/proxy/iptables/proxier_test.go) are the semantic
reference (see docs/dataplane.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, IPvAnyAddress, ValidationError

from services.simulator.dataplane.netfilter import (
    FlowState,
    IptablesParseError,
    TraceContext,
    Tracer,
    TraceTooLarge,
    parse_ipset_save,
    parse_iptables_save,
    verdict_summary,
)

DEFAULT_SPORT = 40000
EXIT_USAGE = 3  # as every netdiag command: argparse's 2 would read as AMBIGUOUS


class TraceRequest(BaseModel):
    """The validated command line (edge validation: clear messages for bad input)."""

    save: Path
    node_ip: list[IPvAnyAddress] = Field(min_length=1)
    ipset_save: Path | None = None
    src: IPvAnyAddress
    dst: IPvAnyAddress
    port: int = Field(ge=1, le=65535)
    sport: int = Field(DEFAULT_SPORT, ge=1, le=65535)
    protocol: Literal["tcp", "udp", "sctp", "icmp"]
    hook: Literal["PREROUTING", "OUTPUT"] = "PREROUTING"
    iif: str | None = None
    oif: str | None = None
    mark: int = 0
    output: Literal["text", "json"] = "text"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trace iptables …` to a `netdiag` sub-command parser set."""
    trace = subparsers.add_parser("trace", help="trace a packet through one engine")
    engines = trace.add_subparsers(dest="engine", required=True, metavar="{iptables}")
    p = engines.add_parser("iptables", help="trace a packet through iptables-save output",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", required=True, help="iptables-save (or ip6tables-save) output file, '-' for stdin")
    p.add_argument("--node-ip", required=True, action="append", nargs="+", metavar="IP",
                   help="the node's own addresses (addrtype LOCAL, MASQUERADE source)")
    p.add_argument("--ipset-save", help="`ipset save` output for -m set rules")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", required=True, type=int, help="destination port")
    p.add_argument("--sport", type=int, default=DEFAULT_SPORT, help="source port (default %(default)s)")
    p.add_argument("--protocol", required=True, type=str.lower)
    p.add_argument("--hook", default="PREROUTING", type=str.upper,
                   help="PREROUTING (packet arrives at the node) or OUTPUT (sent by the node)")
    p.add_argument("--iif", help="incoming interface (PREROUTING)")
    p.add_argument("--oif", help="outgoing interface, if known")
    p.add_argument("--mark", type=_mark, default=0, help="packet mark (decimal or 0x hex)")
    p.add_argument("--output", default="text", choices=["text", "json"])
    p.set_defaults(func=run)
    return p


def _mark(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mark: use a number such as 16384 or 0x4000") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mark: a 32-bit unsigned number")
    return value


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 every branch accepts, 1 some branch drops/rejects, 3 bad input."""
    try:
        req = TraceRequest(save=Path(args.save), node_ip=[ip for group in args.node_ip for ip in group],
                           ipset_save=Path(args.ipset_save) if args.ipset_save else None, src=args.src,
                           dst=args.dst, port=args.port, sport=args.sport, protocol=args.protocol, hook=args.hook,
                           iif=args.iif, oif=args.oif, mark=args.mark, output=args.output)
        report = trace(req)
    except ValidationError as exc:
        msgs = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}"
                         for e in exc.errors())
        print(f"netdiag trace iptables: invalid arguments: {msgs}", file=sys.stderr)
        return EXIT_USAGE
    except IptablesParseError as exc:
        print(f"netdiag trace iptables: {args.save}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"netdiag trace iptables: {exc.filename or args.save}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TraceTooLarge, ValueError) as exc:
        print(f"netdiag trace iptables: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if req.output == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0 if report["verdict"] == "ACCEPT" else 1


def _read(path: Path) -> str:
    return sys.stdin.read() if str(path) == "-" else path.read_text()


def trace(req: TraceRequest) -> dict[str, Any]:
    """Trace and build the report (a plain dict: the JSON output)."""
    family = req.dst.version
    if req.src.version != family:
        raise ValueError("--src and --dst must be of the same address family")
    ruleset = parse_iptables_save(_read(req.save), family=family, strict=True)
    ipsets = parse_ipset_save(_read(req.ipset_save)) if req.ipset_save else None
    ctx = TraceContext(node_ips=list(req.node_ip), ipsets=ipsets)
    st = FlowState(src=req.src, dst=req.dst, protocol=req.protocol,
                   sport=None if req.protocol == "icmp" else req.sport,
                   dport=None if req.protocol == "icmp" else req.port,
                   icmp_type=8 if req.protocol == "icmp" else None, mark=req.mark,
                   iif=req.iif if req.hook == "PREROUTING" else None, oif=req.oif)
    branches = Tracer(ruleset, ctx).trace_node(st, req.hook)
    assumptions = ["conntrack: the packet is the first of a new connection (ctstate NEW)"]
    for b in branches:
        for a in b.assumptions:
            if a not in assumptions:
                assumptions.append(a)
    return {
        "packet": FlowState(src=req.src, dst=req.dst, protocol=req.protocol, sport=st.orig_sport,
                            dport=st.orig_dport).describe(),
        "hook": req.hook,
        "verdict": verdict_summary(branches),
        "destinations": _destinations(branches),
        "masquerade": _masquerade(branches),
        "branches": [b.as_dict() for b in branches],
        "assumptions": assumptions,
        "unsupported_rules": sorted({h.rule for b in branches for h in b.unsupported}),
        "warnings": ruleset.warnings + (ipsets.warnings if ipsets else []),
    }


def _destinations(branches: list) -> list[dict[str, Any]]:
    """Destination and verdict with its probability. Branches of an unsupported rule's two outcomes
    are alternatives, not shares of one packet's fate: they carry no probability ("possible")."""
    merged: dict[tuple[str | None, str | None, bool], float] = {}
    for b in branches:
        key = (b.dnat_destination, b.verdict, bool(b.unsupported))
        merged[key] = merged.get(key, 0.0) + b.probability
    return [{"destination": d, "verdict": v, "probability": None if possible else round(p, 6)}
            for (d, v, possible), p in merged.items()]


def _masquerade(branches: list) -> str:
    flags = {b.masquerade for b in branches if b.verdict == "ACCEPT"}
    return "yes" if flags == {True} else "no" if flags in ({False}, set()) else "some branches"


def render_text(report: dict[str, Any]) -> str:
    lines = [f"packet: {report['packet']} (entering at {report['hook']})", f"verdict: {report['verdict']}"]
    lines.append("destinations:")
    for d in report["destinations"]:
        dest = d["destination"] or "(no DNAT)"
        share = "possible" if d["probability"] is None else f"{d['probability'] * 100:6.2f}%"
        lines.append(f"  {dest:<28} {share:>8}  {d['verdict']}")
    lines.append(f"masquerade: {report['masquerade']}")
    for n, b in enumerate(report["branches"], 1):
        p = "possible (unsupported rule)" if b["unsupported"] else f"p={b['probability']:.4f}"
        head = f"branch {n}: {b['verdict']} {p} hooks {' -> '.join(b['hooks'])}"
        if b["reject_with"]:
            head += f" (reject-with {b['reject_with']})"
        lines.append(head)
        lines.append(f"  final packet: {b['packet']}")
        for r in b["rules"]:
            lines.append(f"  {r['hook']:<11} {r['table']:<7} {r['chain']} #{r['position']}: {r['rule']}")
        if b["decided_by"] and b["decided_by"]["position"] == 0:
            d = b["decided_by"]
            lines.append(f"  {d['hook']:<11} {d['table']:<7} policy {d['rule']}")
    if report["unsupported_rules"]:
        lines.append("UNSUPPORTED_RULE (both outcomes explored):")
        lines += [f"  {r}" for r in report["unsupported_rules"]]
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in report["assumptions"]]
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m services.simulator.dataplane.trace_cli iptables …`)."""
    parser = argparse.ArgumentParser(prog="netdiag")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trace", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

