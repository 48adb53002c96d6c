"""The result page read the way an operator reads it, in real Chromium against the real embedded stack:
verdict, first failing hop and fix above the fold at 1366x768 and 1920x1080; progress folded once done;
a FAILED run shows its reason; history never wraps inside an address:port; reply lanes look unlike
"unknown"; labels say each thing once and stay inside their shapes; an emptied field says it is required."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from services.stack import EmbeddedStack
from shared.config import Settings
from tests.ui.stacks import snapshot_stack
from tests.ui.test_ui import RESULT_TIMEOUT_MS, api_get, submit

SHOP = Path(__file__).resolve().parents[2] / "examples" / "snapshots" / "shop"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shop() -> AsyncIterator[EmbeddedStack]:
    async with snapshot_stack(SHOP) as running:
        yield running


async def _page(browser: Browser, width: int, height: int) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    return await context.new_page()


async def _in_view(page: Page, selector: str) -> bool:
    return bool(await page.evaluate("""(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""", selector))


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1920, 1080)])
async def test_verdict_failing_hop_and_fix_come_first(browser: Browser, shop: EmbeddedStack, width: int,
                                                       height: int) -> None:
    page = await _page(browser, width, height)
    await page.goto(shop.url)
    await submit(page, "10.244.1.2", "10.244.2.3", "5432", "tcp")  # the shop/db policy deny
    await expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    diagnosis = await api_get(shop, f"/api/v1/diagnoses/{page.url.rsplit('/', 1)[1]}")
    first = diagnosis["result"]["first_failure"]
    await expect(page.locator("#failure-hop")).to_have_text(f"{first['hop_name']} ({first['hop_kind']})")
    await expect(page.locator("#failure-fix-text")).to_have_text(first["fix"])
    await page.wait_for_timeout(200)
    for selector in ("#verdict-word", "#verdict-summary", "#failure-hop", "#failure-fix"):
        assert await _in_view(page, selector), f"{selector} is below the fold at {width}x{height}"
    assert await page.evaluate("!document.getElementById('progress-box').open")  # folded once done
    await expect(page.locator("#progress-status")).to_be_visible()
    await expect(page.locator("#verdict-counts")).to_contain_text(diagnosis["result"]["counts"]["text"])
    await page.context.close()


async def test_history_reply_lanes_and_labels(browser: Browser, shop: EmbeddedStack) -> None:
    page = await _page(browser, 1366, 768)
    await page.goto(shop.url)
    await submit(page, "10.244.1.2", "8.8.8.8", "53", "udp")
    await expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    await expect(page.locator("#history-list a").first).to_be_visible()
    # every address:port of the history is on one line
    wrapped = await page.evaluate("""() => [...document.querySelectorAll('#history-list .ep')]
        .filter((e) => e.getClientRects().length !== 1).map((e) => e.textContent)""")
    assert wrapped == []
    nodes = await page.evaluate("""() => window.netdiag.cy.nodes().map((n) => ({label: n.data('label'),
        classes: n.classes(), border: n.style('border-style')}))""")
    labels = [n["label"] for n in nodes]
    assert not any("internet internet" in lbl.replace("\n", " ") for lbl in labels), labels
    replies = [n for n in nodes if "reply" in n["classes"] and "terminal" not in n["classes"]]
    assert replies and all(n["border"] == "dotted" for n in replies)  # "unknown" is dashed
    # text inside its shape: an ellipse's label box fits its inscribed rectangle (1/√2 of each side)
    fits = await page.evaluate("""() => { const c = document.createElement('canvas').getContext('2d');
        c.font = '12px system-ui, DejaVu Sans, sans-serif';
        return window.netdiag.cy.nodes().filter((n) => n.data('shape') === 'ellipse').map((n) => {
          const lines = n.data('label').split('\\n');
          const w = Math.max(...lines.map((l) => c.measureText(l).width)), h = lines.length * 15;
          return w <= n.width() / Math.SQRT2 && h <= n.height() / Math.SQRT2; }); }""")
    assert fits and all(fits)
    await page.context.close()


async def test_an_emptied_field_says_it_is_required(browser: Browser, shop: EmbeddedStack) -> None:
    page = await _page(browser, 1366, 768)
    await page.goto(shop.url)
    for field in ("src", "dst", "port"):
        await page.fill(f"#{field}", "10")
        await page.fill(f"#{field}", "")
        await page.locator(f"#{field}").blur()
        await expect(page.locator(f"#{field}-error")).to_have_text("Field required")
    await page.reload()  # a field merely passed through stays quiet
    await page.locator("#src").focus()
    await page.locator("#dst").focus()
    await expect(page.locator("#src-error")).to_have_text("")
    await page.context.close()


async def test_a_failed_run_shows_its_reason(browser: Browser, tmp_path: Path) -> None:
    """A snapshot directory that is no snapshot: the topology stage fails, the diagnosis ends FAILED."""
    async with EmbeddedStack(Settings(snapshot=tmp_path / "missing")) as stack:
        page = await _page(browser, 1366, 768)
        await page.goto(stack.url)
        await submit(page, "10.244.1.2", "10.244.2.3", "5432", "tcp")
        await expect(page.locator("#verdict-word")).to_contain_text("FAILED", timeout=30_000)
        diagnosis = await api_get(stack, f"/api/v1/diagnoses/{page.url.rsplit('/', 1)[1]}")
        assert diagnosis["status"] == "failed" and diagnosis["error"]
        await expect(page.locator("#verdict-summary")).to_contain_text(diagnosis["error"])
        assert "no kubernetes/ directory" in diagnosis["error"]
        for grid in await page.locator("#result .result-grid").all():  # no empty graph, findings, assumptions
            await expect(grid).to_be_hidden()
        assert await _in_view(page, "#verdict-summary")
        await expect(page.locator("#verdict-counts")).to_be_hidden()
        await page.context.close()


@pytest.mark.parametrize(("field", "value", "words"), [
    ("dst", "fd00::2", "IPv6 is not supported yet"),
    ("dst", "255.255.255.255", "limited broadcast"),
    ("src", "0.0.0.0", "'any address', not a host"),
])
async def test_the_api_refusal_is_shown_at_its_field(browser: Browser, shop: EmbeddedStack, field: str,
                                                     value: str, words: str) -> None:
    page = await _page(browser, 1366, 768)
    await page.goto(shop.url)
    values = {"src": "10.244.1.2", "dst": "10.244.2.3", field: value}
    await submit(page, values["src"], values["dst"], "80", "tcp")
    await expect(page.locator(f"#{field}-error")).to_contain_text(words)
    assert "#/diagnoses/" not in page.url
    await page.context.close()
