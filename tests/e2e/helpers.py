"""Shared pieces of the end-to-end tests: every case of a snapshot diagnosed through one embedded stack,
and the readings of a diagnosis several test modules assert on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from services.render import render_diagnosis
from services.stack import EmbeddedStack
from shared.config import Settings
from shared.schemas import Diagnosis
from tests.e2e.cases import Case
from tests.foundation.helpers import run_to_end


async def diagnose_all(snapshot: Path, cases: dict[str, Case]) -> dict[str, Diagnosis]:
    """One embedded stack per snapshot; every case submitted at once through the gateway."""
    async with EmbeddedStack(Settings(snapshot=snapshot)) as stack, aiohttp.ClientSession() as http:
        docs = await asyncio.gather(*(
            run_to_end(http, stack.url, {"src": s, "dst": d, "port": p, "protocol": proto}, timeout=30)
            for s, d, p, proto in cases.values()))
    return {name: Diagnosis.model_validate(doc) for name, doc in zip(cases, docs, strict=True)}


def finals(d: Diagnosis) -> list[tuple[str, str | None]]:
    assert d.result is not None
    return [(p.final.value, p.cause) for p in d.result.paths if p.direction == "forward"]


def text_head(d: Diagnosis, n: int = 3) -> list[str]:
    return render_diagnosis(d).splitlines()[:n]


def first_failing(d: Diagnosis, verdict: str, hop_name: str, kind: str, path_id: str = "p0") -> None:
    """The text answer starts with the verdict, then the first failing hop and why."""
    head = text_head(d, 4)
    assert head[1].startswith(f"verdict: {verdict} — "), head
    assert head[2] == f"first failing hop: {hop_name} ({kind}) on path {path_id}", head
    # why: the verdict's summary, or a "because" line when the summary does not already say it (said once)
    assert head[3].startswith("  because: ") or head[3].startswith("  fix:     "), head
