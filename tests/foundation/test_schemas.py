"""The edge and event models: what a request may be, and that events survive the wire."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.intake import RequestInvalid, parse_request
from shared.schemas import (
    BlobRef,
    Diagnosis,
    DiagnosisRequest,
    DiagnosisResult,
    DiagnosisStatus,
    Hop,
    HopKind,
    Packet,
    Path,
    StageEnvelope,
    Step,
    StepAction,
    StepKind,
    Verdict,
    dump_json,
    new_id,
    now,
)
from shared.topology import TopologyReport

BASE = {"src": "10.244.1.5", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_request_keeps_address_objects() -> None:
    v4 = DiagnosisRequest.model_validate(BASE)
    assert isinstance(v4.src, IPv4Address) and v4.options.collect_timeout_s == 5.0
    assert v4.describe() == "udp 10.244.1.5 → 10.96.0.10:53"


# (change, field, words the message must contain: what is wrong and what to give instead)
ADDRESS_CASES = [
    ({"src": "fd00::5", "dst": "2001:db8::1"}, {"src", "dst"}, "IPv6 is not supported yet"),
    ({"dst": "fd00::2"}, {"dst"}, "IPv6 is not supported yet"),  # IPv4 source, IPv6 destination
    ({"src": "::ffff:10.244.1.5"}, {"src"}, "write the IPv4 address itself (10.244.1.5)"),
    ({"dst": "::ffff:8.8.8.8"}, {"dst"}, "write the IPv4 address itself (8.8.8.8)"),
    ({"src": "0.0.0.0"}, {"src"}, "'any address', not a host"),
    ({"dst": "0.0.0.0"}, {"dst"}, "'any address', not a host"),
    ({"dst": "255.255.255.255"}, {"dst"}, "limited broadcast address: it reaches no single host"),
    ({"src": "255.255.255.255"}, {"src"}, "limited broadcast"),
    ({"dst": "224.0.0.1"}, {"dst"}, "multicast"),
    ({"dst": "239.255.255.250"}, {"dst"}, "multicast"),
    ({"src": "224.0.0.5"}, {"src"}, "multicast: no packet is sent from it"),
    ({"dst": "127.0.0.1"}, {"dst"}, "loopback"),
    ({"src": "127.0.0.53"}, {"src"}, "loopback"),
    ({"src": "169.254.1.1"}, {"src"}, "link-local"),
]


@pytest.mark.parametrize(("change", "fields", "words"), ADDRESS_CASES, ids=[str(c[0]) for c in ADDRESS_CASES])
def test_request_refuses_addresses_no_unicast_flow_has(change: dict, fields: set[str], words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DiagnosisRequest.model_validate({**BASE, **change})
    assert error_fields(exc.value) == fields
    assert all(words in e["msg"] for e in exc.value.errors())


@pytest.mark.parametrize("dst", ["169.254.20.10", "169.254.169.254", "100.100.100.200", "8.8.8.8"])
def test_request_keeps_real_destinations(dst: str) -> None:
    """NodeLocal DNSCache and cloud metadata live at link-local addresses: real destinations."""
    assert str(DiagnosisRequest.model_validate({**BASE, "dst": dst}).dst) == dst


@pytest.mark.parametrize("port", [True, "53", 53.5, None])
def test_request_port_is_strictly_an_integer(port: object) -> None:
    with pytest.raises(ValidationError) as exc:
        DiagnosisRequest.model_validate({**BASE, "port": port})
    assert error_fields(exc.value) == {"port"}


def test_parse_request_is_the_one_parser() -> None:
    """The API body and a --batch line go through the same parser: 53.0 is JSON's integer 53."""
    assert parse_request(json.dumps({**BASE, "port": 53.0})).port == 53
    with pytest.raises(RequestInvalid) as exc:
        parse_request(json.dumps({**BASE, "port": "53"}))
    assert exc.value.status == 422 and [f["field"] for f in exc.value.fields] == ["port"]
    with pytest.raises(RequestInvalid, match="JSON object"):
        parse_request("[1]")


@pytest.mark.parametrize(("change", "field"), [
    ({"src": "pod-a"}, "src"),
    ({"dst": "10.0.0.256"}, "dst"),
    ({"dst": 167772161}, "dst"),  # an integer is not an address literal
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"protocol": "icmp"}, "protocol"),  # a plus for later, not accepted yet
    ({"protocol": "TCP"}, "protocol"),
    ({"extra": 1}, "extra"),
    ({"options": {"collect_timeout_s": 0}}, "options.collect_timeout_s"),
    ({"options": {"collect_timeout_s": 61}}, "options.collect_timeout_s"),
    ({"options": {"nope": True}}, "options.nope"),
])
def test_request_rejects_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DiagnosisRequest.model_validate({**BASE, **change})
    assert error_fields(exc.value) == {field}


@pytest.mark.parametrize("missing", ["src", "dst", "port", "protocol"])
def test_request_requires(missing: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DiagnosisRequest.model_validate({k: v for k, v in BASE.items() if k != missing})
    assert error_fields(exc.value) == {missing}


def test_ids_are_hex_unique_and_time_ordered() -> None:
    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in later)
    assert len(set(later)) == len(later)
    assert all(first < i for i in later)  # newest-first listing sorts ids


def test_envelope_and_diagnosis_survive_json() -> None:
    req = DiagnosisRequest.model_validate(BASE)
    pkt = Packet(src=req.src, dst=req.dst, protocol="udp", sport=40000, dport=53)
    dnat = Step.of(StepKind.NAT, StepAction.REWRITE, "DNAT", pkt,
                   pkt.model_copy(update={"dst": IPv4Address("10.244.2.7")}))
    hop = Hop(id="pod:default/a", kind=HopKind.POD, name="a", address=req.src, steps=[dnat])
    result = DiagnosisResult(verdict=Verdict.REACHABLE, summary="ok", paths=[Path(id="p0", hops=[hop])])
    env = StageEnvelope(id=new_id(), request=req, created_at=now(), result=result, timings_ms={"topology": 1.5},
                        nodes={"n1": BlobRef(bucket="b", name="x", size=3, sha256="0" * 64)})
    assert StageEnvelope.model_validate_json(env.model_dump_json()) == env
    diag = Diagnosis(id=env.id, request=req, status=DiagnosisStatus.COMPLETED, created_at=env.created_at,
                     result=result)
    assert Diagnosis.model_validate_json(diag.model_dump_json()) == diag
    assert str(pkt) == "udp 10.244.1.5:40000 → 10.96.0.10:53"


def test_dump_json_is_model_dump_json_with_parts_serialised_once() -> None:
    """What the bus and the result store send: exactly model_dump_json's bytes, whatever slots are filled;
    a topology report or result passed on untouched (model_copy) is not serialised again."""
    req = DiagnosisRequest.model_validate(BASE)
    report = TopologyReport.model_validate({"source": "snapshot:x", "nodes_to_collect": ["n1"],
                                            "src": {"kind": "pod", "address": str(req.src), "pod": "default/a"},
                                            "dst": {"kind": "unknown", "address": str(req.dst)}})
    pkt = Packet(src=req.src, dst=req.dst, protocol="udp", sport=40000, dport=53)
    hop = Hop(id="pod:default/a", kind=HopKind.POD, name="a", address=req.src,
              steps=[Step.of(StepKind.NAT, StepAction.REWRITE, "DNAT", pkt, pkt)])
    result = DiagnosisResult(verdict=Verdict.REACHABLE, summary="ok", paths=[Path(id="p0", hops=[hop])])
    env = StageEnvelope(id=new_id(), request=req, created_at=now())
    envelopes = [env, env.model_copy(update={"topology": report}),
                 env.model_copy(update={"topology": report, "result": result, "error": "x", "timings_ms": {"a": 1}}),
                 env.model_copy(update={"result": result})]
    diag = Diagnosis(id=env.id, request=req, status=DiagnosisStatus.COMPLETED, created_at=env.created_at)
    for model in [*envelopes, diag, diag.model_copy(update={"result": result, "source": "snapshot:x"})]:
        assert dump_json(model) == model.model_dump_json().encode()
    for model in (report, result):
        assert dump_json(model) == model.model_dump_json().encode()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETDIAG_MAX_DELIVER", "5")
    monkeypatch.setenv("NETDIAG_NATS_URL", "nats://127.0.0.1:9")
    s = Settings.from_env(ack_wait_s=2.5, nats_url=None)  # None: not overridden
    assert (s.max_deliver, s.ack_wait_s, s.nats_url) == (5, 2.5, "nats://127.0.0.1:9")
    monkeypatch.setenv("NETDIAG_MAX_DELIVER", "0")
    with pytest.raises(ValidationError):
        Settings.from_env()


def test_envelope_topology_is_typed_and_tolerant() -> None:
    """The topology slot is the topology stage's report; a report from a newer producer with a field
    this version does not know still loads (the stages read what they know)."""
    req = DiagnosisRequest.model_validate(BASE)
    report = {"source": "snapshot:x", "src": {"kind": "pod", "address": str(req.src), "pod": "default/a"},
              "dst": {"kind": "unknown", "address": str(req.dst)}, "nodes_to_collect": ["n1"], "future": 1}
    env = StageEnvelope(id=new_id(), request=req, created_at=now(), topology=report)
    assert isinstance(env.topology, TopologyReport) and env.topology.nodes_to_collect == ["n1"]
    assert StageEnvelope.model_validate_json(env.model_dump_json()) == env
    with pytest.raises(ValidationError, match=r"topology\.src"):
        StageEnvelope(id=new_id(), request=req, created_at=now(), topology={"source": "live"})
