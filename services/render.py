"""Text rendering of a diagnosis, the way a senior engineer answers: the verdict first,
then the first failing hop and why, then the path(s), then what to do."""

from __future__ import annotations

from shared.schemas import Diagnosis, Finding, Hop, HopStatus, Path, Severity, StepAction

MARK = {HopStatus.OK: "  ", HopStatus.WARNING: "!~", HopStatus.ERROR: "!!", HopStatus.UNKNOWN: "??"}
SEVERITY_TAG = {Severity.ERROR: "ERROR", Severity.WARNING: "WARN ", Severity.INFO: "info "}


def _hop_line(hop: Hop) -> str:
    addr = f" {hop.address}" if hop.address else ""
    where = f" on {hop.node}" if hop.node and hop.kind.value != "node" else ""
    return f"{MARK[hop.status]} [{hop.kind.value}] {hop.name}{addr}{where}"


def _finding_lines(f: Finding) -> list[str]:
    where = f" @ {f.hop}" if f.hop else ""
    return [f"  {SEVERITY_TAG[f.severity]} {f.code}{where}: {f.message}", f"         fix: {f.suggestion}"]


def render_path(path: Path, verbose: bool = False) -> list[str]:
    cause = f" ({path.cause})" if path.cause else ""
    lines = [f"  path {path.id} [{path.direction}] → {path.final.value}{cause}"
             + (f": {path.description}" if path.description else "")]
    for hop in path.hops:
        lines.append("    " + _hop_line(hop))
        for step in hop.steps:
            if verbose or step.action in (StepAction.DROP, StepAction.ABORT, StepAction.REWRITE):
                pkt = ""
                if step.action == StepAction.REWRITE and step.packet_in and step.packet_out:
                    pkt = f"  [{step.packet_in} ⇒ {step.packet_out}]"
                lines.append(f"         {step.kind.value}: {step.action.value} {step.detail}{pkt}")
    return lines


def render_diagnosis(d: Diagnosis, verbose: bool = False) -> str:
    out = [f"diagnosis {d.id}: {d.request.describe()}"]
    if d.result is None:
        out.append(f"FAILED: {d.error}")
        return "\n".join(out)
    r = d.result
    out.append(f"verdict: {r.verdict.value} — {r.summary}")
    failure = r.first_failure  # the UI shows the same
    if failure:
        out.append(f"{failure.label}: {failure.hop_name} ({failure.hop_kind.value}) on path {failure.path}")
        if failure.because:
            out.append(f"  because: {failure.because}")
            out.append(f"  fix:     {failure.fix}")
    if r.paths:
        out.append("paths:")
        for path in r.paths:
            out.extend(render_path(path, verbose))
    if r.findings:
        out.append("findings:")
        for f in sorted(r.findings, key=lambda f: list(Severity).index(f.severity)):
            out.extend(_finding_lines(f))
    if r.assumptions:
        out.append("assumptions:")
        for a in r.assumptions:
            flag = " (could change the outcome)" if a.could_change_outcome else ""
            out.append(f"  - [{a.stage}] {a.text}{flag}")
    if r.paths:
        out.append(r.counts.text)  # the one counting rule, also the UI's
    return "\n".join(out)
