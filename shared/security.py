"""How a service proves who it is to NATS: user/password, a .creds file, an nkey seed or a token file, and TLS.

The permissions each identity gets live in the NATS server's configuration (docs/security.md and
services/natsauth/natsperms.py); the services only present credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.config import Settings


def nats_servers(url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` → both servers: the client fails over between them."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError("NATS URL is empty")
    return servers


def nats_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        if not settings.nats_tls_key:
            raise ValueError("NETDIAG_NATS_TLS_CERT needs NETDIAG_NATS_TLS_KEY")
        ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return ctx


def token_reader(path: Path) -> Callable[[], str]:
    """nats-py calls this at every connect and reconnect: a rotated token file (the kubelet refreshes a
    projected ServiceAccount token well before it expires) is picked up without a restart."""

    def read() -> str:
        return path.read_text().strip()

    return read


def nats_connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (only those that are configured)."""
    opts: dict[str, Any] = {}
    if settings.nats_user:
        opts["user"], opts["password"] = settings.nats_user, settings.nats_password or ""
    if settings.nats_creds_file:
        opts["user_credentials"] = str(settings.nats_creds_file)
    if settings.nats_nkey_seed_file:
        opts["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    if settings.nats_token_file:
        opts["token"] = token_reader(settings.nats_token_file)
    tls = nats_tls_context(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts


SIGNATURE_HEADER = "Netdiag-Signature"


def sign_event(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of a `completed` event's bytes: what the simulator attaches and the gateway checks,
    so an identity that may publish on the bus but lacks the key cannot forge a verdict."""
    return "hmac-sha256=" + hmac.new(key, data, hashlib.sha256).hexdigest()


def signature_valid(key: bytes, data: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign_event(key, data), signature)
