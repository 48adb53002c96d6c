"""Screenshots of the web UI for the docs: a healthy and a broken diagnosis, run through the
real embedded stack on a snapshot and shown in real headless Chromium.

    .venv/bin/python tests/ui/screenshots.py [--snapshot DIR] [--healthy SRC,DST,PORT,PROTO]
                                             [--broken SRC,DST,PORT,PROTO] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.stack import EmbeddedStack  # noqa: E402
from shared.config import Settings  # noqa: E402
from tests.ui.browser import chromium  # noqa: E402

SHOP = ROOT / "examples" / "snapshots" / "shop"
BASIC = ROOT / "tests" / "topology" / "fixtures" / "basic"
WIDTH, HEIGHT = 1440, 900


async def shoot(snapshot: Path, cases: dict[str, list[str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    async with EmbeddedStack(Settings(snapshot=snapshot)) as stack, chromium() as browser:
        page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, (src, dst, port, protocol) in cases.items():
            await page.goto(stack.url)
            await page.fill("#src", src)
            await page.fill("#dst", dst)
            await page.fill("#port", port)
            await page.select_option("#protocol", protocol)
            await page.click("#submit")
            await page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            await page.wait_for_timeout(400)  # graph animation settles
            verdict = (await page.text_content("#verdict-word") or "").strip()
            path = out / f"{name}.png"
            await page.screenshot(path=str(path), full_page=True)
            print(f"{path}: {src} → {dst}:{port}/{protocol}: {verdict}")


def main() -> None:
    default = SHOP if SHOP.exists() else BASIC
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, default=default)
    parser.add_argument("--healthy", default="10.244.1.20,10.96.0.50,80,tcp")
    parser.add_argument("--broken", default="10.244.1.20,10.244.2.40,443,tcp")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    cases = {"healthy": args.healthy.split(","), "broken": args.broken.split(",")}
    asyncio.run(shoot(args.snapshot, cases, args.out))


if __name__ == "__main__":
    main()
