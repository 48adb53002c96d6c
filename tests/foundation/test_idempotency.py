"""Idempotency-Key: a client that retries a POST (after a 503 or a lost 202) gets the first
attempt's diagnosis, and the pipeline runs it once."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.foundation.helpers import REQUEST, completed_events, get_json, sse_events, stack_on


async def _post(http: aiohttp.ClientSession, base: str, key: str, body: dict[str, object] | None = None
                ) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/api/v1/diagnoses", json=body or REQUEST, headers={"Idempotency-Key": key}) as r:
        return r.status, await r.json()


async def test_a_retried_post_names_the_first_diagnosis_and_runs_once(nats_url: str) -> None:
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        status, first = await _post(http, st.url, "retry-1")
        assert status == 202
        again_status, again = await _post(http, st.url, "retry-1")
        assert again_status == 202 and again["id"] == first["id"]
        events = await sse_events(http, st.url, str(first["id"]))
        assert events[-1][0] == "result"
        # after completion a retry still names it, and says it is done instead of queuing it again
        done_status, done = await _post(http, st.url, "retry-1")
        assert done_status == 202 and done["id"] == first["id"] and done["status"] == "completed"
        listing = await get_json(http, f"{st.url}/api/v1/diagnoses?limit=200")
    assert len(await completed_events(nats_url, str(first["id"]))) == 1
    assert all(len(str(item["id"])) == 32 for item in listing["items"])  # key bindings never listed


async def test_a_key_reused_for_another_request_is_refused(nats_url: str) -> None:
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        assert (await _post(http, st.url, "reuse-1"))[0] == 202
        status, doc = await _post(http, st.url, "reuse-1", {**REQUEST, "port": 54})
    assert status == 409 and "different request" in str(doc["error"])


async def test_a_malformed_key_is_refused_with_the_rule(nats_url: str) -> None:
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        status, doc = await _post(http, st.url, "no spaces allowed")
    assert status == 422 and doc["fields"][0]["field"] == "Idempotency-Key"
