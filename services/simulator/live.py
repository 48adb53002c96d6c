"""The second witness: after the walk, ask the source node's agent to probe the same flow for real
and every agent on the path for the kernel's drops of it, then set the two answers side by side.

The kernel is what happened: when it disagrees with the simulation the verdict follows the kernel
and LIVE_DIVERGES names both answers, the kernel's drop point and the hop where the model expected
otherwise (a bug report for netdiag, a warning for the user). When the simulation could not decide
(UNDETERMINED), the kernel decides and its drop reason names the cause (shared.codes.DROP_REASON_CODES).
An ECMP/endpoint split (AMBIGUOUS) stays AMBIGUOUS: one probe is one flow of many.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from shared.bus import Bus
from shared.codes import drop_codes, finding
from shared.hops import node_hop, pod_hop
from shared.live import (
    REACHED,
    DropsReply,
    DropsRequest,
    LiveDrop,
    LiveWitness,
    ProbeReply,
    ProbeRequest,
    node_drops_subject,
    node_probe_subject,
)
from shared.netstack import NodeDump
from shared.schemas import Assumption, DiagnosisRequest, FinalState, Finding, Path, Verdict
from shared.topology import EndpointKind, TopologyReport

STAGE = "simulator"
# beyond the probe's own timeout: finding the namespace, the bus round trip, and an agent that just
# started waiting for its drop tracer to attach (services/collector/agent.py TRACER_WAIT_S)
REQUEST_SLACK_S = 25.0
DROPS_TIMEOUT_S = 3.0


class Outcome:
    """What live confirmation changes in a result."""

    def __init__(self, witness: LiveWitness, verdict: Verdict) -> None:
        self.witness = witness
        self.verdict = verdict
        self.findings: list[Finding] = []
        self.assumptions: list[Assumption] = []


def _where(dumps: dict[str, NodeDump], node: str, inode: int) -> tuple[str | None, str | None]:
    dump = dumps.get(node)
    if dump is None:
        return None, None
    if dump.host.inode == inode:
        return node_hop(node), f"node {node}"
    pod = next((p for p in dump.pods if p.inode == inode), None)
    if pod is None:
        return None, None
    if pod.pod:
        return pod_hop(pod.pod), f"pod {pod.pod}"
    return node_hop(node), f"netns {pod.id} on {node}"


def kernel_verdict(probe: ProbeReply) -> Verdict:
    return Verdict.REACHABLE if probe.outcome in REACHED else Verdict.UNREACHABLE


async def _ask(bus: Bus, subject: str, body: str, timeout: float) -> bytes:
    msg = await bus.nc.request(subject, body.encode(), timeout=timeout)
    return bytes(msg.data)


async def witness(bus: Bus, request: DiagnosisRequest, report: TopologyReport, dumps: dict[str, NodeDump],
                  verdict: Verdict, paths: list[Path], findings: list[Finding],
                  diagnosis_id: str | None = None) -> Outcome:
    simulated = verdict.value
    src = report.src
    if src.kind not in (EndpointKind.POD, EndpointKind.NODE, EndpointKind.HOST_NETWORK_POD) or not src.node:
        return _unavailable(simulated, verdict, f"the source {request.src} is not a pod or node of the cluster: no "
                            "node agent can probe from it")
    node = src.node
    probe_req = ProbeRequest(node=node, src=request.src, dst=request.dst, port=request.port,
                             protocol=request.protocol, timeout_s=request.options.live_timeout_s,
                             diagnosis_id=diagnosis_id)
    try:
        data = await _ask(bus, node_probe_subject(node), probe_req.model_dump_json(),
                          request.options.live_timeout_s + REQUEST_SLACK_S)
        probe = ProbeReply.model_validate_json(data)
    except (TimeoutError, ValidationError, Exception) as exc:  # no responders, timeout, a bad reply
        return _unavailable(simulated, verdict, f"the agent of node {node} did not run the probe "
                            f"({type(exc).__name__}: {exc or 'no answer'}); are live probes enabled "
                            "(liveProbe.enabled / NETDIAG_LIVE_PROBE)?")
    if not probe.ok or probe.outcome is None or probe.sport is None or probe.started_at is None:
        return _unavailable(simulated, verdict, f"the agent of node {node} did not probe: {probe.error}", probe)
    drops, notes = await _drops(bus, dumps, node, probe, request.protocol, _path_addresses(paths))
    if request.dst.version == 6:
        notes.append("kernel drop tracing covers IPv4 only: drops of this IPv6 flow were not traced")
    return judge(LiveWitness(probe=probe, drops=drops, simulated=simulated, kernel=kernel_verdict(probe).value,
                             agreement="agree", notes=notes), verdict, paths, findings)


async def _drops(bus: Bus, dumps: dict[str, NodeDump], src_node: str, probe: ProbeReply, protocol: str,
                 neighbours: set[str]) -> tuple[list[LiveDrop], list[str]]:
    """Every node of the path (those with dumps, and the source's) for the kernel's drops of the flow."""
    assert probe.sport is not None and probe.started_at is not None
    sport, since = probe.sport, probe.started_at
    until = since + probe.elapsed_ms / 1000

    async def one(node: str) -> DropsReply:
        body = DropsRequest(node=node, sport=sport, protocol=protocol, since=since, until=until)
        try:
            return DropsReply.model_validate_json(await _ask(bus, node_drops_subject(node), body.model_dump_json(),
                                                             DROPS_TIMEOUT_S))
        except Exception as exc:
            return DropsReply(node=node, ok=False, error=f"{type(exc).__name__}: {exc or 'no answer'}")

    replies = await asyncio.gather(*(one(n) for n in sorted({src_node, *dumps})))
    drops: list[LiveDrop] = []
    notes: list[str] = []
    for reply in replies:
        if not reply.ok:
            notes.append(f"node {reply.node}: its kernel drops are unknown (agent: {reply.error})")
            continue
        if reply.tracing is not None and not reply.tracing.available:
            notes.append(f"node {reply.node}: kernel drop tracing unavailable ({reply.tracing.reason})")
            continue
        for e in reply.events:
            hop, where = _where(dumps, reply.node, e.netns_inode)
            if e.protocol == "arp" and e.dst not in neighbours:
                continue  # a neighbour this path does not need
            drops.append(LiveDrop(**e.model_dump(), node=reply.node, hop=hop, where=where,
                                  codes=list(drop_codes(e.reason, e.location))))
    drops.sort(key=lambda d: d.time)
    return drops, notes


def _path_addresses(paths: list[Path]) -> set[str]:
    """Every address the walked packet carried or was routed via: the neighbours its path resolves."""
    out: set[str] = set()
    for p in paths:
        for h in p.hops:
            for st in h.steps:
                for pkt in (st.packet_in, st.packet_out):
                    if pkt is not None:
                        out |= {str(pkt.src), str(pkt.dst)}
                gateway = getattr(st.info, "gateway", None)
                if gateway:
                    out.add(str(gateway))
    return out


def _unavailable(simulated: str, verdict: Verdict, why: str, probe: ProbeReply | None = None) -> Outcome:
    out = Outcome(LiveWitness(probe=probe, simulated=simulated, agreement="unavailable", detail=why), verdict)
    out.assumptions.append(Assumption(stage=STAGE, text=f"live confirmation was asked for but not possible: {why}",
                                      could_change_outcome=False))
    return out


def _point(drop: LiveDrop | None) -> str:
    if drop is None:
        return "no kernel drop of the flow was traced"
    dev = f" on {drop.device}" if drop.device else ""
    what = f"the ARP request for {drop.dst} (the flow waited for that neighbour)" if drop.protocol == "arp" else "it"
    where = drop.where or f"netns {drop.netns_inode}"
    return f"the kernel dropped {what} at {drop.location}{dev} in {where} on {drop.node} (reason {drop.reason})"


def _first_error_hop(paths: list[Path]) -> tuple[str | None, str | None]:
    for p in paths:
        if p.direction != "forward" or p.final in (FinalState.DELIVER, FinalState.FORWARD):
            continue
        return next((h.id for h in p.hops if h.status.value == "error"), p.hops[-1].id if p.hops else None), p.cause
    return None, None


def judge(w: LiveWitness, verdict: Verdict, paths: list[Path], findings: list[Finding]) -> Outcome:
    """Compare the two answers; the kernel's verdict wins where they differ."""
    assert w.probe is not None
    kernel = kernel_verdict(w.probe)
    # the flow's own drops first; a neighbour's ARP drop explains a flow that never left its queue
    flow = [d for d in w.drops if d.protocol != "arp"]
    arp = [d for d in w.drops if d.protocol == "arp"]
    strong = [d for d in flow if d.codes] or [d for d in arp if d.codes]
    drop: LiveDrop | None = strong[0] if strong else next(iter(flow or arp), None)
    causes = {p.cause for p in paths if p.direction == "forward" and p.cause}
    out = Outcome(w, verdict)
    for note in w.notes:
        out.assumptions.append(Assumption(stage=STAGE, text=f"live witness: {note}", could_change_outcome=False))
    probe_text = f"{w.probe.outcome}" + (f" ({w.probe.detail})" if w.probe.detail else "")
    if verdict == Verdict.AMBIGUOUS:
        w.agreement, w.detail = "agree", f"the probe's one flow was {probe_text}; other flows may differ"
        return out
    if verdict in (Verdict.UNDETERMINED,):
        out.verdict = kernel
        w.agreement = "kernel_decides"
        w.detail = f"the simulation could not decide; the kernel: {probe_text}; {_point(drop)}"
        if kernel == Verdict.UNREACHABLE and drop is not None and drop.codes and drop.hop and \
                not any(f.code in drop.codes for f in findings):
            out.findings.append(_kernel_finding(drop))
        return out
    if verdict == kernel:
        w.agreement = "agree"
        w.detail = f"the kernel agrees: {probe_text}" + (f"; {_point(drop)}" if kernel == Verdict.UNREACHABLE else "")
        if kernel == Verdict.UNREACHABLE and drop is not None and drop.codes and causes and \
                not causes & set(drop.codes):
            # same verdict, another point: the kernel often drops a consequence (an un-NATed reply at the
            # client) rather than the cause the model names, so this is said, not called a divergence
            w.detail += f" — where it names {', '.join(drop.codes[:3])}, the simulation names " \
                        f"{', '.join(sorted(causes))}"
        return out
    if verdict == Verdict.REACHABLE:
        return _diverges(out, kernel, probe_text, drop, paths, "the model passed the packet " + (
            f"through {drop.hop}" if drop is not None and drop.hop else "along its whole path"))
    hop, cause = _first_error_hop(paths)
    return _diverges(out, kernel, probe_text, drop, paths, f"the model dropped it at {hop or '?'} ({cause or '?'})")


def _diverges(out: Outcome, kernel: Verdict, probe_text: str, drop: LiveDrop | None, paths: list[Path],
              expected: str) -> Outcome:
    w = out.witness
    out.verdict = kernel
    w.agreement = "diverges"
    w.detail = f"{_point(drop)}; {expected}"
    hop = (drop.hop if drop is not None and drop.hop else None) or _first_error_hop(paths)[0] or (
        paths[0].hops[-1].id if paths and paths[0].hops else None)
    out.findings.append(finding("LIVE_DIVERGES", hop, probe=probe_text, kernel=_point(drop),
                                simulated=w.simulated, detail=expected,
                                evidence={"kernel_drop": drop.model_dump() if drop else None,
                                          "kernel_verdict": kernel.value}))
    return out


def _kernel_finding(drop: LiveDrop) -> Finding:
    """The cause as the kernel names it, where the simulation had none."""
    code = drop.codes[0]
    where = drop.where or f"netns {drop.netns_inode} on {drop.node}"
    return finding(code, drop.hop, where=where, device=drop.device or "?", direction=drop.reason,
                   filter=f"kernel drop at {drop.location}", port=drop.device or "?", bridge="?", state=drop.reason,
                   program=f"at {drop.location}", hook=drop.reason,
                   evidence={"kernel_drop": drop.model_dump(), "source": "live kernel trace"})
