"""Text rendering of a diagnosis, the way a senior engineer answers: the verdict first,
then the first failing hop and why, then the path(s), then what to do."""

from __future__ import annotations

from shared.live import LiveWitness
from shared.schemas import Diagnosis, FinalState, Finding, Hop, HopStatus, Path, Severity, StepAction

MARK = {HopStatus.OK: "  ", HopStatus.WARNING: "!~", HopStatus.ERROR: "!!", HopStatus.UNKNOWN: "??"}
SEVERITY_TAG = {Severity.ERROR: "ERROR", Severity.WARNING: "WARN ", Severity.INFO: "info "}


def _hop_line(hop: Hop) -> str:
    addr = f" {hop.address}" if hop.address else ""
    where = f" on {hop.node}" if hop.node and hop.kind.value != "node" else ""
    return f"{MARK[hop.status]} [{hop.kind.value}] {hop.name}{addr}{where}"


def _first_failure(paths: list[Path]) -> tuple[str, Path, Hop] | None:
    for path in paths:
        for hop in path.hops:
            if hop.status == HopStatus.ERROR:
                return "first failing hop", path, hop
    # nothing failed, but a path could not be followed (e.g. an unknown address): say where it stopped
    for path in paths:
        for hop in path.hops:
            if path.final == FinalState.ABORT and hop.status == HopStatus.UNKNOWN:
                return "could not follow past", path, hop
    return None


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
    failure = _first_failure(r.paths)
    if failure:
        label, path, hop = failure
        out.append(f"{label}: {hop.name} ({hop.kind.value}) on path {path.id}")
        for f in r.findings:
            if f.hop == hop.id and (f.severity == Severity.ERROR or f.code == path.cause):
                out.append(f"  because: {f.message}")
                out.append(f"  fix:     {f.suggestion}")
                break
    if r.paths:
        out.append("paths:")
        for path in r.paths:
            out.extend(render_path(path, verbose))
    if r.findings:
        out.append("findings:")
        for f in sorted(r.findings, key=lambda f: list(Severity).index(f.severity)):
            out.extend(_finding_lines(f))
    if r.live is not None:
        out.extend(render_live(r.live))
    if r.assumptions:
        out.append("assumptions:")
        for a in r.assumptions:
            flag = " (could change the outcome)" if a.could_change_outcome else ""
            out.append(f"  - [{a.stage}] {a.text}{flag}")
    delivered = sum(1 for p in r.paths if p.final == FinalState.DELIVER)
    if r.paths:
        out.append(f"{delivered}/{len(r.paths)} path(s) deliver")
    return "\n".join(out)


def render_live(w: LiveWitness) -> list[str]:
    """The kernel's witness beside the simulation."""
    out = [f"live witness: {w.agreement} — simulated {w.simulated}, kernel {w.kernel or 'not probed'}"]
    if w.probe is not None and w.probe.outcome:
        out.append(f"  probe from {w.probe.src}:{w.probe.sport} on {w.probe.node}: {w.probe.outcome} "
                   f"({w.probe.detail}, {w.probe.elapsed_ms:.0f} ms)")
    start = w.probe.started_at if w.probe is not None else None
    for d in w.drops:
        codes = f" → {', '.join(d.codes)}" if d.codes else ""
        at = f"+{(d.time - start) * 1000:.0f} ms " if start else ""
        dev = f" dev {d.device}" if d.device else ""
        out.append(f"  kernel drop {at}: {d.reason} at {d.location}{dev} in {d.where or d.netns_inode} on {d.node} "
                   f"({d.protocol} {d.src}:{d.sport} → {d.dst}:{d.dport}){codes}")
    if w.detail:
        out.append(f"  {w.detail}")
    out.extend(f"  note: {n}" for n in w.notes)
    return out
