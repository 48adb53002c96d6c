"""What the walk says must match what happened: a MASQUERADE that keeps the address is no rewrite, a
NO_LISTENER on a plain port does not talk about Service targetPorts, reply ids follow their forward path."""

from __future__ import annotations

import ipaddress

from shared.schemas import FinalState, StepAction, StepKind
from shared.topology import Endpoint, EndpointKind
from tests.simulator.dataplane.test_walk import Case, forward

INTERNET = ipaddress.ip_address("203.0.113.10")
NODE_1 = ipaddress.ip_address("172.30.0.11")


def test_a_masquerade_that_keeps_the_address_is_not_shown_as_a_rewrite() -> None:
    case = Case("basic", "pod-cross-node")
    case.report.src = Endpoint(address=NODE_1, kind=EndpointKind.NODE, node="node-1")
    case.report.dst = Endpoint(address=INTERNET, kind=EndpointKind.PUBLIC)
    case.report.paths = []
    case.request = case.request.model_copy(update={"src": NODE_1, "dst": INTERNET, "port": 80})
    case.iptables("node-1", "nat", "-A POSTROUTING -o eth0 -j MASQUERADE")  # the node's own traffic too
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.FORWARD
    nat = [s for h in path.hops for s in h.steps if s.kind == StepKind.NAT]
    assert nat and all(s.action == StepAction.INFO and "is not changed" in s.detail for s in nat), nat
    replies = [p for p in result.paths if p.direction == "reply"]
    assert replies and not any("translated back" in s.detail for p in replies for h in p.hops for s in h.steps)


def test_no_listener_on_a_plain_pod_port_does_not_mention_a_service() -> None:
    case = Case("basic", "pod-cross-node")
    case.pod("shop/api-2").sockets.clear()
    result = case.run()
    (f,) = [f for f in result.findings if f.code == "NO_LISTENER"]
    assert "Service" not in f.suggestion and "targetPort" not in f.suggestion, f.suggestion


def test_no_listener_behind_a_service_names_its_target_port() -> None:
    case = Case("basic", "clusterip")
    case.pod("shop/api-2").sockets.clear()
    result = case.run()
    found = [f for f in result.findings if f.code == "NO_LISTENER"]
    assert found and all("targetPort of Service shop/api (8080)" in f.suggestion for f in found), found


def test_reply_ids_follow_their_forward_path() -> None:
    result = Case("basic", "clusterip").run()
    forward_ids = [p.id for p in forward(result)]
    reply_ids = [p.id for p in result.paths if p.direction == "reply"]
    assert len(forward_ids) == 2 and reply_ids == [f"{i}.reply0" for i in forward_ids]
