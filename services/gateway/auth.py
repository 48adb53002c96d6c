"""Gateway access control: bearer tokens and a per-client rate limit (aiohttp middlewares).

* Tokens come from NETDIAG_AUTH_TOKENS (comma-separated) and/or NETDIAG_AUTH_TOKENS_FILE (one
  per line, a mounted Secret). None configured: the API is open — the local embedded stack on
  127.0.0.1. The Helm chart always configures tokens.
* Open without a token: /healthz and /readyz (probes), /metrics (protected by NetworkPolicy),
  and the static UI shell (/, /static/*), which holds no data. The browser gets its token once
  through `/?token=…`, which is turned into an HttpOnly, SameSite=Strict cookie, so the UI's
  fetch() and EventSource calls (which cannot set headers) are authenticated without UI changes.
* Compared in constant time; the token itself is never logged.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from shared.config import Settings

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


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="netdiag"'})


def auth_middleware(tokens: frozenset[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    encoded = [t.encode() for t in tokens]

    def valid(candidate: str | None) -> bool:
        if not candidate:
            return False
        raw = candidate.encode()
        # every token is compared (no early exit), each in constant time
        return sum(hmac.compare_digest(raw, t) for t in encoded) > 0

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        query_token = request.query.get("token")
        if request.path == "/" and query_token:
            if not valid(query_token):
                return _unauthorized("invalid token")
            response = web.Response(status=302, headers={"Location": "/"})  # drop the token from the address bar
            response.set_cookie(COOKIE, query_token, httponly=True, samesite="Strict", secure=request.secure)
            return response
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if header and scheme.lower() != "bearer":
            return _unauthorized("use an Authorization: Bearer <token> header")
        if not valid(credential.strip() or request.cookies.get(COOKIE)):
            return _unauthorized("authentication required: send Authorization: Bearer <token>"
                                 if not header else "invalid token")
        return await handler(request)

    return authenticate


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


def rate_limit_middleware(rps: float, burst: int) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A token bucket per client address: `burst` at once, `rps` sustained; 429 with Retry-After."""
    buckets: dict[str, _Bucket] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz", "/metrics"):
            return await handler(request)
        client = request.remote or "unknown"
        now = time.monotonic()
        bucket = buckets.get(client)
        if bucket is None:
            if len(buckets) >= MAX_CLIENTS:
                buckets.clear()
            bucket = buckets[client] = _Bucket(float(burst), now)
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
) -> list[Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]]:
    """Rate limit first (an unauthenticated flood is limited too), then authentication."""
    if settings is None:  # an app built for its routes only (the OpenAPI test)
        return []
    out = []
    if settings.rate_limit_rps:
        out.append(rate_limit_middleware(settings.rate_limit_rps, settings.rate_limit_burst))
    tokens = load_tokens(settings)
    if tokens:
        out.append(auth_middleware(tokens))
    return out
