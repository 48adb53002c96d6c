"""The fault catalogue is consistent data. Each fault is judged by the kernel (a real probe before and after
injection) in tests/lab/test_differential.py, next to the diagnosis of the same lab."""

from __future__ import annotations

from lab.faults import CATALOGUE


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
