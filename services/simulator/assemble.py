"""Result assembly: paths → verdict, findings and assumptions gathered from every stage."""

from __future__ import annotations

import zlib
from typing import Any

from services.simulator.cloudpath import apply_cloud
from services.simulator.dataplane.walk import NodeView, WalkResult, walk
from services.simulator.live import witness as confirm
from services.simulator.modelpath import ModelSimulator
from services.simulator.ondemand import MAX_ROUNDS, OnDemand
from shared.blobcache import Decoded
from shared.bus import BlobUnreadable, Bus
from shared.cloud import CloudInventory
from shared.codes import finding, is_abort
from shared.collect import collect_timeout_s
from shared.config import Settings
from shared.hops import node_hop
from shared.netstack import NodeDump, decode_dump
from shared.offload import Offload
from shared.schemas import (
    Assumption,
    BlobRef,
    DiagnosisResult,
    FinalState,
    Finding,
    HopKind,
    IPAddress,
    Path,
    Severity,
    StageEnvelope,
    Verdict,
)
from shared.topology import NODE_ADDRESSES, EndpointKind, TopologyReport, private_use

STAGE = "simulator"
MODEL_RUNS, WALKS = Offload(), Offload()  # process-wide: how long these calls take is what decides


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


def summarize(verdict: Verdict, paths: list[Path], findings: list[Finding],
              assumptions: list[Assumption] | None = None, *, cloud_checked: bool = False) -> str:
    """One sentence an operator reads first: the deciding cause, not just the label; for a path that
    leaves the cluster, what was checked and what was not."""
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
        left = next((p for p in forward if p.final == FinalState.FORWARD), None)
        known = "" if ok < len(forward) else f"the packet {_exit_place(left)}, but " if left else \
            "every path delivers as far as the data goes, but "
        if aborts:
            return f"{known}not enough data to decide: {aborts[0].message}"
        deciding = next((a for a in assumptions or [] if a.could_change_outcome), None)
        return f"{known}not enough data to decide: {deciding.text}" if deciding else \
            f"{known}not enough data to decide (see assumptions)"
    # an error on a delivering path that does not break it (a not-ready pod hit by its IP) is not "off the path"
    on_path = {h.id for p in forward for h in p.hops}
    here = [f for f in errors if f.hop in on_path]
    note = f"; but {here[0].message}" if here else ""
    if len(errors) > len(here):
        note += f" ({len(errors) - len(here)} problem(s) found off the path: see findings)"
    exits = [p for p in forward if p.final == FinalState.FORWARD]
    if not exits:
        return f"every path delivers{note}"
    delivered = len(forward) - len(exits)
    head = f"{delivered} path(s) deliver; {len(exits)} " if delivered else "the packet "
    return head + _exit_note(exits[0], cloud_checked) + note


def _exit_place(path: Path) -> str:
    node = next((h.name for h in reversed(path.hops) if h.kind == HopKind.NODE), None)
    dst = next((st.packet_in.dst for h in reversed(path.hops) for st in reversed(h.steps) if st.packet_in), None)
    return f"leaves the cluster{f' at {node}' if node else ''} towards {dst or 'its destination'}"


def _exit_note(path: Path, cloud_checked: bool) -> str:
    """Where a path leaves the modelled world, what was checked up to there and what lies beyond."""
    node = next((h.name for h in reversed(path.hops) if h.kind == HopKind.NODE), None)
    checked = f"checked up to {node}'s uplink" if node else "checked inside the cluster"
    if cloud_checked:
        checked += " and through the cloud (security groups, VPC routes, NAT)"
    beyond = ("the cloud (not modelled), " if not cloud_checked else "") + "the networks beyond and whether the " \
        "destination answers"
    return f"{_exit_place(path)}: {checked}; not checked: {beyond}"


def unowned_destination(report: TopologyReport, paths: list[Path],
                        inventory: CloudInventory | None) -> Assumption | None:
    """A private destination nothing we know owns (no pod, node, Service or cloud address), reached by
    leaving the cluster: whatever is there was not checked, so the answer cannot be a confident REACHABLE."""
    dst = report.dst
    if dst.kind != EndpointKind.UNKNOWN or not private_use(dst.address) or report.service is not None or not any(
            p.direction == "forward" and p.final == FinalState.FORWARD for p in paths):
        return None
    modelled = inventory is not None and inventory.modelled
    if modelled and inventory is not None and str(dst.address) in {
            ip for owners in (inventory.instances, inventory.network_interfaces)
            for o in owners for ip in o.private_ips}:
        return None  # a cloud instance of the VPC: the cloud layer checked the way there
    owners = "pod, node, Service or cloud resource" if modelled else "pod, node or Service"
    return Assumption(stage=STAGE, could_change_outcome=True, text=(
        f"{dst.address} is a private address no {owners} known here has: what is there "
        " (a VM, an on-premises host, nothing) and whether it answers was not checked"))


async def diagnose(env: StageEnvelope, bus: Bus | None = None, blobs: Blobs | None = None,
                   settings: Settings | None = None) -> DiagnosisResult:
    """The result of one envelope; `blobs` (the stage's) reuses what earlier diagnoses decoded;
    `settings` say where to collect on demand (the snapshot, or the agents' deadline)."""
    blobs = blobs or Blobs()
    findings = list(env.findings)
    assumptions = list(env.assumptions)
    paths: list[Path] = []
    report: TopologyReport | None = None
    dumps: dict[str, NodeDump] = {}
    cloud_checked = False
    if env.topology is None:
        assumptions.append(Assumption(stage=STAGE, text="no topology: the path was not simulated",
                                      could_change_outcome=True))
    else:
        report, unnamed = await _with_node_addresses(env.topology, env, bus, blobs)
        assumptions += unnamed
        # the CPU-bound parts run in a thread once they are slow, so the event loop keeps sending the stage's
        # in-progress heartbeats (a short ack_wait then redelivers only what a dead replica held)
        model = await MODEL_RUNS(ModelSimulator(report, env.request).run)
        paths = model.paths
        findings = _merge(findings, model.findings)
        assumptions = _merge(assumptions, model.assumptions)
        views, load_findings = await _load_dumps(env, bus, blobs)
        findings = _merge(findings, load_findings)
        inventory, missing = await _inventory(env, bus, blobs)
        findings = _merge(findings, missing)
        if views:
            # the collected dataplane decides; the model is the expectation that names causes
            walked, views, findings, assumptions = await _walk(report, env, views, findings, assumptions, inventory,
                                                               _on_demand(env, report, bus, blobs, settings))
            dumps = {n: v.dump for n, v in views.items()}
            paths = walked.paths
            findings = _reconcile(_refined(_merge(findings, walked.findings)), paths)
            assumptions = _merge(assumptions, walked.assumptions)
        elif env.nodes:
            assumptions.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
                "node network state was collected but could not be read: the paths follow the Kubernetes "
                "model only")))
        cloud_checked = inventory is not None and inventory.modelled
        paths, cloud_findings, cloud_assumptions = apply_cloud(paths, report, inventory, env.request)
        findings = _merge(findings, cloud_findings)
        assumptions = _merge(assumptions, cloud_assumptions)
        unowned = unowned_destination(report, paths, inventory)
        if unowned is not None:
            assumptions.append(unowned)
    verdict = overall_verdict(paths, findings, assumptions)
    summary = summarize(verdict, paths, findings, assumptions, cloud_checked=cloud_checked)
    witness = None
    if env.request.options.live:
        if bus is None or report is None:
            assumptions.append(Assumption(stage=STAGE, text="live confirmation was asked for but not possible: no "
                                          "bus or no topology", could_change_outcome=False))
        else:
            live = await confirm(bus, env.request, report, dumps, verdict, paths, findings, env.id)
            witness = live.witness
            findings = _merge(findings, live.findings)
            assumptions = _merge(assumptions, live.assumptions)
            if live.verdict != verdict:  # the kernel is what happened
                verdict = live.verdict
                summary = f"the kernel says {verdict.value}: {witness.detail}"
    return DiagnosisResult(verdict=verdict, summary=summary, paths=paths, findings=findings,
                           assumptions=assumptions, live=witness)


class Blobs:
    """What a simulator decodes from the object store, once per content digest: the requests of a
    batch (one snapshot, one collection window) carry the same dumps and inventory, and decoding a
    dump and parsing its rulesets costs more than walking it. A cached dump is never mutated: its
    NodeView (parsed rulesets, routers) is reused too. One per SimulatorStage."""

    def __init__(self) -> None:
        self.nodes: Decoded[NodeView] = Decoded(lambda data: NodeView.build(decode_dump(data)))
        self.inventories: Decoded[CloudInventory] = Decoded(CloudInventory.model_validate_json, size=8)
        # a big cluster's node address map (the topology stage's StageEnvelope.node_addresses)
        self.node_addresses: Decoded[dict[str, list[IPAddress]]] = Decoded(NODE_ADDRESSES.validate_json, size=4)


async def _with_node_addresses(report: TopologyReport, env: StageEnvelope,
                               bus: Bus | None, blobs: Blobs) -> tuple[TopologyReport, list[Assumption]]:
    """The report with every node's addresses back in place when the topology stage sent them through the object
    store (a big cluster's); unreadable, the walk still runs but cannot name nodes off the expected path."""
    if env.node_addresses is None or bus is None:
        return report, []
    try:
        addresses = await blobs.node_addresses.get(bus, env.node_addresses)
    except (BlobUnreadable, ValueError) as exc:
        return report, [Assumption(stage=STAGE, could_change_outcome=True, text=(
            f"the cluster's node addresses could not be read ({type(exc).__name__}: {exc}): a next hop on a node "
            "off the expected path is not recognised as a node"))]
    return report.model_copy(update={"cluster": report.cluster.model_copy(update={"node_addresses": addresses})}), []


async def _walk(report: TopologyReport, env: StageEnvelope, views: dict[str, NodeView], findings: list[Finding],
                assumptions: list[Assumption], inventory: CloudInventory | None, ondemand: OnDemand,
                ) -> tuple[WalkResult, dict[str, NodeView], list[Finding], list[Assumption]]:
    """Walk (in a thread once walks are slow: the event loop keeps the stage's heartbeats going); when
    the packet reaches nodes nobody collected, collect them on demand and walk again (the collection's
    failures become the expectation that names why a node stays unknown)."""
    for round_ in range(MAX_ROUNDS + 1):
        walked = await WALKS(walk, report, env.request, {n: v.dump for n, v in views.items()},
                             expected=findings, reply=env.request.options.check_reply, views=views, cloud=inventory)
        wanted = [n for n in walked.wanted if n not in ondemand.asked]
        if round_ == MAX_ROUNDS or not wanted or not ondemand.possible or ondemand.left_s() <= 0:
            break
        fetched = await ondemand.fetch(wanted)
        views = {**views, **fetched.views}
        findings = _merge(findings, fetched.findings)
        assumptions = _merge(assumptions, fetched.assumptions)
    return walked, views, findings, assumptions


def _on_demand(env: StageEnvelope, report: TopologyReport, bus: Bus | None, blobs: Blobs,
               settings: Settings | None) -> OnDemand:
    default = settings.collect_timeout_s if settings else env.request.options.collect_timeout_s

    async def load(ref: BlobRef) -> NodeView:  # only asked for with a bus: an agent answered on it
        assert bus is not None
        return await blobs.nodes.get(bus, ref)

    return OnDemand(env, report, bus, settings.snapshot if settings else None,
                    collect_timeout_s(env.request.options, default), load=load)


async def _load_dumps(env: StageEnvelope, bus: Bus | None, blobs: Blobs) -> tuple[dict[str, NodeView], list[Finding]]:
    views: dict[str, NodeView] = {}
    problems: list[Finding] = []
    if bus is None:
        return views, problems
    for node, ref in env.nodes.items():
        # only data that is absent or broken is missing data; the bus not answering (a timeout, a
        # disconnection) is raised, and the stage runner retries the diagnosis with back-off
        try:
            views[node] = await blobs.nodes.get(bus, ref)
        except (BlobUnreadable, ValueError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, TimeoutError):  # an OSError too, but the bus's, not the data's
                raise
            problems.append(finding("DATA_MISSING", node_hop(node), what=f"network state of node {node}",
                                    reason=f"its dump could not be read: {type(exc).__name__}: {exc}"))
    return views, problems


def _refined(findings: list[Finding]) -> list[Finding]:
    """A finding the walk restated where it found it (evidence `refines`: the hop the model put it on)
    replaces the model's: one UNKNOWN_ADDRESS, at the node whose pod network has the free address."""
    replaced = {(f.code, f.evidence["refines"]) for f in findings if f.evidence.get("refines")}
    return [f for f in findings if (f.code, f.hop) not in replaced]


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


async def _inventory(env: StageEnvelope, bus: Bus | None,
                     blobs: Blobs) -> tuple[CloudInventory | None, list[Finding]]:
    """The cloud stage's inventory: in the object store (BlobRef) or inline (unmodelled). Absent or
    broken is missing data; the bus not answering is raised (retried), as for the dumps."""
    if isinstance(env.cloud, BlobRef):
        if bus is None:
            return None, []
        try:
            return await blobs.inventories.get(bus, env.cloud), []
        except ValueError as exc:  # BlobUnreadable, or not an inventory (pydantic's ValidationError)
            return None, [finding("DATA_MISSING", None, what="the cloud inventory",
                                  reason=f"it could not be read: {type(exc).__name__}: {exc}")]
    return (CloudInventory.model_validate(env.cloud) if env.cloud else None), []


def _merge(first: list[Any], more: list[Any]) -> list[Any]:
    out = list(first)
    out.extend(x for x in more if x not in out)
    return out
