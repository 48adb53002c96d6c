"""The finding-code catalogue: complete, renderable, and meaning what the design says."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest

from shared import codes
from shared.codes import CATALOGUE, SEED_CODES, finding, is_abort
from shared.schemas import Severity

# The design's seed catalogue (../shared/DESIGN.md, "Finding codes"): the phrases that carry
# each code's documented meaning, which the rendered message must contain.
SEED_MEANINGS = {
    "POD_NOT_READY": ["pod", "not ready"],
    "NETWORK_POLICY_DENY": ["network policy", "deny the packet from"],
    "NO_LISTENER": ["no process listening on"],
    "NO_ROUTE": ["no route to host"],
    "INVALID_ROUTE": ["route", "does not point to the expected next hop"],
    "SG_NOT_SHARED": ["do not have same security group"],
    "SG_DENY": ["security group", "not allow packet"],
    "VPC_NO_ROUTE": ["no route entry / no next hop for destination ip"],
    "VPC_WRONG_NEXT_HOP": ["error route next hop", "expect next hop", "destination ip"],
    "NAT_NO_SNAT": ["no snat entry on nat gateway"],
    "LB_BACKEND_UNHEALTHY": ["backend", "health status for port", 'not "normal"'],
    "LB_NO_LISTENER": ["cannot find listener port", "for slb"],
    "LB_LISTENER_NOT_RUNNING": ["status of loadbalancer", "port", 'not "running"'],
    "SERVICE_NO_ENDPOINT": ["service", "has no valid endpoint"],
}
# "Beyond the seed" codes the design names.
DESIGN_CODES = [
    "POD_NOT_RUNNING", "NODE_NOT_READY", "IPTABLES_DROP", "IPTABLES_REJECT", "IP_FORWARD_DISABLED",
    "RP_FILTER_DROP", "BRIDGE_NF_DISABLED", "HAIRPIN_DISABLED", "LINK_DOWN", "VETH_PEER_MISSING",
    "NEIGHBOR_FAILED", "MTU_MISMATCH", "ROUTE_BLACKHOLE", "SERVICE_PORT_NOT_FOUND", "TARGET_PORT_NOT_FOUND",
    "NO_LOCAL_ENDPOINT", "LB_SOURCE_RANGE_DENY", "KUBE_PROXY_RULES_MISSING", "IPVS_BACKEND_MISMATCH",
    "LB_ACL_DENY", "LB_NOT_ACTIVE", "UNKNOWN_ADDRESS", "ROUTING_LOOP", "COLLECTOR_UNAVAILABLE",
    "UNSUPPORTED_RULE",
]


def sample_fields(code: str) -> dict[str, Any]:  # Any: `finding` takes them as its **fields
    return {name: f"<{name}>" for name in CATALOGUE[code].fields}


def test_seed_codes_are_the_designs() -> None:
    assert set(SEED_CODES) == set(SEED_MEANINGS)
    assert len(SEED_CODES) == len(set(SEED_CODES))


@pytest.mark.parametrize("code", sorted(SEED_MEANINGS))
def test_seed_code_carries_its_documented_meaning(code: str) -> None:
    message = finding(code, "hop:x", **sample_fields(code)).message.lower()
    for phrase in SEED_MEANINGS[code]:
        assert phrase.lower() in message, f"{code}: {phrase!r} not in {message!r}"


@pytest.mark.parametrize("code", DESIGN_CODES)
def test_design_code_exists(code: str) -> None:
    assert code in CATALOGUE


def test_catalogue_keys_are_unique_and_stable_shaped() -> None:
    assert len(codes._ENTRIES) == len(CATALOGUE), "a code is defined twice"
    for code, entry in CATALOGUE.items():
        assert entry.code == code
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", code), code
        assert isinstance(entry.severity, Severity)
        assert entry.suggestion.strip(), f"{code} has no suggestion"


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_template_renders_with_its_fields(code: str) -> None:
    entry = CATALOGUE[code]
    for text in (entry.template, entry.suggestion):  # named fields only: positional `{}` cannot be filled
        assert all(name for _, name, _, _ in string.Formatter().parse(text) if name is not None), text
    fields = sample_fields(code)
    f = finding(code, "node:worker-1", **fields)
    assert f.code == code and f.hop == "node:worker-1" and f.severity == entry.severity
    assert f.message == entry.template.format(**fields)  # every field filled, none left as "?"
    assert f.suggestion == entry.suggestion.format(**fields)
    rendered = f.message + f.suggestion
    for name, value in fields.items():
        assert value in rendered, f"{code}: field {name} is never shown"
        assert f.evidence[name] == value  # the fields are kept as evidence


def test_missing_fields_render_as_question_marks_not_crashes() -> None:
    f = finding("NO_ROUTE", "node:a")  # no fields at all
    assert f.message == "no route to host ? in ?"


def test_evidence_is_json_plain() -> None:
    from ipaddress import ip_address

    f = finding("NO_ROUTE", "node:a", dst=ip_address("10.0.0.1"), where=["a", 1], evidence={"table": 254})
    assert f.evidence == {"dst": "10.0.0.1", "where": ["a", 1], "table": 254}
    assert "10.0.0.1" in f.message


def test_abort_codes_mean_missing_data() -> None:
    assert is_abort("COLLECTOR_UNAVAILABLE")
    assert not is_abort("NO_ROUTE")
    assert not is_abort("NOT_A_CODE")
    with pytest.raises(KeyError):
        finding("NOT_A_CODE")
