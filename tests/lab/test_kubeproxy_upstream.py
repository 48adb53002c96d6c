"""The lab's kube-proxy renderers against kube-proxy's own unit tests: for the Services and EndpointSlices
of each upstream test, `lab.kubeproxy.payload` must equal upstream's expected restore payload (after
upstream's own normalisation, `sortIPTablesRules`), or the one chain the test checks, and
`lab.kubeproxy_nft.payload` upstream's nftables transaction (after `sortNFTablesTransaction`). The oracles
are transcribed verbatim (tests/simulator/dataplane/fixtures/upstream/), never produced here."""

from __future__ import annotations

import difflib

import pytest

from lab import kubeproxy, kubeproxy_nft
from tests.simulator.dataplane.kubeproxy_upstream import (
    CHAINS,
    FAKE,
    NFT_FAKE,
    NFT_PAYLOADS,
    PAYLOADS,
    UPSTREAM,
    chain_rules,
    sort_nft,
    sort_restore,
)


@pytest.mark.parametrize(("name", "ports", "fixture"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_payload_is_upstreams(name: str, ports: list, fixture: str) -> None:
    expected = (UPSTREAM / fixture).read_text()
    got = sort_restore(kubeproxy.payload(ports, FAKE))
    assert sort_restore(expected) == expected  # the fixture is in upstream's sorted form
    assert got == expected, f"{name}: lab renderer differs from upstream\n" + "".join(
        difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "upstream", "lab"))


@pytest.mark.parametrize(("name", "config", "ports", "table", "chain", "expected"), CHAINS,
                         ids=[c[0] for c in CHAINS])
def test_chain_is_upstreams(name: str, config: kubeproxy.Config, ports: list, table: str, chain: str,
                            expected: list[str]) -> None:
    got = chain_rules(kubeproxy.payload(ports, config), table, chain)
    assert got == expected, f"{name}: {table}/{chain}\nupstream: {expected}\nlab:      {got}"


@pytest.mark.parametrize(("name", "ports", "fixture"), NFT_PAYLOADS, ids=[p[0] for p in NFT_PAYLOADS])
def test_nftables_transaction_is_upstreams(name: str, ports: list, fixture: str) -> None:
    expected = sort_nft((UPSTREAM / fixture).read_text())
    got = sort_nft(kubeproxy_nft.payload(ports, NFT_FAKE))
    assert got == expected, f"{name}: lab renderer differs from upstream\n" + "".join(
        difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "upstream", "lab"))
