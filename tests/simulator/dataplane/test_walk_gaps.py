"""What the node agent could not read (NetnsDump.errors / NodeDump.errors) on the recorded dumps:
an unread part is never taken for an empty one. The walk stops (ABORT, DATA_MISSING naming the part
and the agent's error) where it needs that part, and the verdict is UNDETERMINED, not a confident
KUBE_PROXY_RULES_MISSING, NO_LISTENER, NO_ROUTE or VETH_PEER_MISSING."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.simulator.assemble import overall_verdict
from services.simulator.dataplane.walk import WalkResult
from shared.netstack import NetfilterState
from shared.schemas import FinalState, Verdict
from tests.simulator.dataplane.helpers import Case, forward


def verdict(result: WalkResult) -> Verdict:
    return overall_verdict(result.paths, result.findings, result.assumptions)


def aborted_for_missing_data(result: WalkResult, hop: str, needle: str) -> None:
    paths = forward(result)
    assert paths and all(p.final == FinalState.ABORT and p.cause == "DATA_MISSING" for p in paths), [
        (p.final, p.cause) for p in paths]
    missing = [f for f in result.findings if f.code == "DATA_MISSING" and f.hop == hop]
    assert missing and any(needle in f.message for f in missing), [f.message for f in result.findings]
    assert verdict(result) == Verdict.UNDETERMINED


def unread_is_not_empty(case: Case, empty: Callable[[], None], unread: Callable[[], None], hop: str, needle: str,
                        code: str) -> None:
    """Empty state means `code`; the same state marked unread (a collector error) must not: it aborts on
    the missing data at `hop` instead."""
    empty()
    assert {p.cause for p in forward(case.run())} == {code}  # what the empty state means
    unread()
    result = case.run()
    aborted_for_missing_data(result, hop, needle)
    assert not [f for f in result.findings if f.code == code]


@pytest.mark.parametrize("error", ["netfilter: PermissionError: [Errno 13] Permission denied",
                                   "iptables-nft-save not installed"])
def test_unread_netfilter_is_not_an_empty_ruleset(error: str) -> None:
    case = Case("basic", "clusterip")
    node = case.host("node-1")
    unread_is_not_empty(case, lambda: setattr(node, "netfilter", NetfilterState()),
                        lambda: setattr(node, "errors", [error]), "node:node-1", error, "KUBE_PROXY_RULES_MISSING")


def test_unread_sockets_are_not_no_listener() -> None:
    case = Case("basic", "pod-cross-node")
    pod = case.pod("shop/api-2")
    unread_is_not_empty(case, lambda: setattr(pod, "sockets", []),
                        lambda: setattr(pod, "errors", ["sockets: OSError: [Errno 1] Operation not permitted"]),
                        "pod:shop/api-2", "listening sockets", "NO_LISTENER")


def test_unread_routes_are_not_no_route() -> None:
    case = Case("basic", "pod-cross-node")
    node = case.host("node-2")
    unread_is_not_empty(case, lambda: setattr(node, "routes", []),
                        lambda: setattr(node, "errors", ["routes: NetlinkError: (16, 'Device or resource busy')"]),
                        "node:node-2", "the routes of node node-2", "NO_ROUTE")


def test_an_unreadable_pod_namespace_is_not_a_missing_veth() -> None:
    case = Case("basic", "pod-cross-node")
    dst, dump = case.pod("shop/api-2"), case.dumps["node-2"]
    unread_is_not_empty(case, lambda: dump.pods.remove(dst),
                        lambda: setattr(dump, "errors", [f"netns {dst.id} (/proc/4242/ns/net): FileNotFoundError: "
                                                         "[Errno 2] gone"]),
                        "node:node-2", "could not read it", "VETH_PEER_MISSING")


def test_an_error_the_walk_does_not_need_still_leaves_a_delivery_undetermined() -> None:
    case = Case("basic", "pod-cross-node")
    case.pod("shop/api-2").errors = ["counters: OSError: [Errno 5] Input/output error"]
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.DELIVER]
    (missing,) = [f for f in result.findings if f.code == "DATA_MISSING"]
    assert missing.hop == "pod:shop/api-2" and "kernel counters" in missing.message
    assert verdict(result) == Verdict.UNDETERMINED


def test_harmless_errors_are_stated_not_blocking() -> None:
    case = Case("basic", "pod-cross-node")
    case.dumps["node-2"].errors = ["facts: FileNotFoundError: kubelet"]
    case.host("node-2").errors = ["nftables tables: [Errno 93] Protocol not supported"]
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.DELIVER]
    assert not [f for f in result.findings if f.code == "DATA_MISSING"]
    assert any("nftables tables" in a.text and not a.could_change_outcome for a in result.assumptions)
    assert verdict(result) == Verdict.REACHABLE
