"""Screenshots of the web UI for the docs: a healthy and a broken diagnosis, run through the
real embedded stack and shown in real headless Chromium. As root it builds the basic lab
(the cases of `netdiag lab demo`); otherwise, or with --snapshot, it diagnoses a snapshot.

    .venv/bin/python tests/ui/screenshots.py [--out docs/screenshots]
    .venv/bin/python tests/ui/screenshots.py --snapshot DIR --healthy SRC,DST,PORT,PROTO --broken ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lab.demo import CASES  # noqa: E402
from tests.ui.browser import chromium  # noqa: E402
from tests.ui.stacks import lab_stack, snapshot_stack  # noqa: E402

SHOP = ROOT / "examples" / "snapshots" / "shop"
BASIC = ROOT / "tests" / "topology" / "fixtures" / "basic"
WIDTH, HEIGHT = 1440, 900  # a laptop-to-desktop width; full-page shots


@contextlib.asynccontextmanager
async def world(args: argparse.Namespace) -> AsyncIterator[tuple[str, dict[str, list[str]]]]:
    """(gateway URL, {screenshot name: [src, dst, port, protocol]})."""
    if args.snapshot is None and os.geteuid() == 0:
        async with lab_stack(f"shot{secrets.token_hex(2)}") as (lab, stack):
            yield stack.url, {name: [lab.source_address(c.src), c.dst, str(c.port), c.protocol]
                              for name, c in zip(("healthy", "broken"), CASES, strict=True)}
        return
    snapshot = args.snapshot or (SHOP if SHOP.exists() else BASIC)
    async with snapshot_stack(snapshot) as stack:
        yield stack.url, {"healthy": args.healthy.split(","), "broken": args.broken.split(",")}


async def shoot(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    async with world(args) as (url, cases), chromium() as browser:
        page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, (src, dst, port, protocol) in cases.items():
            await page.goto(url)
            await page.fill("#src", src)
            await page.fill("#dst", dst)
            await page.fill("#port", port)
            await page.select_option("#protocol", protocol)
            await page.click("#submit")
            await page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            if not await page.locator(".hop-btn.s-error, .hop-btn.s-warning").count():
                service = page.locator(".hop-btn", has_text="service")  # healthy: show its DNAT step
                if await service.count():
                    await service.first.click()
            await page.evaluate("window.scrollTo(0, 0)")  # the sticky history stays at the top
            await page.wait_for_timeout(400)  # graph animation settles
            verdict = (await page.text_content("#verdict-word") or "").strip()
            path = args.out / f"{name}.png"
            await page.screenshot(path=str(path), full_page=True)
            print(f"{path}: {src} → {dst}:{port}/{protocol}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, help="diagnose this snapshot instead of a lab "
                        "(default without root: examples/snapshots/shop, else the topology test fixture)")
    parser.add_argument("--healthy", default="10.244.1.20,10.96.0.50,80,tcp")
    parser.add_argument("--broken", default="10.244.1.20,10.244.2.40,443,tcp")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    asyncio.run(shoot(parser.parse_args()))


if __name__ == "__main__":
    main()
