"""Shared pieces of the UI tests: reading the API the page is checked against, and filling the form."""

from __future__ import annotations

from typing import Any

import aiohttp
from playwright.async_api import Page

from services.stack import EmbeddedStack

RESULT_TIMEOUT_MS = 15_000


async def api_get(stack: EmbeddedStack, path: str) -> Any:  # the JSON body: an object or a list
    async with aiohttp.ClientSession() as s, s.get(stack.url + path) as resp:
        return await resp.json()


async def api_post(stack: EmbeddedStack, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(stack.url + "/api/v1/diagnoses", json=body) as resp:
        return resp.status, await resp.json()


async def submit(page: Page, src: str, dst: str, port: str, protocol: str) -> None:
    await page.fill("#src", src)
    await page.fill("#dst", dst)
    await page.fill("#port", port)
    await page.select_option("#protocol", protocol)
    await page.click("#submit")
