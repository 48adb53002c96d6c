"""The NATS auth callout (ADR-26) for node agents: each agent gets the permissions of its own node only.

nats-server (configured with `authorization { auth_callout { issuer: <account nkey>, auth_users: [...] } }`)
sends every connecting client that is not one of the `auth_users` to `$SYS.REQ.USER.AUTH` as an
authorization request JWT, signed by the server's nkey. This service:

1. decodes and checks that JWT (structure, type, expiry, and a signature by the key it names as its
   issuer — which proves integrity, not origin: what keeps forgers out is that no client but the server
   may publish to `$SYS.REQ.USER.AUTH` (the chart denies it to the `netdiag` user, agents are callout
   users and cannot));
2. takes the token the client presented (`connect_opts.auth_token`): the agent's projected
   ServiceAccount token, audience `nats`;
3. asks the Kubernetes API about it with a TokenReview, and requires it authenticated, for the
   configured agent ServiceAccount, and bound to a pod on a node: the review's
   `user.extra["authentication.kubernetes.io/node-name"]` (Kubernetes >= 1.30 adds it to pod-bound
   tokens) is the node the agent may answer for;
4. answers with an authorization response JWT, signed by the issuer account's nkey, holding a user
   JWT with exactly `services.natsauth.natsperms.agent_permissions(node)` — or, refused, an error (the client
   gets "Authorization Violation"), logged with the reason but never the token.

The identity lasts for the connection (NETDIAG_NATS_AUTH_USER_TTL_S, default 0); every reconnect is a
new request, reviewed with the token the agent reads from its file then. An expiry (> 0) makes the
server end the identity, but nats-py (2.16) answers "User Authentication Expired" by closing the
connection for good instead of reconnecting, which would leave the agent deaf: keep 0 for the agent.

Replicas share the queue group `netdiag-nats-auth`; the server tries again on a missing answer and
refuses the client when none comes (nothing is let in without this service).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.natsauth import natsjwt
from services.natsauth.natsperms import agent_permissions
from shared.bus import subscribe_confirmed
from shared.config import Settings
from shared.kube import TokenReviewUnavailable, api_client, review_token

log = logging.getLogger("netdiag.natsauth")

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE = "netdiag-nats-auth"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class Refused(Exception):
    """The client is not admitted; the message goes back to the server (and into our log)."""


@dataclass(frozen=True)
class Admission:
    node: str
    username: str
    pod: str | None


class AgentAuthorizer:
    """Turns an authorization request JWT into an authorization response JWT."""

    def __init__(self, api: client.ApiClient, issuer_seed: bytes, *, agent_user: str,
                 audiences: tuple[str, ...] = ("nats",), user_ttl_s: float = 0.0) -> None:
        self.api = api
        self.issuer = natsjwt.keypair(issuer_seed)
        self.agent_user = agent_user
        self.audiences = audiences
        self.user_ttl_s = user_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentAuthorizer:
        if not settings.nats_auth_issuer_seed_file:
            raise ValueError("NETDIAG_NATS_AUTH_ISSUER_SEED_FILE is required (the issuer account's nkey seed)")
        if not settings.nats_auth_agent_user:
            raise ValueError("NETDIAG_NATS_AUTH_AGENT_USER is required "
                             "(system:serviceaccount:<namespace>:<agent serviceaccount>)")
        seed = settings.nats_auth_issuer_seed_file.read_bytes()
        natsjwt.keypair(seed)  # a bad seed fails here, before anything else is set up
        return cls(api_client(settings.kubeconfig), seed, agent_user=settings.nats_auth_agent_user,
                   audiences=settings.nats_auth_audiences, user_ttl_s=settings.nats_auth_user_ttl_s)

    @property
    def issuer_public_key(self) -> str:
        return natsjwt.public_key(self.issuer)

    async def __call__(self, request_jwt: bytes) -> str:
        """The response JWT for one request; raises natsjwt.JwtError for a request not worth answering
        (not from a server, forged, expired: there is nobody to tell)."""
        claims = natsjwt.decode(request_jwt.decode(errors="replace"))
        nats_claims = claims["nats"]
        if nats_claims.get("type") != natsjwt.AUTH_REQUEST:
            raise natsjwt.JwtError(f"not an authorization request (type {nats_claims.get('type')!r})")
        user_nkey, server_id = nats_claims.get("user_nkey"), (nats_claims.get("server_id") or {}).get("id")
        if not isinstance(user_nkey, str) or not isinstance(server_id, str):
            raise natsjwt.JwtError("authorization request without user_nkey or server_id")
        if claims["iss"] != server_id:  # a server signs its requests with its own (server id) nkey
            raise natsjwt.JwtError(f"authorization request signed by {claims['iss']}, not by server {server_id}")
        client_info = nats_claims.get("client_info") or {}
        who = f"client {client_info.get('id', '?')} from {client_info.get('host', '?')}"
        token = (nats_claims.get("connect_opts") or {}).get("auth_token") or ""
        try:
            admitted = await self.admit(token)
        except Refused as exc:
            log.warning("refused NATS %s: %s", who, exc)
            return natsjwt.encode(natsjwt.response_claims(user_nkey, server_id, error=str(exc)), self.issuer)
        user = natsjwt.user_claims(user_nkey, f"agent-{admitted.node}", agent_permissions(admitted.node),
                                   ttl_s=self.user_ttl_s)
        user_jwt = natsjwt.encode(user, self.issuer)
        log.info("admitted NATS %s as the agent of node %s (%s, pod %s)%s", who, admitted.node, admitted.username,
                 admitted.pod or "?", f" for {self.user_ttl_s:.0f} s" if self.user_ttl_s else "")
        return natsjwt.encode(natsjwt.response_claims(user_nkey, server_id, user_jwt=user_jwt), self.issuer)

    async def admit(self, token: str) -> Admission:
        if not token:
            raise Refused("no token presented (the agent connects with its ServiceAccount token)")
        ref = hashlib.sha256(token.encode()).hexdigest()[:12]
        try:
            status = await asyncio.to_thread(review_token, self.api, token, self.audiences)
        except TokenReviewUnavailable as exc:
            raise Refused(f"cannot check the token: {exc}") from None
        if not status.authenticated:
            raise Refused(f"token sha256:{ref} not authenticated by the Kubernetes API: "
                          f"{status.error or 'no reason given'}")
        user = status.user or client.V1UserInfo()
        if user.username != self.agent_user:
            raise Refused(f"token sha256:{ref} is {user.username}, not the agent ServiceAccount {self.agent_user}")
        extra: dict[str, Any] = user.extra or {}
        nodes = extra.get(NODE_NAME_EXTRA) or []
        if len(nodes) != 1 or not _valid_node(nodes[0]):
            raise Refused(f"token sha256:{ref} of {user.username} names no node ({NODE_NAME_EXTRA} missing: "
                          "use a pod-bound projected token on Kubernetes >= 1.30)")
        pods = extra.get(POD_NAME_EXTRA) or []
        return Admission(node=nodes[0], username=user.username, pod=pods[0] if pods else None)


def _valid_node(node: str) -> bool:
    """A node name usable in a literal subject: no wildcard or whitespace. Dots are fine (ACK names nodes
    `cn-hangzhou.192.168.0.1`): `netdiag.node.a.b.collect` is its own literal subject."""
    return bool(node) and not any(c in node for c in "*> \t\r\n")


async def serve_callout(nc: NATS, authorizer: AgentAuthorizer) -> Subscription:
    """Answer authorization requests on `nc` (connected as one of the server's auth_users)."""

    async def on_request(msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            response = await authorizer(msg.data)
        except natsjwt.JwtError as exc:
            log.warning("ignored an authorization request: %s", exc)
            return
        except Exception:  # never let one request kill the subscription; the client is refused by timeout
            log.exception("authorization request failed")
            return
        await msg.respond(response.encode())

    return await subscribe_confirmed(nc, AUTH_SUBJECT, queue=QUEUE, cb=on_request)
