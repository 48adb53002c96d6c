"""Text rendering of a diagnosis, the way a senior engineer answers: the verdict first,
then the first failing hop and why, then the path(s), then what to do.

Each explanation is printed once: a finding whose message is already the verdict's summary (a
policy explanation runs to hundreds of characters) is not repeated under "because" or in the
findings list, which then refers to it."""

from __future__ import annotations

from shared.live import LiveWitness
from shared.schemas import Diagnosis, Finding, Hop, HopStatus, Path, Severity, Step, StepAction
from shared.steps import NatInfo, NetfilterInfo, PolicyInfo, RouteInfo, RuleHit, SecurityGroupInfo, ServiceInfo

MARK = {HopStatus.OK: "  ", HopStatus.WARNING: "!~", HopStatus.ERROR: "!!", HopStatus.UNKNOWN: "??"}
SEVERITY_TAG = {Severity.ERROR: "ERROR", Severity.WARNING: "WARN ", Severity.INFO: "info "}


def _hop_line(hop: Hop) -> str:
    addr = f" {hop.address}" if hop.address else ""
    where = f" on {hop.node}" if hop.node and hop.kind.value != "node" else ""
    return f"{MARK[hop.status]} [{hop.kind.value}] {hop.name}{addr}{where}"


def _finding_lines(f: Finding, explained: bool, fixed: bool) -> list[str]:
    where = f" @ {f.hop}" if f.hop else ""
    text = "(explained above)" if explained else f.message
    lines = [f"  {SEVERITY_TAG[f.severity]} {f.code}{where}: {text}"]
    return lines if fixed else [*lines, f"         fix: {f.suggestion}"]


def _once(detail: str, said: str) -> str:
    """A step detail whose explanation the summary already gave: its head only."""
    head, sep, rest = detail.partition(": ")
    return f"{head}: (explained above)" if sep and len(rest) > 40 and rest in said else detail


def _rule(hit: RuleHit) -> str:
    return f"{hit.table}/{hit.chain} #{hit.position}: {hit.rule}"


def _facts(step: Step, verbose: bool) -> list[str]:
    """What the step's typed detail adds to its sentence: the rule that decided, the finding it raised;
    with `verbose`, every rule matched and the routing table."""
    info, out = step.info, []
    if isinstance(info, NetfilterInfo):
        if info.decided_by is not None:
            out.append(f"decided by {_rule(info.decided_by)}")
        if verbose:
            out += [f"matched {_rule(hit)}" for hit in info.rules if hit != info.decided_by]
    elif isinstance(info, NatInfo) and info.rule is not None and verbose:
        out.append(f"by {_rule(info.rule)}")
    elif isinstance(info, PolicyInfo):
        if info.enforced_by is not None and info.enforced_by.rule not in step.detail:
            out.append(f"enforced by {_rule(info.enforced_by)}")
        if info.allowed_by is not None and verbose:
            out.append(f"allowed by {info.allowed_by.policy} rule {info.allowed_by.rule}")
    elif isinstance(info, SecurityGroupInfo) and info.rule is not None:
        rule = info.rule
        out.append(f"rule {rule.id or '(no id)'} of {info.group}: {rule.policy} priority {rule.priority} "
                   f"{rule.protocol} {rule.port_range}")
    elif isinstance(info, ServiceInfo) and verbose:
        out += [f"kube-proxy {r}" for r in info.rules]
    elif isinstance(info, RouteInfo) and verbose and info.table is not None:
        out.append(f"table {info.table}; rules walked: {', '.join(info.rules) or 'none'}")
    if info.finding and step.action in (StepAction.DROP, StepAction.ABORT):
        out.append(f"→ {info.finding}")
    return out


def render_path(path: Path, verbose: bool = False, said: str = "") -> list[str]:
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
                lines.append(f"         {step.kind.value}: {step.action.value} {_once(step.detail, said)}{pkt}")
                lines.extend(f"             {fact}" for fact in _facts(step, verbose))
    return lines


def render_diagnosis(d: Diagnosis, verbose: bool = False) -> str:
    out = [f"diagnosis {d.id}: {d.request.describe()}"]
    if d.result is None:
        out.append(f"FAILED: {d.error}")
        return "\n".join(out)
    r = d.result
    out.append(f"verdict: {r.verdict.value} — {r.summary}")
    fixed: Finding | None = None
    failure = r.first_failure  # the UI shows the same
    if failure:
        out.append(f"{failure.label}: {failure.hop_name} ({failure.hop_kind.value}) on path {failure.path}")
        fixed = next((f for f in r.findings if f.hop == failure.hop and f.code == failure.code), None)
        if failure.because:
            if failure.because not in r.summary:
                out.append(f"  because: {failure.because}")
            out.append(f"  fix:     {failure.fix}")
    if r.paths:
        out.append("paths:")
        for path in r.paths:
            out.extend(render_path(path, verbose, said=r.summary))
    if r.findings:
        out.append("findings:")
        for f in sorted(r.findings, key=lambda f: list(Severity).index(f.severity)):
            out.extend(_finding_lines(f, explained=f is fixed or f.message in r.summary, fixed=f is fixed))
    if r.live is not None:
        out.extend(render_live(r.live))
    if r.assumptions:
        out.append("assumptions:")
        for a in r.assumptions:
            flag = " (could change the outcome)" if a.could_change_outcome else ""
            out.append(f"  - [{a.stage}] {a.text}{flag}")
    if r.paths:
        out.append(r.counts.text)  # the one counting rule, also the UI's
    return "\n".join(out)


def render_live(w: LiveWitness) -> list[str]:
    """The kernel's witness beside the simulation."""
    out = [f"live witness: {w.agreement} — simulated {w.simulated}, kernel {w.kernel or 'not probed'}"]
    if w.probe is not None and w.probe.outcome:
        out.append(f"  probe from {w.probe.src}:{w.probe.sport} on {w.probe.node}: {w.probe.outcome} "
                   f"({w.probe.detail}, {w.probe.elapsed_ms:.0f} ms)")
    start = w.probe.started_at if w.probe is not None else None
    for d in w.drops:
        codes = f" → {', '.join(d.codes[:3])}{' …' if len(d.codes) > 3 else ''}" if d.codes else ""
        at = f" +{(d.time - start) * 1000:.0f} ms" if start else ""
        dev = f" dev {d.device}" if d.device else ""
        out.append(f"  kernel drop{at}: {d.reason} at {d.location}{dev} in {d.where or d.netns_inode} on {d.node} "
                   f"({d.protocol} {d.src}:{d.sport} → {d.dst}:{d.dport}){codes}")
    if w.detail:
        out.append(f"  {w.detail}")
    out.extend(f"  note: {n}" for n in w.notes)
    return out
