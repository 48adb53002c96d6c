"""Result assembly: paths → verdict, findings and assumptions gathered from every stage."""

from __future__ import annotations

from typing import Any

from services.simulator.cloudpath import apply_cloud
from services.simulator.dataplane.walk import WalkResult, walk
from services.simulator.modelpath import ModelSimulator
from services.simulator.ondemand import MAX_ROUNDS, OnDemand
from shared.bus import Bus
from shared.cloud import CloudInventory
from shared.codes import finding, is_abort
from shared.collect import collect_timeout_s
from shared.config import Settings
from shared.hops import node_hop
from shared.netstack import NodeDump, decode_dump
from shared.schemas import (
    Assumption,
    BlobRef,
    DiagnosisResult,
    FinalState,
    Finding,
    Path,
    Severity,
    StageEnvelope,
    Verdict,
)
from shared.topology import TopologyReport

STAGE = "simulator"


def overall_verdict(paths: list[Path], findings: list[Finding], assumptions: list[Assumption]) -> Verdict:
    """All deliver → REACHABLE, all drop → UNREACHABLE, mixed → AMBIGUOUS; anything unknown
    that could change the outcome (an ABORT path, an aborting finding, a stated assumption
    that matters) → UNDETERMINED rather than a confident answer."""
    finals = {p.final for p in paths if p.direction == "forward"}
    if not finals:  # no forward path at all (an empty set would pass every subset test below)
        return Verdict.UNDETERMINED
    if FinalState.ABORT in finals:
        return Verdict.UNDETERMINED
    delivered = finals <= {FinalState.DELIVER, FinalState.FORWARD}
    dropped = finals == {FinalState.DROP}
    uncertain = any(is_abort(f.code) for f in findings) or any(a.could_change_outcome for a in assumptions)
    if dropped:
        return Verdict.UNREACHABLE
    if delivered:
        return Verdict.UNDETERMINED if uncertain else Verdict.REACHABLE
    return Verdict.AMBIGUOUS


def summarize(verdict: Verdict, paths: list[Path], findings: list[Finding]) -> str:
    """One sentence an operator reads first: the deciding cause, not just the label."""
    forward = [p for p in paths if p.direction == "forward"]
    ok = sum(1 for p in forward if p.final in (FinalState.DELIVER, FinalState.FORWARD))
    causes = [f for p in forward if p.cause for f in findings if f.code == p.cause and
              (f.hop is None or f.hop in {h.id for h in p.hops})]
    errors = [f for f in findings if f.severity == Severity.ERROR]
    if verdict == Verdict.UNREACHABLE:
        first = causes[0] if causes else (errors[0] if errors else None)
        return first.message if first else "no path delivers"
    if verdict == Verdict.AMBIGUOUS:
        because = f"; {causes[0].message}" if causes else ""
        return f"{ok} of {len(forward)} paths deliver{because}"
    if verdict == Verdict.UNDETERMINED:
        # an aborted path's own cause (e.g. UNKNOWN_ADDRESS) says more than node data missing elsewhere
        aborted = [f for f in causes if any(p.final == FinalState.ABORT and p.cause == f.code for p in forward)]
        aborts = aborted or [f for f in findings if is_abort(f.code)]
        known = "every path delivers as far as the data goes, but " if ok == len(forward) else ""
        if aborts:
            return f"{known}not enough data to decide: {aborts[0].message}"
        return f"{known}not enough data to decide (see assumptions)"
    # an error on a delivering path that does not break it (a not-ready pod hit by its IP) is not "off the path"
    on_path = {h.id for p in forward for h in p.hops}
    here = [f for f in errors if f.hop in on_path]
    note = f"; but {here[0].message}" if here else ""
    if len(errors) > len(here):
        note += f" ({len(errors) - len(here)} problem(s) found off the path: see findings)"
    return f"every path delivers{note}"


async def diagnose(env: StageEnvelope, bus: Bus | None = None, settings: Settings | None = None) -> DiagnosisResult:
    findings = list(env.findings)
    assumptions = list(env.assumptions)
    paths: list[Path] = []
    if env.topology is None:
        assumptions.append(Assumption(stage=STAGE, text="no topology: the path was not simulated",
                                      could_change_outcome=True))
    else:
        report = TopologyReport.model_validate(env.topology)
        model = ModelSimulator(report, env.request).run()
        paths = model.paths
        findings = _merge(findings, model.findings)
        assumptions = _merge(assumptions, model.assumptions)
        dumps, load_findings = await _load_dumps(env, bus)
        findings = _merge(findings, load_findings)
        inventory = await _inventory(env, bus)
        if dumps:
            # the collected dataplane decides; the model is the expectation that names causes
            walked, findings, assumptions = await _walk(report, env, dumps, findings, assumptions, inventory,
                                                        _on_demand(env, report, bus, settings))
            paths = walked.paths
            findings = _reconcile(_merge(findings, walked.findings), paths)
            assumptions = _merge(assumptions, walked.assumptions)
        elif env.nodes:
            assumptions.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
                "node network state was collected but could not be read: the paths follow the Kubernetes "
                "model only")))
        paths, cloud_findings, cloud_assumptions = apply_cloud(paths, report, inventory, env.request)
        findings = _merge(findings, cloud_findings)
        assumptions = _merge(assumptions, cloud_assumptions)
    verdict = overall_verdict(paths, findings, assumptions)
    return DiagnosisResult(verdict=verdict, summary=summarize(verdict, paths, findings), paths=paths,
                           findings=findings, assumptions=assumptions)


async def _walk(report: TopologyReport, env: StageEnvelope, dumps: dict[str, NodeDump], findings: list[Finding],
                assumptions: list[Assumption], inventory: CloudInventory | None,
                ondemand: OnDemand) -> tuple[WalkResult, list[Finding], list[Assumption]]:
    """Walk; when the packet reaches nodes nobody collected, collect them on demand and walk again
    (the collection's failures become the expectation that names why a node stays unknown)."""
    for _ in range(MAX_ROUNDS):
        walked = walk(report, env.request, dumps, expected=findings, reply=env.request.options.check_reply,
                      cloud=inventory)
        wanted = [n for n in walked.wanted if n not in ondemand.asked]
        if not wanted or not ondemand.possible or ondemand.left_s() <= 0:
            return walked, findings, assumptions
        fetched = await ondemand.fetch(wanted)
        dumps = {**dumps, **fetched.dumps}
        findings = _merge(findings, fetched.findings)
        assumptions = _merge(assumptions, fetched.assumptions)
    return walk(report, env.request, dumps, expected=findings, reply=env.request.options.check_reply,
                cloud=inventory), findings, assumptions


def _on_demand(env: StageEnvelope, report: TopologyReport, bus: Bus | None, settings: Settings | None) -> OnDemand:
    default = settings.collect_timeout_s if settings else env.request.options.collect_timeout_s
    return OnDemand(env, report, bus, settings.snapshot if settings else None,
                    collect_timeout_s(env.request.options, default))


async def _load_dumps(env: StageEnvelope, bus: Bus | None) -> tuple[dict[str, NodeDump], list[Finding]]:
    dumps: dict[str, NodeDump] = {}
    problems: list[Finding] = []
    if bus is None:
        return dumps, problems
    for node, ref in env.nodes.items():
        try:
            dumps[node] = decode_dump(await bus.get_blob(ref))
        except Exception as exc:  # a broken blob is missing data, not a crash of the diagnosis
            problems.append(finding("DATA_MISSING", node_hop(node), what=f"network state of node {node}",
                                    reason=f"its dump could not be read: {type(exc).__name__}: {exc}"))
    return dumps, problems


def _reconcile(findings: list[Finding], paths: list[Path]) -> list[Finding]:
    """A NetworkPolicy the model says denies, on paths the dataplane delivers: the CNI does not
    enforce it here, which is worth a warning, not an error that contradicts the kernel. Only when
    every forward path got through: a path that stopped short (ABORT) proves nothing about enforcement."""
    forward = [p for p in paths if p.direction == "forward"]
    if not forward or any(p.final not in (FinalState.DELIVER, FinalState.FORWARD) for p in forward):
        return findings
    out = []
    for f in findings:
        if f.code == "NETWORK_POLICY_DENY" and f.severity == Severity.ERROR:
            f = f.model_copy(update={"severity": Severity.WARNING, "message": f.message + " (but the node's "
                                     "dataplane delivers the packet: the CNI does not enforce this policy)"})
        out.append(f)
    return out


async def _inventory(env: StageEnvelope, bus: Bus | None) -> CloudInventory | None:
    """The cloud stage's inventory: in the object store (BlobRef) or inline (unmodelled)."""
    if isinstance(env.cloud, BlobRef):
        return CloudInventory.model_validate_json(await bus.get_blob(env.cloud)) if bus else None
    return CloudInventory.model_validate(env.cloud) if env.cloud else None


def _merge(first: list[Any], more: list[Any]) -> list[Any]:
    out = list(first)
    out.extend(x for x in more if x not in out)
    return out
