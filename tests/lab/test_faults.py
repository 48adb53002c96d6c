"""Every fault in the catalogue, judged by the kernel: a real probe before and after injection."""

from __future__ import annotations

import pytest

from lab.faults import CATALOGUE, Fault
from tests.lab.conftest import MakeLab


@pytest.mark.parametrize("fault", CATALOGUE, ids=[f.name for f in CATALOGUE])
def test_fault_changes_kernel_outcome(fault: Fault, make_lab: MakeLab) -> None:
    lab = make_lab(fault.scenario_path)
    spec = fault.probe
    assert lab.source_address(spec.src) and lab.address(spec.dst)  # what a differential diagnosis would use
    before = lab.probe(spec.src, spec.dst, spec.port, spec.protocol)
    assert before.outcome == fault.before, f"healthy lab: {before}"
    fault.inject(lab)
    after = fault.observe(lab)
    assert after == fault.outcomes_after, f"after {fault.name}: {after}"


def test_catalogue_is_complete_and_consistent() -> None:
    from shared.codes import CATALOGUE as CODES

    names = [f.name for f in CATALOGUE]
    assert len(names) == len(set(names))
    for fault in CATALOGUE:
        assert fault.scenario_path.exists(), fault.name
        assert fault.commands or fault.not_ready or fault.add_policy or fault.felix, fault.name
        assert fault.ends is None or fault.ends in CODES, fault.name
        if fault.finding is None:  # a decoy: a correct NAT the kernel accepts, nothing to name
            assert fault.after == "connected" and fault.verdict_after == "REACHABLE", fault.name
            continue
        assert fault.finding.code in CODES, fault.name
        assert all(code in CODES for code in fault.finding.also), fault.name
        assert fault.finding.hop.split(":")[0] in {"node", "pod", "service"}
