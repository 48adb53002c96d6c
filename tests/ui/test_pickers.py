"""The form's scenario helpers in real Chromium: source/destination pickers filled from the
topology stage's cluster summary (GET /api/v1/cluster) on a snapshot and on a live lab, a chosen
Service setting port and protocol, the DNS preset using the cluster's real kube-dns ClusterIP, and
ABORT badges read from the finding-code catalogue (GET /api/v1/codes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from playwright.async_api import Locator, Page, expect

from lab.dataplane import Lab
from services.stack import EmbeddedStack
from shared.codes import CATALOGUE
from tests.ui.conftest import FIXTURES, SNAPSHOT
from tests.ui.helpers import api_get
from tests.ui.stacks import snapshot_stack

OTHER_DNS = "10.100.0.10"  # not the Kubernetes default the form used to hard-code
SUMMARY_TIMEOUT_MS = 10_000


def option(page: Page, field: str, text: str) -> Locator:
    return page.locator(f"#{field}-options [role=option]", has_text=text)


async def wait_for_cluster(page: Page, source: str) -> None:
    """Until the page shows a summary from `source` ("live", "snapshot:...")."""
    await expect(page.locator("#cluster-status")).to_contain_text(f"({source}", timeout=SUMMARY_TIMEOUT_MS)


async def test_pickers_offer_the_snapshot_cluster(page: Page, stack: EmbeddedStack) -> None:
    summary = await api_get(stack, "/api/v1/cluster")
    await page.goto(stack.url)
    await wait_for_cluster(page, f"{summary['source']}, as of")
    n = summary["counts"]
    await expect(page.locator("#cluster-status")).to_contain_text(
        f"{n['pods']} pods, {n['services']} Services and {n['nodes']} nodes")

    # source: typing filters; the keyboard chooses (↓ then Enter does not submit the form)
    src = page.locator("#src")
    await src.fill("client")
    await expect(src).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#src-options [role=option]")).to_have_text(["pod default/client (10.244.1.20)"])
    await src.press("ArrowDown")
    await expect(src).to_have_attribute("aria-activedescendant", "src-options-0")
    await src.press("Enter")
    await expect(src).to_have_value("10.244.1.20")
    await expect(src).to_have_attribute("aria-expanded", "false")
    assert "#/diagnoses/" not in page.url
    # every pod with an IP and every node is offered as a source; Services only as destinations
    await src.fill("")
    await src.press("ArrowDown")
    offered = await page.locator("#src-options [role=option]").all_text_contents()
    assert sum(t.startswith("pod ") for t in offered) == sum(len(p["ips"]) for p in summary["pods"])
    assert sum(t.startswith("node ") for t in offered) == len(summary["nodes"])
    assert not [t for t in offered if t.startswith("svc ")]
    await src.press("Escape")
    await expect(src).to_have_attribute("aria-expanded", "false")

    # destination: choosing a Service port sets the port and protocol too
    dst = page.locator("#dst")
    await dst.fill("kube-dns udp")
    await option(page, "dst", "svc kube-system/kube-dns (10.96.0.10:53/UDP)").click()
    assert [await page.input_value(s) for s in ("#dst", "#port", "#protocol")] == ["10.96.0.10", "53", "udp"]
    await dst.fill("api-lb LB")
    await option(page, "dst", "svc prod/api-lb LB (47.100.1.2:443/TCP)").click()
    assert [await page.input_value(s) for s in ("#dst", "#port", "#protocol")] == ["47.100.1.2", "443", "tcp"]
    await dst.fill("web-np nodeport node-2")
    await option(page, "dst", "svc default/web-np NodePort on node-2 (10.0.0.12:30080/TCP)").click()
    assert [await page.input_value(s) for s in ("#dst", "#port")] == ["10.0.0.12", "30080"]
    await dst.fill("node-3")
    await option(page, "dst", "node node-3 (10.0.0.13)").click()
    await expect(dst).to_have_value("10.0.0.13")
    await expect(page.locator("#port")).to_have_value("30080")  # a node carries no port: left as it was


async def test_abort_badges_come_from_the_code_catalogue(page: Page, stack: EmbeddedStack, tmp_path: Path) -> None:
    codes = await api_get(stack, "/api/v1/codes")
    assert {c["code"]: c["abort"] for c in codes} == {c.code: c.abort for c in CATALOGUE.values()}
    # a cluster-level DATA_MISSING (an ABORT-class code) on a result whose paths never ABORT
    doc = json.loads((FIXTURES / "policy-deny.json").read_text())
    doc["result"]["findings"].append({"code": "DATA_MISSING", "severity": "warning", "hop": None,
                                      "message": "node dumps is not available: snapshot has no nodes/",
                                      "suggestion": "Provide it.", "evidence": {}})
    assert all(p["final"] != "ABORT" for p in doc["result"]["paths"])
    export = tmp_path / "data-missing.json"
    export.write_text(json.dumps(doc))
    await page.goto(stack.url)
    await page.set_input_files("#import-file", str(export))
    await expect(page.locator('#findings > li[data-code="DATA_MISSING"] .badge.b-ABORT')).to_have_text("ABORT")
    await expect(page.locator('#findings > li[data-code="NETWORK_POLICY_DENY"] .badge.b-ABORT')).to_have_count(0)


@pytest_asyncio.fixture(loop_scope="session")
async def other_dns_stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    """The basic snapshot with kube-dns on another ClusterIP (a non-default service CIDR)."""
    snapshot = tmp_path / "snapshot"
    shutil.copytree(SNAPSHOT, snapshot)
    services = snapshot / "kubernetes" / "services.yaml"
    docs = [d for d in yaml.safe_load_all(services.read_text()) if d]
    for doc in docs:
        for svc in doc.get("items", [doc]):
            if svc["metadata"]["name"] == "kube-dns":
                svc["spec"]["clusterIP"], svc["spec"]["clusterIPs"] = OTHER_DNS, [OTHER_DNS]
    services.write_text(yaml.safe_dump_all(docs))
    async with snapshot_stack(snapshot) as running:
        yield running


async def test_dns_preset_uses_the_clusters_dns_ip(page: Page, other_dns_stack: EmbeddedStack) -> None:
    await page.goto(other_dns_stack.url)
    await wait_for_cluster(page, "snapshot:")
    await expect(page.locator("#dns-origin")).to_have_text("(from the cluster model)")
    await expect(page.locator("#dns-ip")).to_have_value(OTHER_DNS)
    await page.fill("#src", "10.244.1.20")
    await page.click("#preset-dns")
    assert [await page.input_value(s) for s in ("#dst", "#port", "#protocol")] == [OTHER_DNS, "53", "udp"]


@pytest.mark.lab
async def test_pickers_follow_the_live_lab(page: Page, lab: tuple[Lab, EmbeddedStack]) -> None:
    world, stack = lab
    await page.goto(stack.url)
    await wait_for_cluster(page, "live:http")
    client = world.resolved.pod("web/client").ip
    await page.locator("#src").fill("web/client")
    await option(page, "src", f"pod web/client ({client})").click()
    await expect(page.locator("#src")).to_have_value(client)

    svc = next(s for s in world.resolved.services if (s.spec.namespace, s.spec.name) == ("shop", "api"))
    await page.locator("#dst").fill("svc shop/api (")
    await option(page, "dst", f"svc shop/api ({svc.cluster_ip}:80/TCP)").click()
    assert [await page.input_value(s) for s in ("#dst", "#port", "#protocol")] == [svc.cluster_ip, "80", "tcp"]
    dns = next(s for s in world.resolved.services if (s.spec.namespace, s.spec.name) == ("kube-system", "kube-dns"))
    await expect(page.locator("#dns-ip")).to_have_value(str(dns.cluster_ip))
