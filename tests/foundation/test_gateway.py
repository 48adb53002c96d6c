"""The gateway's HTTP contract: input validation, SSE, pagination, unknown ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.stack import EmbeddedStack
from shared.natsserver import NatsServer
from shared.schemas import Diagnosis
from tests.foundation.helpers import REQUEST, TIMED_STAGES, get_json, post, sse_events, stack_on


@pytest.fixture(scope="module")
async def api(nats_url: str) -> AsyncIterator[str]:
    async with stack_on(nats_url) as st:
        yield st.url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def with_(**changes: Any) -> bytes:
    body = {**REQUEST, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


BAD_INPUTS = [
    # (case, raw body, status, text the message must contain)
    ("src not an IP", with_(src="pod-a"), 422, "src"),
    ("dst not an IP", with_(dst="10.0.0.300"), 422, "dst"),
    ("port 0", with_(port=0), 422, "port"),
    ("port 65536", with_(port=65536), 422, "port"),
    ("port not a number", with_(port="http"), 422, "port"),
    ("port as a string", with_(port="80"), 422, "port"),  # no silent coercion at the edge
    ("IP as a number", with_(dst=167772161), 422, "dst"),
    ("option of the wrong type", with_(options={"check_reply": 1}), 422, "options.check_reply"),
    ("unknown protocol", with_(protocol="sctp"), 422, "protocol"),
    ("port true", with_(port=True), 422, "port"),
    ("IPv6 (not modelled yet)", with_(src="fd00::5", dst="fd00:96::a"), 422, "src: IPv6 is not supported"),
    ("IPv4 src, IPv6 dst", with_(dst="fd00::2"), 422, "dst: IPv6 is not supported yet"),
    ("IPv4-mapped dst", with_(dst="::ffff:10.96.0.10"), 422, "dst: ::ffff:10.96.0.10 is an IPv4-mapped"),
    ("src 0.0.0.0", with_(src="0.0.0.0"), 422, "src: 0.0.0.0 means 'any address'"),
    ("broadcast dst", with_(dst="255.255.255.255"), 422, "dst: 255.255.255.255 is the limited broadcast"),
    ("multicast dst", with_(dst="224.0.0.251"), 422, "dst: 224.0.0.251 is multicast"),
    ("missing field", with_(port=...), 422, "port: Field required"),
    ("extra field", with_(srcport=1234), 422, "srcport: unknown field"),
    ("bad option", with_(options={"collect_timeout_s": -1}), 422, "options.collect_timeout_s"),
    ("not JSON", b"src=10.0.0.1&dst=10.0.0.2", 400, "not valid JSON"),
    ("JSON array", json.dumps([REQUEST]).encode(), 400, "JSON object"),
    ("empty body", b"", 400, "JSON object"),
    ("2 MB body", json.dumps({**REQUEST, "pad": "x" * (2 << 20)}).encode(), 413, "too large"),
]


@pytest.mark.parametrize(("raw", "status", "needle"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
async def test_bad_inputs_are_refused_naming_the_field(
    api: str, http: aiohttp.ClientSession, raw: bytes, status: int, needle: str
) -> None:
    async with http.post(f"{api}/api/v1/diagnoses", data=raw, headers={"Content-Type": "application/json"}) as resp:
        body = await resp.json()
        assert resp.status == status, body
    assert needle in body["error"], body
    if status == 422:
        field = needle.split(":")[0]
        assert any(f["field"] == field for f in body["fields"]), body


async def test_integral_json_number_is_a_port(api: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{api}/api/v1/diagnoses", data=with_(port=65535.0),
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 202, await resp.text()
        doc = await get_json(http, f"{api}{resp.headers['Location']}")
    assert doc["request"]["port"] == 65535


@pytest.mark.parametrize("path", ["/api/v1/diagnoses/0123456789abcdef0123456789abcdef",
                                  "/api/v1/diagnoses/0123456789abcdef0123456789abcdef/events",
                                  "/api/v1/diagnoses/no-such-id", "/api/v1/nothing"])
async def test_unknown_ids_and_routes_are_404(api: str, http: aiohttp.ClientSession, path: str) -> None:
    body = await get_json(http, f"{api}{path}", status=404)
    assert body["error"]


@pytest.mark.parametrize("limit", ["0", "201", "-3", "ten", ""])
async def test_bad_limit_is_422(api: str, http: aiohttp.ClientSession, limit: str) -> None:
    body = await get_json(http, f"{api}/api/v1/diagnoses?limit={limit}", status=422)
    assert body["error"].startswith("limit")
    assert body["fields"][0]["field"] == "limit"


async def test_sse_streams_progress_then_the_result(api: str, http: aiohttp.ClientSession) -> None:
    diagnosis_id = await post(http, api)
    live = await sse_events(http, api, diagnosis_id)
    names = [n for n, _ in live]
    assert names[-1] == "result" and names.count("result") == 1
    assert set(names[:-1]) == {"progress"}
    progress = [e for n, e in live if n == "progress"]
    assert all(e["id"] == diagnosis_id for e in progress)
    done_order = [e["stage"] for e in progress if e["state"] == "done"]
    assert done_order == list(TIMED_STAGES)  # every stage reports, in pipeline order (then the sink's result)
    assert progress[-1]["state"] == "result"
    result = live[-1][1]
    assert result["id"] == diagnosis_id and result["status"] == "completed"
    assert result["result"]["verdict"]

    late = await sse_events(http, api, diagnosis_id)  # a client connecting after completion
    assert late[-1] == ("result", await get_json(http, f"{api}/api/v1/diagnoses/{diagnosis_id}"))
    assert [e for n, e in late if n == "progress"] == progress  # the history is replayed too


async def test_pagination_is_newest_first(fresh_nats: NatsServer, http: aiohttp.ClientSession) -> None:
    st: EmbeddedStack
    async with stack_on(fresh_nats.url) as st:
        created = [await post(http, st.url, {**REQUEST, "port": 1000 + i}) for i in range(7)]
        pages, after = [], None
        while True:
            query = "limit=3" + (f"&after={after}" if after else "")
            page = await get_json(http, f"{st.url}/api/v1/diagnoses?{query}")
            pages.append([item["id"] for item in page["items"]])
            after = page["next"]
            if after is None:
                break
        first = await get_json(http, f"{st.url}/api/v1/diagnoses")
    assert pages == [created[6:3:-1], created[3:0:-1], created[0:1]]
    assert [i["id"] for i in first["items"]] == created[::-1]
    assert [i["request"]["port"] for i in first["items"]] == list(range(1006, 999, -1))
    assert "paths" not in (first["items"][0].get("result") or {})  # listings stay small


async def test_results_watch_delivers_each_completed_diagnosis(api: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api}/api/v1/events") as watch:
        assert watch.status == 200
        assert watch.headers["Content-Type"].startswith("text/event-stream")
        diagnosis_id = await post(http, api)
        await sse_events(http, api, diagnosis_id)
        seen: list[Diagnosis] = []
        while diagnosis_id not in [d.id for d in seen]:
            line = await asyncio.wait_for(watch.content.readline(), 5)
            if line.startswith(b"data: "):
                seen.append(Diagnosis.model_validate_json(line[len(b"data: "):]))
    assert all(d.status != "queued" for d in seen)  # only finished diagnoses are announced
    assert seen[-1].status == "completed"
