"""The typed step contract: its JSON shape is pinned, every kind has a detail, and results stored
before step details were typed (an `evidence` dict) still load without losing a key."""

from __future__ import annotations

import json
import os
import typing
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.render import render_diagnosis
from shared import steps
from shared.schemas import Diagnosis, Step, StepAction, StepKind
from shared.steps import NatEndpoint, NatInfo, NetfilterInfo, RouteInfo, RuleHit, StepInfo, TunnelInfo

HERE = Path(__file__).parent
SNAPSHOT = HERE / "step-schema.json"
UNTYPED = HERE / "fixtures" / "diagnoses-untyped-steps.json"  # golden results as stored before typed steps
GOLDEN = HERE.parent / "e2e" / "golden"


def test_json_schema_is_pinned() -> None:
    """A change of the step contract is a visible diff of this file (docs/steps.md: how to add a field)."""
    actual = json.dumps(Step.model_json_schema(mode="serialization"), indent=1, sort_keys=True) + "\n"
    if os.environ.get("NETDIAG_UPDATE_GOLDEN") == "1":
        SNAPSHOT.write_text(actual)
    assert actual == SNAPSHOT.read_text(), "the step schema changed: NETDIAG_UPDATE_GOLDEN=1 rewrites " \
                                           f"{SNAPSHOT.name}; say why in the commit and in docs/steps.md"


def test_every_kind_has_one_detail_model() -> None:
    members = typing.get_args(typing.get_args(StepInfo)[0])
    kinds = [k for model in members for k in typing.get_args(model.model_fields["kind"].annotation)]
    assert sorted(kinds) == sorted(StepKind) and len(kinds) == len(set(kinds))


def test_step_builds_its_kinds_detail() -> None:
    step = Step.of(StepKind.NAT, StepAction.REWRITE, "DNAT 10.96.0.10:80 → 10.244.1.5:8080", type="DNAT",
                   original=NatEndpoint(address=IPv4Address("10.96.0.10"), port=80),
                   translated={"address": "10.244.1.5", "port": 8080}, rule=None)
    assert isinstance(step.info, NatInfo) and str(step.info.translated) == "10.244.1.5:8080"
    assert Step.model_validate_json(step.model_dump_json()) == step
    bare = Step.model_validate({"kind": StepKind.DECAP, "action": StepAction.REWRITE, "detail": "decapsulated"})
    assert isinstance(bare.info, TunnelInfo) and bare.info.kind == StepKind.DECAP
    # a field that does not apply is absent, not null
    assert step.model_dump(mode="json")["info"] == {
        "kind": "nat", "original": {"address": "10.96.0.10", "port": 80},
        "translated": {"address": "10.244.1.5", "port": 8080}, "reverse": False, "snat_entries": [], "type": "DNAT"}


def test_mistakes_are_errors() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Step.of(StepKind.ROUTE, StepAction.FORWARD, "x", gatway="10.0.0.1")  # a typo is not silently dropped
    with pytest.raises(ValidationError, match="detail but the step is"):
        Step(kind=StepKind.ROUTE, action=StepAction.FORWARD, detail="x", info={"kind": "nat"})
    with pytest.raises(ValidationError):
        Step.of(StepKind.NETFILTER, StepAction.ALLOW, "x", hook="PREROUTNG")
    with pytest.raises(ValidationError):
        Step.of(StepKind.ROUTE, StepAction.FORWARD, "x", gateway="not an address")
    with pytest.raises(TypeError, match="legacy_evidence"):  # new steps are typed, never the catch-all
        Step.of(StepKind.ROUTE, StepAction.FORWARD, "x", legacy_evidence={"gateway": "10.0.0.1"})


def _old_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for d in doc.values() for p in d["result"]["paths"] for h in p["hops"] for s in h["steps"]]


def test_results_with_untyped_evidence_still_load() -> None:
    doc = json.loads(UNTYPED.read_text())
    old = _old_steps(doc)
    assert any(s["evidence"] for s in old) and all("info" not in s for s in old)
    new: list[Step] = []
    for name, stored in doc.items():
        d = Diagnosis.model_validate({**stored, "id": "0" * 32, "created_at": "2026-12-01T00:00:00Z"})
        assert d.result is not None, name
        new += [s for p in d.result.paths for h in p.hops for s in h.steps]
    assert len(new) == len(old)
    for before, after in zip(old, new, strict=True):
        assert after.info.kind == after.kind == before["kind"] and after.detail == before["detail"]
        kept = after.info.model_dump(mode="json", exclude={"kind", "legacy_evidence"})
        legacy = after.info.legacy_evidence or {}
        for key, value in before["evidence"].items():  # every old key became a typed field or stayed in the catch-all
            nested = key == "evidence" and isinstance(after.info, RouteInfo)  # the walk once nested the route
            assert key in kept or key in legacy or nested or value is None, key
    route = next(s.info for s in new if isinstance(s.info, RouteInfo) and s.info.gateway)
    assert route.table == 254 and route.type == "unicast" and route.legacy_evidence is None
    netfilter = next(s for s in new if s.kind == StepKind.NETFILTER)
    assert isinstance(netfilter.info.rules[0], RuleHit) and netfilter.info.hook == "PREROUTING"  # type: ignore[union-attr]
    # and the loaded result writes the typed shape
    again = Step.model_validate_json(new[0].model_dump_json())
    assert again == new[0] and "evidence" not in json.loads(new[0].model_dump_json())


@pytest.mark.parametrize("name", ["basic", "policy", "shop"])
def test_fresh_results_are_fully_typed(name: str) -> None:
    """The simulator's own results never need the legacy catch-all."""
    text = (GOLDEN / f"{name}.json").read_text()
    assert "legacy_evidence" not in text
    steps = _old_steps(json.loads(text))
    assert steps and all("evidence" not in s and s["info"]["kind"] == s["kind"] for s in steps)


def test_text_render_reads_the_typed_detail() -> None:
    """The CLI's text names the rule that decided a drop and the finding it raised (from `info`)."""
    stored = json.loads((GOLDEN / "shop.json").read_text())["policy_deny"]
    d = Diagnosis.model_validate({**stored, "id": "0" * 32, "created_at": "2026-12-01T00:00:00Z"})
    drop = next(s for p in d.result.paths for h in p.hops for s in h.steps  # type: ignore[union-attr]
                if s.kind == StepKind.NETFILTER and s.action == StepAction.DROP)
    assert isinstance(drop.info, NetfilterInfo) and drop.info.decided_by is not None
    hit, text = drop.info.decided_by, render_diagnosis(d)
    assert f"decided by {hit.table}/{hit.chain} #{hit.position}: {hit.rule}" in text
    assert "→ NETWORK_POLICY_DENY" in text and "matched " not in text
    assert "matched filter/FORWARD #1" in render_diagnosis(d, verbose=True)


def test_every_field_is_documented() -> None:
    """The OpenAPI document and docs/steps.md say what each field means (the kind is its own answer)."""
    models = [m for m in vars(steps).values() if isinstance(m, type) and issubclass(m, BaseModel)
              and m.__module__ == steps.__name__ and not m.__name__.startswith("_")]
    undocumented = [f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items()
                    if not field.description and name != "kind"]
    assert len(models) > 16 and undocumented == []


def test_docs_list_every_kind_and_field() -> None:
    doc = (HERE.parent.parent / "docs" / "steps.md").read_text()
    models = [m for m in vars(steps).values() if isinstance(m, type) and issubclass(m, BaseModel)
              and m.__module__ == steps.__name__ and not m.__name__.startswith("_")]
    for model in models:
        assert f"`{model.__name__}`" in doc, model.__name__
        section = doc.split(f"`{model.__name__}`", 1)[1].split("\n### ", 1)[0]
        common = ("kind", "finding", "legacy_evidence")  # listed once, for every kind
        missing = [f for f in model.model_fields if f not in common and f"| `{f}` |" not in section]
        assert not missing, (model.__name__, missing)
    assert all(f"`{k.value}`" in doc for k in StepKind) and "| `finding` |" in doc and "| `legacy_evidence` |" in doc
