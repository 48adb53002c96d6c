"""Security: gateway bearer tokens (and what stays open), rate limit, body size; NATS credentials
and subject permissions enforced by a real nats-server (an agent may only answer its own collect
subject — publishing results is refused); results expire after the configured TTL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from aiohttp import web

from services.gateway.app import create_app
from services.natsauth.natsperms import agent_permissions
from shared.bus import RESULTS_BUCKET, STREAM, SUBJECT_COMPLETED, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from tests.deploy.chart import chart_nats_server
from tests.deploy.confinement import assert_confined, enumerate_grants, intended_agent_grant

TOKEN = "s3cret-token-0123456789"
REQUEST = {"src": "10.244.1.5", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}


async def serve(settings: Settings) -> AsyncIterator[str]:
    bus = await Bus.connect(name="gateway", settings=settings)
    runner = web.AppRunner(create_app(bus), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await bus.close()


@pytest.fixture
async def gateway(nats_url: str, tmp_path: Path) -> AsyncIterator[str]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\nother-token-abcdefghij\n")
    settings = Settings(nats_url=nats_url, auth_tokens_file=tokens, rate_limit_rps=5, rate_limit_burst=8)
    async for url in serve(settings):
        yield url


async def test_api_refuses_a_request_without_a_token(gateway: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gateway}/api/v1/diagnoses", json=REQUEST) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in (await resp.json())["error"]
        async with s.get(f"{gateway}/api/v1/diagnoses") as resp:
            assert resp.status == 401
        async with s.get(f"{gateway}/api/v1/diagnoses", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "invalid token"
        async with s.get(f"{gateway}/api/v1/diagnoses", headers={"Authorization": f"Basic {TOKEN}"}) as resp:
            assert resp.status == 401


async def test_a_valid_token_is_accepted_and_health_stays_open(gateway: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gateway}/api/v1/diagnoses", json=REQUEST,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 202, await resp.text()
        for path in ("/healthz", "/readyz", "/metrics"):
            async with s.get(f"{gateway}{path}") as resp:
                assert resp.status == 200, path


async def test_the_ui_gets_its_token_as_a_strict_cookie(gateway: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: an IP host
        async with s.get(f"{gateway}/?token={TOKEN}", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/"
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with s.get(f"{gateway}/api/v1/diagnoses") as resp:  # the session cookie authenticates
            assert resp.status == 200
    async with aiohttp.ClientSession() as s, s.get(f"{gateway}/?token=nope", allow_redirects=False) as resp:
        assert resp.status == 401


async def test_rate_limit(nats_url: str) -> None:
    # 0.2 requests/s: a token refills only after 5 s, so however slow the machine the 9th request
    # finds the burst spent
    settings = Settings(nats_url=nats_url, auth_tokens=TOKEN, rate_limit_rps=0.2, rate_limit_burst=8)
    async for url in serve(settings):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            statuses = []
            for _ in range(12):  # burst 8
                async with s.get(f"{url}/api/v1/diagnoses?limit=1") as resp:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        assert int(resp.headers["Retry-After"]) >= 1
            assert statuses[:8] == [200] * 8 and 429 in statuses[8:]
            async with s.get(f"{url}/healthz") as resp:  # probes are never limited
                assert resp.status == 200


async def test_body_size(gateway: str) -> None:
    body = b"{" + b" " * 70_000 + b"}"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(f"{gateway}/api/v1/diagnoses", data=body,
                                                    headers=headers) as resp:
        assert resp.status == 413


async def test_no_tokens_configured_means_open_local_stack(nats_url: str) -> None:
    async for url in serve(Settings(nats_url=nats_url)):
        async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/diagnoses") as resp:
            assert resp.status == 200


# ------------------------------------------------------------------ NATS identities


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[NatsServer]:
    config = {"authorization": {"users": [
        {"user": "netdiag", "password": "stage-pass"},
        {"user": "agent-node-a", "password": "agent-pass", "permissions": agent_permissions("node-a")},
    ]}}
    path = tmp_path / "nats.conf"
    path.write_text(json.dumps(config))  # nats-server reads JSON as its configuration format
    server = NatsServer(tmp_path / "nats", extra_args=["-c", str(path)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_nats_refuses_a_client_without_credentials(secured_nats: NatsServer) -> None:
    with pytest.raises((nats.errors.Error, TimeoutError)):
        nc = await asyncio.wait_for(nats.connect(secured_nats.url, max_reconnect_attempts=1,
                                                 allow_reconnect=False), 5)
        await nc.close()


async def test_an_agent_may_answer_its_own_collect_subject_and_nothing_else(secured_nats: NatsServer) -> None:
    stage_settings = Settings(nats_url=secured_nats.url, nats_user="netdiag", nats_password="stage-pass")
    agent_settings = Settings(nats_url=secured_nats.url, nats_user="agent-node-a", nats_password="agent-pass")
    stages = await Bus.connect(name="collector", settings=stage_settings)  # creates the stream and buckets
    agent_bus = await Bus.connect_agent("node-a", agent_settings)
    try:  # no forged result, no overwritten result, no listening to another node's requests
        await assert_confined(stages, agent_bus, secured_nats.url, user="agent-node-a", password="agent-pass",
                              forged=(SUBJECT_COMPLETED, f"$KV.{RESULTS_BUCKET}.0123"))
    finally:
        await agent_bus.close()
        await stages.close()


async def test_an_agent_identity_can_do_exactly_its_grant_and_nothing_more(secured_nats: NatsServer) -> None:
    """Everything an agent login can do, enumerated over the product's whole subject space against the
    real server, equals the intended grant: a permission too wide (another node's blobs, a stream purge,
    reading the results) fails this as surely as one too narrow."""
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=secured_nats.url, nats_user="netdiag", nats_password="stage-pass"))
    try:
        for node in ("node-a", "node-b"):  # the buckets exist, so an allowed call would really succeed
            await stages.ensure_node_bucket(node)
        can_publish, can_subscribe = await enumerate_grants(secured_nats.url, user="agent-node-a",
                                                            password="agent-pass")
    finally:
        await stages.close()
    assert (can_publish, can_subscribe) == intended_agent_grant("node-a")


async def test_results_expire_after_the_configured_ttl(fresh_nats: NatsServer) -> None:
    bus = await Bus.connect(name="ttl", settings=Settings(nats_url=fresh_nats.url, result_ttl_s=1.0))
    try:
        assert (await bus.js.stream_info(STREAM)).config.max_age == 1.0
        await bus.kv.put("0" * 32, b"{}")
        await asyncio.sleep(2.0)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await bus.kv.get("0" * 32)
    finally:
        await bus.close()


# ------------------------------------------------------------------ the Helm chart's own NATS


@pytest.fixture
def chart_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server started from the chart's rendered nats.conf (agentAuth password)."""
    with chart_nats_server({"nats": {"replicas": 1}}, tmp_path,
                           {"NETDIAG_PASSWORD": "stage-pass", "AGENT_PASSWORD": "agent-pass",
                            "SIMULATOR_PASSWORD": "sim-pass", "GATEWAY_PASSWORD": "gw-pass"}) as url:
        yield url


async def test_the_charts_nats_config_lets_agents_collect_and_nothing_more(chart_nats: str) -> None:
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=chart_nats, nats_user="netdiag", nats_password="stage-pass"))
    agent_bus = await Bus.connect_agent("node-a", Settings(
        nats_url=chart_nats, nats_user="agent", nats_password="agent-pass"))
    try:  # the shared `agent` identity (agentAuth: password) may listen to any node, never publish results
        await assert_confined(stages, agent_bus, chart_nats, other=None, user="agent", password="agent-pass")
    finally:
        await agent_bus.close()
        await stages.close()


async def test_the_charts_shared_agent_identity_can_do_exactly_its_grant(chart_nats: str) -> None:
    """agentAuth=password: one identity for every agent, so any node's collect subject and blob bucket
    (nats.agentAuth=callout narrows that to its own node) — but nothing of the product's own."""
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=chart_nats, nats_user="netdiag", nats_password="stage-pass"))
    try:
        for node in ("node-a", "node-b"):
            await stages.ensure_node_bucket(node)
        can_publish, can_subscribe = await enumerate_grants(chart_nats, user="agent", password="agent-pass")
    finally:
        await stages.close()
    own_publish, own_subscribe = intended_agent_grant("node-a")
    other_publish, other_subscribe = intended_agent_grant("node-b")
    assert can_publish == own_publish | other_publish
    assert can_subscribe == own_subscribe | other_subscribe | {"netdiag.node.*.collect", "_INBOX_AGENT.>"}


@pytest.mark.parametrize(("user", "password", "completed", "results"), [
    ("netdiag", "stage-pass", False, False), ("simulator", "sim-pass", True, False),
    ("gateway", "gw-pass", False, True),
])
async def test_the_charts_service_identities_split_final_events_and_results(
        chart_nats: str, user: str, password: str, completed: bool, results: bool) -> None:
    """Only the simulator may publish `completed`; only the gateway may write, purge or delete results."""
    can_publish, _ = await enumerate_grants(chart_nats, user=user, password=password, allow_unrestricted=True)
    results_api = {s for s in can_publish if s.startswith(("$KV.netdiag-results.", "$JS.API.STREAM.PURGE.KV_netdiag-r",
                                                          "$JS.API.STREAM.DELETE.KV_netdiag-r",
                                                          "$JS.API.STREAM.MSG.DELETE.KV_netdiag-r"))}
    assert (SUBJECT_COMPLETED in can_publish) is completed
    assert bool(results_api) is results, results_api
    assert "$SYS.REQ.USER.AUTH" not in can_publish
