"""The gateway accepts Kubernetes tokens through a TokenReview: a real gateway (with its bus on a
real nats-server) asks the lab's Kubernetes API, through a kubeconfig and the official client, as
it would ask a cluster's API server. Static tokens keep working; answers are cached; the API down is
a 503, not a 401; a token never reaches the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lab.kubeapi import LabKubeAPI
from services.gateway.auth import TokenReviewer
from shared.config import Settings
from shared.kube import api_client
from tests.deploy.helpers import TOKEN, serve

REVIEWS = "POST /apis/authentication.k8s.io/v1/tokenreviews"


@dataclass
class Stack:
    url: str
    kube: LabKubeAPI

    async def get(self, token: str | None, path: str = "/api/v1/codes") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}{path}", headers=headers) as resp:
            return resp.status, await resp.json()

    @property
    def reviews(self) -> int:
        return self.kube.requests[REVIEWS]


async def stack(nats_url: str, kube: LabKubeAPI, tmp_path: Path, **auth: Any) -> AsyncIterator[Stack]:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    settings = Settings(nats_url=nats_url, auth_tokens=TOKEN, auth_tokenreview=True, kubeconfig=kubeconfig, **auth)
    async for url in serve(settings):
        yield Stack(url, kube)


@pytest.fixture
async def gateway(nats_url: str, kube: LabKubeAPI, tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack(nats_url, kube, tmp_path):
        yield s


async def test_a_service_account_token_is_accepted_and_reviewed_once(gateway: Stack) -> None:
    token = gateway.kube.mint_token("ops", "netdiag-client")
    status, codes = await gateway.get(token)
    assert status == 200 and codes, codes
    assert (await gateway.get(token, "/api/v1/diagnoses"))[0] == 200  # a bus-backed endpoint too
    assert gateway.reviews == 1  # the second request was answered from the cache


async def test_unknown_missing_and_static_tokens(gateway: Stack) -> None:
    status, body = await gateway.get("not-a-kubernetes-token")
    assert status == 401 and body["error"] == "invalid token"
    assert (await gateway.get("not-a-kubernetes-token"))[0] == 401
    assert gateway.reviews == 1  # refusals are cached too
    status, body = await gateway.get(None)
    assert status == 401 and "Authorization: Bearer" in body["error"]
    assert (await gateway.get(TOKEN))[0] == 200
    assert gateway.reviews == 1  # neither a missing nor a static token is sent for review
    gateway.kube.revoke_token(token := gateway.kube.mint_token("ops", "gone"))
    assert (await gateway.get(token))[0] == 401


async def test_the_ui_cookie_flow_takes_a_kubernetes_token(gateway: Stack) -> None:
    token = gateway.kube.mint_token("ops", "ui-user")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{gateway.url}/?token={token}", allow_redirects=False) as resp:
            assert resp.status == 302 and "HttpOnly" in resp.headers["Set-Cookie"]
        async with s.get(f"{gateway.url}/api/v1/diagnoses") as resp:
            assert resp.status == 200
        async with s.get(f"{gateway.url}/healthz") as resp:  # open paths stay open
            assert resp.status == 200
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.url}/?token=bogus", allow_redirects=False) as resp:
        assert resp.status == 401


async def test_allowed_groups_users_and_audiences(nats_url: str, kube: LabKubeAPI, tmp_path: Path) -> None:
    async for gw in stack(nats_url, kube, tmp_path, auth_allowed_groups="system:serviceaccounts:ops",
                          auth_allowed_users="system:serviceaccount:dev:alice"):
        assert (await gw.get(kube.mint_token("ops", "anyone")))[0] == 200
        assert (await gw.get(kube.mint_token("dev", "alice")))[0] == 200
        assert (await gw.get(kube.mint_token("dev", "bob")))[0] == 401  # authenticated, but not allowed
        assert (await gw.get(TOKEN))[0] == 200  # the restriction is on Kubernetes users only
    async for gw in stack(nats_url, kube, tmp_path, auth_audiences="netdiag"):
        assert (await gw.get(kube.mint_token("ops", "a", audiences=("netdiag",))))[0] == 200
        assert (await gw.get(kube.mint_token("ops", "b")))[0] == 401  # a token for the API server only
        # an authenticator that ignores audiences says "authenticated" without echoing them: not proof
        kube.echo_audiences = False
        assert (await gw.get(kube.mint_token("ops", "c", audiences=("netdiag",))))[0] == 401


async def test_the_kubernetes_api_down_is_a_503(gateway: Stack) -> None:
    known = gateway.kube.mint_token("ops", "known")
    assert (await gateway.get(known))[0] == 200
    fresh = gateway.kube.mint_token("ops", "fresh")
    gateway.kube.stop_thread()
    status, body = await gateway.get(fresh)
    assert status == 503 and "Kubernetes API is unreachable" in body["error"], body
    assert (await gateway.get(known))[0] == 200  # still cached
    assert (await gateway.get(TOKEN))[0] == 200  # static tokens need no API


async def test_a_forbidden_review_is_a_503_that_says_so(gateway: Stack) -> None:
    gateway.kube.forbid("/apis/authentication.k8s.io")  # the gateway's ServiceAccount lacks the RBAC
    status, body = await gateway.get(gateway.kube.mint_token("ops", "x"))
    assert status == 503 and "refused the TokenReview (403 Forbidden)" in body["error"], body


async def test_tokens_never_reach_the_logs(gateway: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the kubernetes client's and urllib3's included
    tokens = [gateway.kube.mint_token("ops", "logged"), "unknown-token-0123456789"]
    for token in tokens:
        await gateway.get(token)
    gateway.kube.forbid("/apis")
    tokens.append(gateway.kube.mint_token("ops", "refused"))
    assert (await gateway.get(tokens[-1]))[0] == 503
    assert "system:serviceaccount:ops:logged authenticated" in caplog.text  # the logs say who, not with what
    for token in tokens:
        assert token not in caplog.text


async def test_concurrent_requests_share_a_review_and_floods_keep_accepted_tokens(kube: LabKubeAPI,
                                                                                 tmp_path: Path) -> None:
    reviewer = TokenReviewer(api_client(kube.write_kubeconfig(tmp_path / "kubeconfig")), max_entries=3)
    token = kube.mint_token("ops", "busy")
    assert await asyncio.gather(*(reviewer(token) for _ in range(8))) == [True] * 8
    assert kube.requests[REVIEWS] == 1  # eight concurrent requests, one review
    for n in range(10):  # made-up tokens fill the cache with refusals
        assert not await reviewer(f"made-up-{n}")
    assert await reviewer(token)
    assert kube.requests[REVIEWS] == 11  # the accepted token was still cached
