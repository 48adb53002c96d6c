"""Gateway hardening: security headers (a CSP the UI passes: tests/ui checks it in Chromium), no
framework version in `Server`, a cap on open event streams per client, the trusted-proxy rule for
who a client is, Retry-After on 503, fast answers during a NATS outage, and a clear start-up error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from ipaddress import ip_network

import aiohttp
import pytest

from services.gateway.app import STREAMS_PER_CLIENT
from services.gateway.auth import client_address
from shared.config import Settings
from shared.natsserver import NatsServer
from tests.foundation.helpers import run_to_end, stack_on


async def test_every_answer_carries_the_security_headers_and_no_version(nats_url: str) -> None:
    async with stack_on(nats_url, stages=()) as st, aiohttp.ClientSession() as http:
        for path in ("/", "/static/app.js", "/api/v1/codes", "/api/v1/diagnoses/nope", "/healthz", "/no/such/route"):
            async with http.get(st.url + path) as resp:
                h = resp.headers
                assert h["X-Content-Type-Options"] == "nosniff", path
                assert h["X-Frame-Options"] == "DENY", path
                assert "default-src 'self'" in h["Content-Security-Policy"], path
                assert "frame-ancestors 'none'" in h["Content-Security-Policy"], path
                assert h["Server"] == "netdiag", (path, h["Server"])


async def test_open_event_streams_are_capped_per_client(nats_url: str) -> None:
    async with stack_on(nats_url, stages=()) as st, aiohttp.ClientSession() as http:
        streams = [await http.get(f"{st.url}/api/v1/events") for _ in range(STREAMS_PER_CLIENT)]
        try:
            assert all(s.status == 200 for s in streams)
            async with http.get(f"{st.url}/api/v1/events") as refused:
                assert refused.status == 429 and refused.headers["Retry-After"]
                assert "at most" in (await refused.json())["error"]
            streams.pop().close()
            for _ in range(50):  # the server notices the closed stream at its next write
                async with http.get(f"{st.url}/api/v1/events") as again:
                    if again.status == 200:
                        break
                await asyncio.sleep(0.3)
            assert again.status == 200
        finally:
            for s in streams:
                s.close()


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = [ip_network("10.0.0.0/8")]
    assert client_address("203.0.113.9", "1.2.3.4", proxies) == "203.0.113.9"  # not a proxy: header ignored
    assert client_address("10.1.1.1", "198.51.100.7", proxies) == "198.51.100.7"
    # the client can prepend whatever it likes; the right-most address a trusted proxy saw decides
    assert client_address("10.1.1.1", "1.2.3.4, 198.51.100.7, 10.2.2.2", proxies) == "198.51.100.7"
    assert client_address("10.1.1.1", None, proxies) == "10.1.1.1"
    assert client_address("10.1.1.1", "1.2.3.4", []) == "10.1.1.1"  # no proxies configured


async def test_rate_limit_buckets_follow_the_trusted_proxy_rule(nats_url: str) -> None:
    settings = Settings(rate_limit_rps=0.1, rate_limit_burst=2, trusted_proxies=("127.0.0.1/32",))
    async with stack_on(nats_url, settings, stages=()) as st, aiohttp.ClientSession() as http:
        async def statuses(client: str) -> list[int]:
            out = []
            for _ in range(3):
                async with http.get(f"{st.url}/api/v1/codes", headers={"X-Forwarded-For": client}) as r:
                    out.append(r.status)
            return out

        assert await statuses("198.51.100.1") == [200, 200, 429]
        assert await statuses("198.51.100.2") == [200, 200, 429]  # another user behind the same ingress


async def test_a_nats_outage_is_answered_at_once(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        done = await run_to_end(http, st.url)
        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.sleep(0.3)
        timings = {}
        for path, status in ((f"/api/v1/diagnoses/{done['id']}", 200), (f"/api/v1/diagnoses/{'0' * 32}", 503),
                             ("/api/v1/diagnoses", 503), ("/readyz", 503)):
            started = time.monotonic()
            async with http.get(st.url + path) as resp:
                timings[path] = time.monotonic() - started
                assert resp.status == status, (path, resp.status)
                if status == 503:
                    assert int(resp.headers["Retry-After"]) >= 1, path
                else:
                    assert (await resp.json())["result"] == done["result"]  # a finished one, from memory
        async with http.post(f"{st.url}/api/v1/diagnoses", json={"src": "10.0.0.1", "dst": "10.0.0.2", "port": 1,
                                                                  "protocol": "tcp"}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
        await asyncio.to_thread(fresh_nats.start)
    assert max(timings.values()) < 1.5, timings


@pytest.mark.parametrize("service", ["gateway", "simulator"])
def test_unreachable_nats_at_start_is_a_clear_error(service: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"services.{service}", "--nats", "nats://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"netdiag {service}: cannot reach NATS at nats://127.0.0.1:1: "), last
    reason = last.split("nats://127.0.0.1:1: ", 1)[1].split(". Check", 1)[0]
    assert reason.strip(), last
    assert "Traceback" not in proc.stderr
