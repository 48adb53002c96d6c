"""Result assembly: paths → verdict, findings and assumptions gathered from every stage."""

from __future__ import annotations

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


def summarize(verdict: Verdict, env: StageEnvelope, findings: list[Finding]) -> str:
    head = f"{env.request.describe()}: {verdict.value}"
    errors = [f for f in findings if f.severity == Severity.ERROR]
    if errors:
        return f"{head} — {errors[0].message}"
    if verdict == Verdict.UNDETERMINED:
        return f"{head} — not enough data to decide (see assumptions)"
    return head


async def diagnose(env: StageEnvelope, bus: Bus | None = None) -> DiagnosisResult:
    findings = list(env.findings)
    assumptions = list(env.assumptions)
    paths: list[Path] = []
    if env.topology is None:
        assumptions.append(Assumption(stage="simulator", text="no topology: the path was not simulated",
                                      could_change_outcome=True))
    verdict = overall_verdict(paths, findings, assumptions)
    return DiagnosisResult(verdict=verdict, summary=summarize(verdict, env, findings), paths=paths,
                           findings=findings, assumptions=assumptions)
