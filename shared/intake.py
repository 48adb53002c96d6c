"""Reading a diagnosis request off the wire: the one validation path of every entry point
(the gateway's POST body, each `--batch` line of `netdiag diagnose` and `netdiag matrix`).

Strict on purpose: no silent coercion at the edge ("80" is not a port, `true` is not 1), so
what is accepted anywhere is exactly what the OpenAPI document describes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from shared.schemas import DiagnosisRequest


class RequestInvalid(ValueError):
    """Why a request was refused: an HTTP status (400 not JSON / not an object, 422 a field),
    a one-line message and the per-field errors. A 400 message has no subject: the caller puts
    its own in front ("request body is not valid JSON", "line 3: not valid JSON")."""

    def __init__(self, status: int, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or []


def json_number(text: str) -> float | int:
    """JSON has one number type: 65535.0 is the integer 65535 (JSON Schema's `integer` agrees),
    which strict validation would otherwise refuse as a port."""
    value = float(text)
    return int(value) if value.is_integer() else value


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        msg = "unknown field: remove it" if e["type"] == "extra_forbidden" else e["msg"]
        out.append({"field": loc, "message": msg})
    return out


def parse_request(raw: bytes | str) -> DiagnosisRequest:
    """A JSON document → the validated request, or RequestInvalid naming each bad field."""
    try:
        body: Any = json.loads(raw or b"null", parse_float=json_number)
    except ValueError as exc:
        raise RequestInvalid(400, f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestInvalid(400, "not a JSON object: expected one with src, dst, port and protocol")
    try:
        return DiagnosisRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        fields = field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        raise RequestInvalid(422, f"invalid diagnosis request: {summary}", fields) from None
