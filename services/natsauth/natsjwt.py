"""NATS JWTs (ed25519 nkeys) for auth callout (ADR-26): decode and verify the server's
authorization request, encode the user and the authorization response claims.

A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` with the header
`{"typ":"JWT","alg":"ed25519-nkey"}` and the signature an ed25519 signature of `header.claims` by the
issuer's nkey (`iss`, a public nkey: `N…` a server, `A…` an account, `U…` a user). Needs the `nkeys`
package (and its PyNaCl).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
AUTH_REQUEST = "authorization_request"
AUTH_RESPONSE = "authorization_response"
CLOCK_SKEW_S = 5  # tolerated between the server's clock and ours


class JwtError(ValueError):
    """A JWT that is malformed, badly signed or expired."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed(prefix: int = nkeys.PREFIX_BYTE_ACCOUNT) -> bytes:
    """A fresh nkey seed: by default an account's (`SA…`), the auth callout issuer."""
    return nkeys.encode_seed(os.urandom(32), prefix)


def keypair(seed: bytes | str) -> nkeys.KeyPair:
    """The nkey of `seed`; raises JwtError (never echoing the seed) when it is not a valid one."""
    raw = seed.encode() if isinstance(seed, str) else bytes(seed)
    try:
        return nkeys.from_seed(bytearray(raw.strip()))
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError) as exc:
        raise JwtError(f"not a valid nkey seed ({type(exc).__name__})") from None


def public_key(kp: nkeys.KeyPair) -> str:
    return kp.public_key.decode()


def _verify_key(public: str) -> nacl.signing.VerifyKey:
    """The ed25519 key of a public nkey: base32(prefix byte, 32 key bytes, crc16)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raise JwtError("issuer is not a public nkey") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]) or \
            nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        raise JwtError("issuer is not a public nkey")
    return nacl.signing.VerifyKey(raw[1:33])


def encode(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """Sign `claims` as `issuer` (setting `iss`, `iat` and `jti` as the NATS jwt library does)."""
    body = {**claims, "iss": public_key(issuer), "iat": int(time.time())}
    body.pop("jti", None)
    body = {"jti": base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest())
            .decode().rstrip("="), **body}
    signing_input = f"{_b64encode(json.dumps(HEADER).encode())}.{_b64encode(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64encode(issuer.sign(signing_input.encode()))}"


def decode(token: str, *, now: float | None = None) -> dict[str, Any]:
    """The claims of `token` once its structure, its signature (by its own `iss`) and its expiry check out."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT (expected three dot-separated parts)")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        raise JwtError("not a JWT (undecodable part)") from None
    if not isinstance(header, dict) or header.get("typ", "").upper() != "JWT" or \
            header.get("alg") not in ("ed25519-nkey", "ed25519"):
        raise JwtError(f"unexpected JWT header {header!r}")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str) \
            or not isinstance(claims.get("nats"), dict):
        raise JwtError("not NATS claims (no iss or nats)")
    try:
        _verify_key(claims["iss"]).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
    except nacl.exceptions.BadSignatureError:
        raise JwtError("bad signature") from None
    now = time.time() if now is None else now
    if isinstance(claims.get("exp"), int | float) and claims["exp"] and claims["exp"] + CLOCK_SKEW_S < now:
        raise JwtError("expired")
    if isinstance(claims.get("nbf"), int | float) and claims["nbf"] and claims["nbf"] - CLOCK_SKEW_S > now:
        raise JwtError("not yet valid")
    return claims


def user_claims(user_nkey: str, name: str, permissions: dict[str, Any], *, ttl_s: float,
                account: str = "$G") -> dict[str, Any]:
    """The claims of a user placed in `account` (`$G`: the global account of a configuration without
    operator/accounts) with the subject permissions of a nats-server `permissions` block; `ttl_s` 0:
    no expiry (the identity lasts as long as the connection)."""
    nats_claims: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
    for block, key in (("publish", "pub"), ("subscribe", "sub")):
        if block in permissions:
            nats_claims[key] = {k: list(v) for k, v in permissions[block].items() if k in ("allow", "deny")}
    if permissions.get("allow_responses"):
        nats_claims["resp"] = {"max": 1, "ttl": 0}  # one reply per request received, the server's default window
    claims: dict[str, Any] = {"sub": user_nkey, "name": name, "aud": account, "nats": nats_claims}
    if ttl_s > 0:
        claims["exp"] = int(time.time() + ttl_s)
    return claims


def response_claims(user_nkey: str, server_id: str, *, user_jwt: str | None = None,
                    error: str | None = None) -> dict[str, Any]:
    """An authorization response: the user JWT when accepted, an error when refused."""
    nats_claims: dict[str, Any] = {"type": AUTH_RESPONSE, "version": 2}
    if user_jwt:
        nats_claims["jwt"] = user_jwt
    if error:
        nats_claims["error"] = error
    return {"sub": user_nkey, "aud": server_id, "nats": nats_claims}
