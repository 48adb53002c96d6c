"""A real embedded stack (nats-server + every stage + gateway) on a snapshot or on a lab, and a
real browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from lab.dataplane import Lab
from services.stack import EmbeddedStack
from tests.lab.conftest import new_prefix, require_root
from tests.ui.browser import CHROMIUM, chromium
from tests.ui.stacks import lab_stack, snapshot_stack

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "tests" / "topology" / "fixtures" / "basic"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack() -> AsyncIterator[EmbeddedStack]:
    async with snapshot_stack(SNAPSHOT) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def lab() -> AsyncIterator[tuple[Lab, EmbeddedStack]]:
    require_root()
    async with lab_stack(new_prefix()) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page at laptop width; any JavaScript error, or anything the gateway's Content-Security-Policy
    blocks, fails the test."""
    context = await browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        yield pg
    finally:
        await context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
