"""Result assembly: paths → verdict, findings and assumptions gathered from every stage."""

from __future__ import annotations

from typing import Any

from services.simulator.modelpath import ModelSimulator
from shared.bus import Bus
from shared.codes import is_abort
from shared.schemas import (
    Assumption,
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
    if not paths:
        return Verdict.UNDETERMINED
    finals = {p.final for p in paths if p.direction == "forward"}
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
        aborts = [f for f in findings if is_abort(f.code)]
        if aborts:
            return f"not enough data to decide: {aborts[0].message}"
        return "not enough data to decide (see assumptions)"
    note = f" ({len(errors)} problem(s) found off the path: see findings)" if errors else ""
    return f"every path delivers{note}"


async def diagnose(env: StageEnvelope, bus: Bus | None = None) -> DiagnosisResult:
    findings = list(env.findings)
    assumptions = list(env.assumptions)
    paths: list[Path] = []
    if env.topology is None:
        assumptions.append(Assumption(stage=STAGE, text="no topology: the path was not simulated",
                                      could_change_outcome=True))
    else:
        report = TopologyReport.model_validate(env.topology)
        if env.nodes:
            assumptions.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
                "node network state was collected but not yet simulated hop by hop: the paths follow the "
                "Kubernetes model only")))
        model = ModelSimulator(report, env.request).run()
        paths = model.paths
        findings = _merge(findings, model.findings)
        assumptions = _merge(assumptions, model.assumptions)
    verdict = overall_verdict(paths, findings, assumptions)
    return DiagnosisResult(verdict=verdict, summary=summarize(verdict, paths, findings), paths=paths,
                           findings=findings, assumptions=assumptions)


def _merge(first: list[Any], more: list[Any]) -> list[Any]:
    out = list(first)
    out.extend(x for x in more if x not in out)
    return out
