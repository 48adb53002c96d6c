"""NATS auth callout for node agents (`netdiag nats-auth`), all real: a nats-server started from the
chart's rendered nats.conf (nats.agentAuth=callout), the auth callout service reviewing tokens against
the lab's Kubernetes API (TokenReview through the official client), and the real NodeAgent.

An agent presenting a pod-bound ServiceAccount token for node-a answers node-a's collect requests and
nothing else: another node's subject and the diagnosis subjects are refused by the server. A token
without a node, an unknown token, another ServiceAccount's token, a token for another audience, no
token at all, and every token while nats-auth is down, are refused at connect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nkeys
import pytest

from lab.kubeapi import LabKubeAPI
from services.collector.agent import NodeAgent, request_dump
from services.natsauth import natsjwt
from services.natsauth.handler import AgentAuthorizer
from services.natsauth.service import serve
from shared.bus import Bus, agent_inbox_prefix, node_collect_subject
from shared.config import Settings
from shared.kube import api_client
from shared.live import node_drops_subject, node_probe_subject
from tests.deploy.chart import NAMESPACE, RELEASE, chart_nats_server
from tests.deploy.confinement import assert_confined, enumerate_grants, intended_agent_grant

AGENT_SA = f"{RELEASE}-netdiag-agent"  # the chart's agent ServiceAccount
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:{AGENT_SA}"
STAGE_PASS, AUTH_PASS = "stage-pass", "nats-auth-pass"


@dataclass
class Callout:
    url: str
    kube: LabKubeAPI
    tmp: Path
    stop: asyncio.Event
    task: asyncio.Task[None]

    def agent_token(self, node: str | None = "node-a", *, name: str = AGENT_SA,
                    audiences: tuple[str, ...] = ("nats",)) -> str:
        return self.kube.mint_token(NAMESPACE, name, audiences, node=node, pod=f"{name}-x1" if node else None)

    def token_file(self, token: str) -> Path:
        path = self.tmp / "agent-token"
        path.write_text(token + "\n")
        return path

    async def stop_service(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def start_callout(kube: LabKubeAPI, tmp_path: Path, user_ttl_s: float = 60) -> AsyncIterator[Callout]:
    seed = natsjwt.new_seed()
    values = {"nats": {"replicas": 1, "agentAuth": "callout", "authCallout": {
        "issuerPublicKey": natsjwt.public_key(natsjwt.keypair(seed)), "issuerSeed": seed.decode()}}}
    (tmp_path / "issuer-seed").write_bytes(seed)
    env = {"NETDIAG_PASSWORD": STAGE_PASS, "NATS_AUTH_PASSWORD": AUTH_PASS, "SIMULATOR_PASSWORD": "sim-pass",
           "GATEWAY_PASSWORD": "gw-pass"}
    with chart_nats_server(values, tmp_path, env) as url:
        # the environment the chart gives the nats-auth Deployment (tests/deploy/test_helm.py checks it)
        settings = Settings(nats_url=url, nats_user="nats-auth", nats_password=AUTH_PASS,
                            kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"),
                            nats_auth_issuer_seed_file=tmp_path / "issuer-seed", nats_auth_agent_user=AGENT_USER,
                            nats_auth_audiences="nats", nats_auth_user_ttl_s=user_ttl_s)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, stop, ready))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield Callout(url, kube, tmp_path, stop, task)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


@pytest.fixture
async def callout(kube: LabKubeAPI, tmp_path: Path) -> AsyncIterator[Callout]:
    async with start_callout(kube, tmp_path) as c:
        yield c


async def refused(url: str, token: str | None) -> str:
    """The error a client presenting `token` gets at connect (fails the test if it gets in)."""
    try:
        nc = await asyncio.wait_for(nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5), 10)
    except (nats.errors.Error, TimeoutError) as exc:
        return str(exc)
    await nc.close()
    raise AssertionError("the client was admitted")


async def test_an_agent_answers_its_own_node_and_nothing_else(callout: Callout) -> None:
    token = callout.agent_token("node-a")
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=callout.url, nats_user="netdiag", nats_password=STAGE_PASS))
    # the agent as the chart runs it: its projected token from a file (NETDIAG_NATS_TOKEN_FILE)
    agent_bus = await Bus.connect_agent("node-a", Settings(
        nats_url=callout.url, nats_token_file=callout.token_file(token)))
    try:
        await assert_confined(stages, agent_bus, callout.url, token=token)
        await stages.ensure_node_bucket("node-b")
        # what the callout's identity can do, enumerated, is exactly the per-node grant
        assert await enumerate_grants(callout.url, token=token) == intended_agent_grant("node-a")
    finally:
        await agent_bus.close()
        await stages.close()


async def test_tokens_that_name_no_agent_node_are_refused_at_connect(
        callout: Callout, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    no_node = callout.agent_token(None)  # e.g. `kubectl create token`: not bound to a pod, so no node
    other_sa = callout.agent_token("node-a", name="web")
    api_audience = callout.kube.mint_token(NAMESPACE, AGENT_SA, node="node-a", pod="x")  # not for NATS
    revoked = callout.agent_token("node-a")
    callout.kube.revoke_token(revoked)
    for token in (no_node, "not-a-kubernetes-token", other_sa, api_audience, revoked, None):
        assert "authorization violation" in (await refused(callout.url, token)).lower(), token
    text = caplog.text
    assert "names no node" in text and "authentication.kubernetes.io/node-name" in text
    assert f"system:serviceaccount:{NAMESPACE}:web, not the agent ServiceAccount" in text
    assert "no token presented" in text and "not authenticated by the Kubernetes API" in text
    for token in (no_node, other_sa, api_audience, revoked, "not-a-kubernetes-token"):
        assert token not in text  # the logs name a hash, never the token


async def test_nothing_gets_in_while_nats_auth_is_down(callout: Callout) -> None:
    token = callout.agent_token("node-a")
    nc = await nats.connect(callout.url, token=token, allow_reconnect=False)  # admitted while it runs
    await nc.close()
    callout.kube.stop_thread()  # the Kubernetes API unreachable: the token cannot be checked
    assert "authorization violation" in (await refused(callout.url, token)).lower()
    await callout.stop_service()  # no auth callout at all: the server times the request out
    assert "authorization violation" in (await refused(callout.url, token)).lower()
    # the services' own identity does not depend on it
    stages = await nats.connect(callout.url, user="netdiag", password=STAGE_PASS, allow_reconnect=False)
    await stages.close()


async def test_a_reconnect_presents_the_rotated_token(callout: Callout) -> None:
    """Every (re)connect reads the token file anew (the kubelet rotates the projected token) and is
    reviewed anew: the old token revoked, the agent still gets back in, with the new one."""
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=callout.url, nats_user="netdiag", nats_password=STAGE_PASS))
    first = callout.agent_token("node-a")
    agent_bus = await Bus.connect_agent("node-a", Settings(
        nats_url=callout.url, nats_token_file=callout.token_file(first)))
    agent = NodeAgent(agent_bus, "node-a")
    try:
        await agent.start()
        assert (await request_dump(stages, "node-a", 5.0)).ok
        callout.token_file(callout.agent_token("node-a"))  # rotated...
        callout.kube.revoke_token(first)  # ...and the old one no longer valid
        await agent_bus.nc.force_reconnect()  # as after a network blip or a NATS restart
        for _ in range(100):
            if agent_bus.nc.stats["reconnects"] and agent_bus.connected:
                break
            await asyncio.sleep(0.05)
        assert agent_bus.nc.stats["reconnects"] == 1 and agent_bus.connected
        reply = await request_dump(stages, "node-a", 5.0)  # answered under the new identity
        assert reply.ok, reply.error
    finally:
        await agent.stop()
        await agent_bus.close()
        await stages.close()


async def test_an_identity_with_a_lifetime_is_ended_by_the_server(kube: LabKubeAPI, tmp_path: Path) -> None:
    """nats.authCallout.userTtlSeconds > 0: the server ends the identity when it expires (which nats-py
    takes as final — hence the chart's default 0, docs/security.md)."""
    async with start_callout(kube, tmp_path, user_ttl_s=1) as callout:
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(callout.url, token=callout.agent_token("node-a"), closed_cb=on_closed,
                                error_cb=on_error)
        try:
            await asyncio.wait_for(closed.wait(), 5)
            assert "expired" in str(nc.last_error).lower() or any("expired" in e.lower() for e in errors), \
                (nc.last_error, errors)
        finally:
            await nc.close()


async def test_requests_not_from_the_server_are_not_answered(kube: LabKubeAPI, tmp_path: Path) -> None:
    """The authorizer answers only well-formed, unexpired requests whose signature matches the key they name
    (integrity; origin is the server's: no client may publish to $SYS.REQ.USER.AUTH)."""
    seed = natsjwt.new_seed()
    authorizer = AgentAuthorizer(api_client(kube.write_kubeconfig(tmp_path / "kubeconfig")), seed,
                                 agent_user=AGENT_USER)
    server = natsjwt.keypair(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_SERVER))
    user_nkey = natsjwt.public_key(natsjwt.keypair(natsjwt.new_seed(nkeys.PREFIX_BYTE_USER)))

    def request(signer: nkeys.KeyPair, **extra: object) -> bytes:
        claims = {"sub": natsjwt.public_key(authorizer.issuer), "aud": "nats-authorization-request",
                  "exp": int(time.time()) + 2, **extra,
                  "nats": {"type": "authorization_request", "version": 2, "user_nkey": user_nkey,
                           "server_id": {"id": natsjwt.public_key(server)},
                           "connect_opts": {"auth_token": kube.mint_token(NAMESPACE, AGENT_SA, ("nats",),
                                                                          node="node-a")}}}
        return natsjwt.encode(claims, signer).encode()

    response = natsjwt.decode(await authorizer(request(server)))  # the genuine article
    assert response["aud"] == natsjwt.public_key(server) and response["sub"] == user_nkey
    user = natsjwt.decode(response["nats"]["jwt"])
    assert user["iss"] == authorizer.issuer_public_key and user["aud"] == "$G" and "exp" not in user
    assert user["nats"]["sub"]["allow"] == [node_collect_subject("node-a"), node_probe_subject("node-a"),
                                            node_drops_subject("node-a"), f"{agent_inbox_prefix('node-a')}.>"]
    assert user["nats"]["resp"] == {"max": 1, "ttl": 0}
    with pytest.raises(natsjwt.JwtError, match="not by server"):
        await authorizer(request(natsjwt.keypair(natsjwt.new_seed(nkeys.PREFIX_BYTE_USER))))  # signed by someone else
    with pytest.raises(natsjwt.JwtError, match="expired"):
        await authorizer(request(server, exp=int(time.time()) - 60))
    header, _, signature = request(server).decode().split(".")
    _, forged, _ = request(server, name="swapped claims").decode().split(".")
    with pytest.raises(natsjwt.JwtError, match="bad signature"):
        await authorizer(f"{header}.{forged}.{signature}".encode())
    with pytest.raises(natsjwt.JwtError, match="not a JWT"):
        await authorizer(b"hello")


async def test_only_the_server_may_ask_the_callout(callout: Callout) -> None:
    """A forged authorization request would be answered with an agent identity: the chart's nats.conf
    denies the services' `netdiag` user that subject (agents are callout users without it anyway)."""
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(callout.url, user="netdiag", password=STAGE_PASS, error_cb=on_error)
    try:
        await nc.publish("$SYS.REQ.USER.AUTH", b"forged", reply="_INBOX.forger")
        await nc.flush()
        for _ in range(40):
            if violations:
                break
            await asyncio.sleep(0.05)
        assert any('publish to "$sys.req.user.auth"' in v.lower() for v in violations), violations
    finally:
        await nc.close()


async def test_node_names_with_dots_are_admitted(callout: Callout) -> None:
    """ACK names nodes after their region and address (`cn-hangzhou.192.168.0.1`)."""
    node = "cn-hangzhou.192.168.0.1"
    token = callout.agent_token(node)
    stages = await Bus.connect(name="collector", settings=Settings(
        nats_url=callout.url, nats_user="netdiag", nats_password=STAGE_PASS))
    agent_bus = await Bus.connect_agent(node, Settings(
        nats_url=callout.url, nats_token_file=callout.token_file(token)))
    try:
        await assert_confined(stages, agent_bus, callout.url, node=node, other="cn-hangzhou.192.168.0.2", token=token)
    finally:
        await agent_bus.close()
        await stages.close()
