"""The web UI end to end: real Chromium against the real embedded stack on a snapshot.

The snapshot (tests/topology/fixtures/basic) isolates prod/api with default-deny-ingress, so
default/client → api:443 meets NETWORK_POLICY_DENY at the api pod. What the UI shows is
checked against what the API returns for the same diagnosis: the page must agree with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from lab.dataplane import Lab
from lab.demo import CASES
from services.stack import EmbeddedStack
from shared.schemas import Diagnosis
from tests.ui.conftest import FIXTURES
from tests.ui.helpers import RESULT_TIMEOUT_MS, api_get, api_post, submit

CLIENT, API_POD_IP, API_POD_HOP = "10.244.1.20", "10.244.2.40", "pod:prod/api-6d4b8c7f9-zz9zz"

# what the canvas shows, read through Cytoscape (the page exposes its state as window.netdiag)
GRAPH_NODES = """() => window.netdiag.cy.nodes().map((n) => ({
    id: n.id(), label: n.data('label'), classes: n.classes(), selected: n.selected()}))"""


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_fixtures_follow_the_result_model(fixture: Path) -> None:
    Diagnosis.model_validate_json(fixture.read_text())


async def test_inline_validation_speaks_the_api_words(page: Page, stack: EmbeddedStack) -> None:
    await page.goto(stack.url)
    await page.fill("#src", "10.244.1.300")
    await page.fill("#dst", "fe80::1::2")
    await page.fill("#port", "70000")
    await page.click("#submit")
    shown = {f: await page.text_content(f"#{f}-error") for f in ("src", "dst", "port")}
    for f in ("src", "dst", "port"):
        await expect(page.locator(f"#{f}")).to_have_attribute("aria-invalid", "true")
    status, body = await api_post(stack, {"src": "10.244.1.300", "dst": "fe80::1::2", "port": 70000, "protocol": "tcp"})
    assert status == 422
    assert shown == {f["field"]: f["message"] for f in body["fields"]}
    assert page.url.rstrip("/") == stack.url  # nothing was submitted

    await page.fill("#port", "0")
    await page.locator("#port").blur()
    _, body = await api_post(stack, {"src": CLIENT, "dst": CLIENT, "port": 0, "protocol": "tcp"})
    await expect(page.locator("#port-error")).to_have_text(body["fields"][0]["message"])

    await page.fill("#src", CLIENT)
    await page.click("#preset-dns")  # kube-dns ClusterIP on 53/udp
    assert [await page.input_value(s) for s in ("#dst", "#port", "#protocol")] == ["10.96.0.10", "53", "udp"]
    await expect(page.locator("#src-error")).to_have_text("")


async def test_diagnose_policy_deny_end_to_end(page: Page, stack: EmbeddedStack, tmp_path: Path) -> None:
    await page.goto(stack.url)
    await submit(page, CLIENT, API_POD_IP, "443", "tcp")

    # progress: every pipeline stage reported, then the verdict
    await expect(page.locator("#progress")).to_be_visible()
    await expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    for stage in ("topology", "collector", "cloud", "simulator"):
        await expect(page.locator(f'#stage-rows tr[data-stage="{stage}"] .state')).to_have_text("done")
    assert "#/diagnoses/" in page.url
    diagnosis_id = page.url.rsplit("/", 1)[1]
    truth = await api_get(stack, f"/api/v1/diagnoses/{diagnosis_id}")
    result = truth["result"]
    await expect(page.locator("#verdict-word")).to_contain_text(result["verdict"])
    await expect(page.locator("#verdict-summary")).to_have_text(result["summary"])

    # the hop the deny names is highlighted in the graph, with its code on it
    deny = next(f for f in result["findings"] if f["code"] == "NETWORK_POLICY_DENY")
    assert deny["hop"] == API_POD_HOP
    api_hop = next(h for p in result["paths"] for h in p["hops"] if h["id"] == API_POD_HOP)
    expected_status = api_hop["status"] if api_hop["status"] != "ok" else "warning"
    nodes = await page.evaluate(GRAPH_NODES)
    hop_nodes = [n for n in nodes if "prod/api-6d4b8c7f9" in n["label"].replace("\n", "")]
    assert hop_nodes and all(expected_status in n["classes"] and "NETWORK_POLICY_DENY" in n["label"] for n in hop_nodes)
    assert len([n for n in nodes if "terminal" in n["classes"]]) == len(result["paths"])

    # findings list: the code, cross-linked to its hop; assumptions all visible
    item = page.locator('#findings > li[data-code="NETWORK_POLICY_DENY"]')
    await expect(item).to_contain_text(deny["message"])
    await expect(item).to_contain_text(deny["suggestion"])
    await expect(page.locator("#assumptions > li")).to_have_count(len(result["assumptions"]))
    await expect(page.locator("#findings > li")).to_have_count(len(result["findings"]))
    await item.get_by_role("button", name=f"at hop {API_POD_HOP}").click()
    await expect(page.locator("#details-title")).to_be_focused()

    # hop details: its policy step with the decision and the finding
    details = page.locator("#details")
    await expect(details).to_contain_text(API_POD_HOP)
    policy_step = next(s for s in api_hop["steps"] if s["kind"] == "policy")
    await expect(details.locator(f"li.a-{policy_step['action']}")).to_contain_text(policy_step["detail"])
    await expect(details).to_contain_text("NETWORK_POLICY_DENY")
    # ... and the facts of its typed detail (docs/steps.md), by their names
    step_item = details.locator(f"li.a-{policy_step['action']}").first
    await expect(step_item.locator("dt", has_text="isolating policies")).to_have_count(1)
    for name in policy_step["info"]["isolating_policies"]:
        await expect(step_item.locator("dd").filter(has_text=name)).not_to_have_count(0)
    selected = {n["id"] for n in await page.evaluate(GRAPH_NODES) if n["selected"]}
    assert selected and selected <= {n["id"] for n in hop_nodes}

    # exports: JSON is the API's document, PNG and SVG are images of the graph
    async with page.expect_download() as dl:
        await page.click("#export-json")
    exported = json.loads(Path(await (await dl.value).path()).read_text())
    assert exported["id"] == diagnosis_id and exported["result"]["verdict"] == result["verdict"]
    async with page.expect_download() as dl:
        await page.click("#export-png")
    assert Path(await (await dl.value).path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    async with page.expect_download() as dl:
        await page.click("#export-svg")
    svg = Path(await (await dl.value).path()).read_text()
    assert svg.startswith("<svg") and "NETWORK_POLICY_DENY" in svg

    # history lists it with a permalink; reloading the permalink shows the same result
    link = page.locator(f'#history-list a[href="#/diagnoses/{diagnosis_id}"]')
    await expect(link).to_have_attribute("aria-current", "page")
    await page.reload()
    await expect(page.locator("#verdict-word")).to_contain_text(result["verdict"])
    await expect(page.locator("#details")).to_contain_text(API_POD_HOP)  # first abnormal hop opens
    await expect(page.locator('#stage-rows tr[data-stage="simulator"] .state')).to_have_text("done")


@pytest.mark.lab
async def test_lab_healthy_and_broken_agree_with_the_kernel(page: Page, lab: tuple[Lab, EmbeddedStack]) -> None:
    """On a real dataplane: the healthy Service path shows every branch delivering; the broken
    one shows the policy-denied db pod in red, and the kernel's own probe agrees with both."""
    world, stack = lab
    for case in CASES:
        kernel_ok = world.probe(case.src, case.dst, case.port, case.protocol, timeout=1.0).ok
        await page.goto(stack.url)
        await submit(page, world.source_address(case.src), case.dst, str(case.port), case.protocol)
        await expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        truth = await api_get(stack, f"/api/v1/diagnoses/{page.url.rsplit('/', 1)[1]}")
        verdict = truth["result"]["verdict"]
        await expect(page.locator("#verdict-word")).to_contain_text(verdict)
        nodes = await page.evaluate(GRAPH_NODES)
        terminals = [n for n in nodes if "terminal" in n["classes"] and "forward" in n["classes"]]
        if kernel_ok:  # the lab's agents collect every node: nothing is missing, the answer is confident
            assert verdict == "REACHABLE", truth["result"]["summary"]
            assert len(terminals) >= 2 and all(n["label"] == "DELIVER" for n in terminals)  # one per endpoint
            assert not [n for n in nodes if "error" in n["classes"]]
        else:
            assert verdict == "UNREACHABLE", truth["result"]["summary"]
            red = [n for n in nodes if "error" in n["classes"] and "hop" in n["classes"]]
            assert red and all("shop/db" in n["label"] and "NETWORK_POLICY_DENY" in n["label"] for n in red)
            bad = next(h for p in truth["result"]["paths"] for h in p["hops"] if h["status"] == "error")
            await page.locator(".hop-btn.s-error").first.click()
            await expect(page.locator("#details")).to_contain_text(bad["id"])
            for step in (s for s in bad["steps"] if s["action"] == "DROP"):
                await expect(page.locator("#details")).to_contain_text(step["detail"])


async def test_branches_aborts_and_keyboard_on_exported_results(page: Page, stack: EmbeddedStack) -> None:
    await page.goto(stack.url)
    await page.set_input_files("#import-file", str(FIXTURES / "reachable.json"))
    await expect(page.locator("#verdict-word")).to_contain_text("REACHABLE")
    nodes = await page.evaluate(GRAPH_NODES)
    terminals = [n for n in nodes if "terminal" in n["classes"]]
    assert sorted(("reply" in n["classes"], n["label"]) for n in terminals) == [
        (False, "DELIVER"), (False, "DELIVER"), (True, "↩ DELIVER")]
    # the two Service endpoints fan out from one shared client → node-1 prefix
    assert sum(1 for n in nodes if n["label"].startswith("pod\ndefault/client") and "forward" in n["classes"]) == 1
    await expect(page.locator("#findings")).to_contain_text("No findings.")

    await page.set_input_files("#import-file", str(FIXTURES / "undetermined.json"))
    await expect(page.locator("#verdict-word")).to_contain_text("UNDETERMINED")
    abort = page.locator('#findings > li[data-code="COLLECTOR_UNAVAILABLE"]')
    await expect(abort.locator(".badge.b-ABORT")).to_have_text("ABORT")
    await expect(page.locator("#assumptions li.matters")).to_contain_text("node-3 did not answer")
    await expect(page.locator("#findings")).to_contain_text("cluster-level")
    unknown = [n for n in await page.evaluate(GRAPH_NODES) if "node-3" in n["label"]]
    assert unknown and all("unknown" in n["classes"] for n in unknown)

    # keyboard: arrows walk the hops of the graph, Enter moves to the details
    await page.focus("#graph")
    first = await page.text_content("#details h3")
    await page.keyboard.press("ArrowRight")
    assert await page.text_content("#details h3") != first
    await page.keyboard.press("Enter")
    await expect(page.locator("#details-title")).to_be_focused()


async def test_typed_step_details_on_graph_and_in_details(page: Page, stack: EmbeddedStack) -> None:
    """A result's typed step details (docs/steps.md) read as named facts; a result exported before
    steps were typed still shows its evidence."""
    doc = json.loads((FIXTURES / "typed-service.json").read_text())
    node1 = next(h for p in doc["result"]["paths"] for h in p["hops"] if h["id"] == "node:node-1")
    nat = next(s for s in node1["steps"] if s["kind"] == "nat")
    await page.goto(stack.url)
    await page.set_input_files("#import-file", str(FIXTURES / "typed-service.json"))
    await expect(page.locator("#verdict-word")).to_contain_text("REACHABLE")
    labels = [n["label"] for n in await page.evaluate(GRAPH_NODES)]
    # node-1 translates to both endpoints of shop/api: the shared hop says so
    assert any(lb.startswith("node\nnode-1") and "DNAT → 2 addresses" in lb for lb in labels), labels
    await page.get_by_role("button", name="node node-1, status ok").first.click()
    item = page.locator("#details li.a-REWRITE", has_text=nat["detail"]).first
    original, translated = nat["info"]["original"], nat["info"]["translated"]
    await expect(item.locator("dd", has_text=f"{original['address']}:{original['port']} → "
                                             f"{translated['address']}:{translated['port']}")).to_have_count(1)
    await expect(item.locator("dd", has_text=nat["info"]["rule"]["rule"])).to_have_count(1)
    netfilter = page.locator("#details li.a-ALLOW", has_text="PREROUTING").first
    await expect(netfilter.locator("dt", has_text="rules matched")).to_have_count(1)

    await page.set_input_files("#import-file", str(FIXTURES / "reachable.json"))  # exported before typed steps
    await expect(page.locator("#verdict-word")).to_contain_text("REACHABLE")
    await page.locator(".hop-btn", has_text="node node-1").first.click()
    await expect(page.locator("#details summary", has_text="Stored evidence (older result)")).not_to_have_count(0)


# WCAG contrast of every visible text element against its effective (first opaque) background
LOW_CONTRAST = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => [r, g, b]
    .map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((acc, v, i) => acc + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
  return [...document.querySelectorAll('body *')].filter((el) => el.offsetParent !== null && [...el.childNodes]
      .some((n) => n.nodeType === 3 && n.textContent.trim()))
    .map((el) => { const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
      return [el.textContent.trim().slice(0, 40), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]; })
    .filter(([, ratio]) => ratio < 4.5);
}"""


async def test_labels_contrast_and_widths(page: Page, stack: EmbeddedStack) -> None:
    await page.goto(stack.url)
    for fixture in ("undetermined", "policy-deny"):
        await page.set_input_files("#import-file", str(FIXTURES / f"{fixture}.json"))
        await expect(page.locator("#result")).to_be_visible()
        assert await page.evaluate(LOW_CONTRAST) == []
    unlabeled = await page.evaluate("""() => [...document.querySelectorAll('input, select, button, a')]
        .filter((e) => e.offsetParent !== null)
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map((e) => e.outerHTML)""")
    assert unlabeled == []
    for width, side_by_side in ((1280, False), (1920, True)):
        await page.set_viewport_size({"width": width, "height": 900})
        await page.wait_for_timeout(300)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        graph = await page.locator(".graph-card").bounding_box()
        details = await page.locator(".details-card").bounding_box()
        assert graph and details  # both cards are laid out
        assert (details["x"] > graph["x"] + graph["width"] - 1) is side_by_side


async def test_the_live_witness_is_shown_and_its_drop_point_drawn_apart(page: Page, stack: EmbeddedStack) -> None:
    """A recorded lab diagnosis where the kernel disagreed (tests/lab/test_live.py's model gap): the live
    card names both answers, LIVE_DIVERGES is listed, the kernel's drop hop has its own mark."""
    await page.goto(stack.url)
    await page.set_input_files("#import-file", str(FIXTURES / "live-diverges.json"))
    await expect(page.locator("#verdict-word")).to_contain_text("UNREACHABLE")
    card = page.locator("#live-card")
    await expect(card).to_be_visible()
    await expect(card).to_contain_text("diverges")
    await expect(card).to_contain_text("simulated REACHABLE, kernel UNREACHABLE")
    await expect(card.locator("li.kernel-drop").first).to_contain_text("OTHERHOST")
    await expect(page.locator('#findings > li[data-code="LIVE_DIVERGES"]')).to_be_visible()
    marked = [n for n in await page.evaluate(GRAPH_NODES) if "kernel-drop" in n["classes"]]
    assert marked and any("node-1" in n["label"] for n in marked), marked
    assert await page.evaluate("() => document.getElementById('live').checked") is True  # the request's option
    await page.set_input_files("#import-file", str(FIXTURES / "reachable.json"))
    await expect(card).to_be_hidden()
