"""Gateway access control: bearer tokens and a per-client rate limit (aiohttp middlewares).

* Static tokens come from NETDIAG_AUTH_TOKENS (comma-separated) and/or NETDIAG_AUTH_TOKENS_FILE
  (one per line, a mounted Secret), compared in constant time.
* With NETDIAG_AUTH_TOKENREVIEW=true, any other bearer token is a Kubernetes token (a
  ServiceAccount's, or a user's from the cluster's authenticator) if the API server's TokenReview
  (authentication.k8s.io/v1) says so — for NETDIAG_AUTH_AUDIENCES, and for a user in
  NETDIAG_AUTH_ALLOWED_GROUPS / NETDIAG_AUTH_ALLOWED_USERS when set. Answers are cached briefly
  under the token's SHA-256; the API server unreachable (or refusing the review) is a 503.
* Neither configured: the API is open — the local embedded stack on 127.0.0.1. The Helm chart
  always configures tokens.
* Open without a token: /healthz and /readyz (probes), /metrics (protected by NetworkPolicy),
  and the static UI shell (/, /static/*), which holds no data. The browser gets its token once
  through `/?token=…`, which is turned into an HttpOnly, SameSite=Strict cookie, so the UI's
  fetch() and EventSource calls (which cannot set headers) are authenticated without UI changes.
* A token itself is never logged nor kept (the review cache holds its hash).
* Who "a client" is (rate limit, open event streams): the peer address — unless the peer is one of
  NETDIAG_TRUSTED_PROXIES (CIDRs: the ingress controller, the load balancer), in which case it is the
  right-most X-Forwarded-For address that is not itself a trusted proxy. Forwarded headers from any
  other peer are ignored, so a client cannot choose its own bucket (docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from kubernetes import client

from shared.config import Settings
from shared.kube import TokenReviewUnavailable, api_client, review_token

log = logging.getLogger("netdiag.gateway.auth")

COOKIE = "netdiag_token"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
MAX_CLIENTS = 10_000  # rate-limit buckets kept; the idle ones are dropped beyond this

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_tokens(settings: Settings) -> frozenset[str]:
    tokens = (settings.auth_tokens or "").split(",")
    if settings.auth_tokens_file:
        tokens += settings.auth_tokens_file.read_text().splitlines()
    return frozenset(t.strip() for t in tokens if t.strip())


class AuthUnavailable(Exception):
    """A token could not be checked: the Kubernetes API is unreachable or refused the TokenReview."""


class TokenReviewer:
    """Is this a valid Kubernetes token? One TokenReview per token and TTL, sent from a worker thread
    (the sync official client) so the event loop never waits on the API server. Cached under the
    token's SHA-256: an acceptance for `positive_ttl_s`, a refusal for `negative_ttl_s` (a revoked
    token stays usable at most that long), at most `max_entries` — a full cache drops expired entries,
    then refusals, and only then the oldest acceptances, so a flood of made-up tokens cannot push out
    the users' ones. Concurrent requests with one new token share one review. Errors are not cached."""

    def __init__(self, api: client.ApiClient, *, audiences: Iterable[str] = (), allowed_groups: Iterable[str] = (),
                 allowed_users: Iterable[str] = (), positive_ttl_s: float = 60.0, negative_ttl_s: float = 10.0,
                 max_entries: int = 4096, timeout_s: tuple[float, float] = (3.0, 5.0)) -> None:
        self.api = api
        self.audiences = list(audiences)
        self.allowed_groups, self.allowed_users = frozenset(allowed_groups), frozenset(allowed_users)
        self.ttl_s = {True: positive_ttl_s, False: negative_ttl_s}
        self.max_entries = max_entries
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, bool]] = {}  # sha256 hex → (expiry, accepted)
        self._pending: dict[str, asyncio.Future[bool]] = {}  # reviews under way

    async def __call__(self, token: str) -> bool:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(asyncio.to_thread(self._review, token, key[:12]))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        accepted = await asyncio.shield(pending)
        self._remember(key, accepted)
        return accepted

    def _remember(self, key: str, accepted: bool) -> None:
        now = time.monotonic()
        if key not in self._cache and len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            for dropping_accepted in (False, True):  # refusals go first
                for k in [k for k, v in self._cache.items() if v[1] == dropping_accepted]:
                    if len(self._cache) < self.max_entries:
                        break
                    del self._cache[k]  # the oldest first (insertion order)
        self._cache[key] = (now + self.ttl_s[accepted], accepted)

    def _review(self, token: str, ref: str) -> bool:
        try:
            status = review_token(self.api, token, self.audiences, self.timeout_s)
        except TokenReviewUnavailable as exc:  # unreachable, or e.g. 403: no system:auth-delegator
            raise AuthUnavailable(str(exc)) from None
        if status is None or not status.authenticated:
            log.info("TokenReview refused token sha256:%s: %s", ref, (status and status.error) or "not authenticated")
            return False
        user = status.user or client.V1UserInfo()
        restricted = self.allowed_groups or self.allowed_users
        if restricted and user.username not in self.allowed_users and not self.allowed_groups & set(user.groups or ()):
            log.info("Kubernetes user %s (token sha256:%s) is not in the allowed users or groups", user.username, ref)
            return False
        log.debug("Kubernetes user %s authenticated (token sha256:%s)", user.username, ref)
        return True


class Authenticator:
    """The static tokens, then (when configured) a TokenReviewer for any other token."""

    def __init__(self, tokens: frozenset[str], reviewer: TokenReviewer | None = None) -> None:
        self._static = [t.encode() for t in tokens]
        self.reviewer = reviewer

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        reviewer = None
        if settings.auth_tokenreview:
            reviewer = TokenReviewer(api_client(settings.kubeconfig), audiences=settings.auth_audiences,
                                     allowed_groups=settings.auth_allowed_groups,
                                     allowed_users=settings.auth_allowed_users)
        return cls(load_tokens(settings), reviewer)

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self.reviewer is not None

    async def __call__(self, candidate: str | None) -> bool:
        """May raise AuthUnavailable."""
        if not candidate:
            return False
        raw = candidate.encode()
        # every static token is compared (no early exit), each in constant time
        if sum(hmac.compare_digest(raw, t) for t in self._static) > 0:
            return True
        return self.reviewer is not None and await self.reviewer(candidate)


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="netdiag"'})


def auth_middleware(valid: Authenticator) -> Middleware:
    async def refusal(candidate: str | None, message: str) -> web.Response | None:
        """None when `candidate` is accepted; else a 401 with `message` (a 503 when it cannot be checked)."""
        try:
            if await valid(candidate):
                return None
        except AuthUnavailable as exc:
            log.warning("cannot authenticate a request: %s", exc)
            return web.json_response({"error": f"cannot check the token: {exc}; retry shortly"}, status=503,
                                     headers={"Retry-After": "5"})
        return _unauthorized(message)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        query_token = request.query.get("token")
        if request.path == "/" and query_token:
            if (refused := await refusal(query_token, "invalid token")) is not None:
                return refused
            response = web.Response(status=302, headers={"Location": "/"})  # drop the token from the address bar
            response.set_cookie(COOKIE, query_token, httponly=True, samesite="Strict", secure=request.secure)
            return response
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if header and scheme.lower() != "bearer":
            return _unauthorized("use an Authorization: Bearer <token> header")
        message = "invalid token" if header else "authentication required: send Authorization: Bearer <token>"
        if (refused := await refusal(credential.strip() or request.cookies.get(COOKIE), message)) is not None:
            return refused
        return await handler(request)

    return authenticate


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CLIENT: web.RequestKey[str] = web.RequestKey("client", str)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client behind `peer`: X-Forwarded-For is believed only as far as it was written by trusted
    proxies, read from the right (each proxy appends the address it received the request from)."""
    if peer is None:
        return "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # garbage in a forwarded header is a client's own claim: the hop before it decides
    return any(ip in net for net in trusted)


def client_middleware(settings: Settings | None) -> Middleware:
    """Sets request[CLIENT] (see client_address) for the rate limit and the stream cap."""
    trusted = [ipaddress.ip_network(n, strict=False) for n in (settings.trusted_proxies if settings else ())]

    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CLIENT] = client_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)
        return await handler(request)

    return identify


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


def rate_limit_middleware(rps: float, burst: int) -> Middleware:
    """A token bucket per client address: `burst` at once, `rps` sustained; 429 with Retry-After."""
    buckets: dict[str, _Bucket] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz", "/metrics"):
            return await handler(request)
        peer = request.get(CLIENT) or request.remote or "unknown"
        now = time.monotonic()
        bucket = buckets.get(peer)
        if bucket is None:
            if len(buckets) >= MAX_CLIENTS:
                buckets.clear()
            bucket = buckets[peer] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rps)
        bucket.stamp = now
        if bucket.tokens < 1:
            retry = max(1, round((1 - bucket.tokens) / rps))
            return web.json_response({"error": f"rate limit exceeded: at most {rps:g} requests/s"}, status=429,
                                     headers={"Retry-After": str(retry)})
        bucket.tokens -= 1
        return await handler(request)

    return limit


def security_middlewares(
    settings: Settings | None,
) -> list[Middleware]:
    """Rate limit first (an unauthenticated flood is limited too), then authentication."""
    if settings is None:  # an app built for its routes only (the OpenAPI test)
        return []
    out: list[Middleware] = []
    if settings.rate_limit_rps:
        out.append(rate_limit_middleware(settings.rate_limit_rps, settings.rate_limit_burst))
    authenticator = Authenticator.from_settings(settings)
    if authenticator.enabled:
        out.append(auth_middleware(authenticator))
    return out
