"""The OpenAPI 3 document, generated from the same pydantic models the handlers validate with."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from shared.cluster import ClusterSummary
from shared.schemas import Diagnosis, DiagnosisRequest, ProgressEvent, Severity


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


# pydantic names IPvAnyAddress's format "ipvanyaddress", which no OpenAPI tool knows; spelled
# with the standard formats, clients and generators (schemathesis) see what is accepted.
IP_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}


def _standard_formats(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("format") == "ipvanyaddress":
            extra = {k: v for k, v in node.items() if k not in ("type", "format")}
            return {**extra, **IP_ADDRESS}
        return {k: _standard_formats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_standard_formats(v) for v in node]
    return node


def _sse_event(name: str, ref: str) -> dict[str, Any]:
    """One Server-Sent Event (event name + JSON data), as OpenAPI 3.1 tools read a stream."""
    return {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"const": name},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"$ref": ref}},
    }}


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}


@cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(DiagnosisRequest, "validation"), (Diagnosis, "serialization"), (ProgressEvent, "serialization"),
         (ClusterSummary, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = _standard_formats(defs["$defs"])
    schemas["Error"] = {
        "type": "object", "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "fields": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "message": {"type": "string"}}}},
        },
    }
    schemas["Accepted"] = {"type": "object", "required": ["id", "status", "location"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string"}, "location": {"type": "string"}}}
    schemas["DiagnosisPage"] = {"type": "object", "required": ["items", "next"], "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "next": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    schemas["FindingCode"] = {
        "type": "object", "required": ["code", "severity", "template", "suggestion", "abort"], "properties": {
            "code": {"type": "string"}, "severity": {"enum": [s.value for s in Severity]},
            "template": {"type": "string", "description": "message template (str.format fields)"},
            "suggestion": {"type": "string"},
            "abort": {"type": "boolean", "description": "the analysis could not see part of the path: "
                                                        "the verdict cannot be confident"}}}
    health = {"type": "object"}
    return {
        "openapi": "3.1.0",  # JSON Schema 2020-12, as pydantic emits it (`null` types, content keywords)
        "info": {"title": "netdiag", "version": "1", "description": "Kubernetes network diagnosis API"},
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": health}}}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": health}}},
                "503": {"description": "NATS unreachable", "content": {"application/json": {"schema": health}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {
                "200": {"description": "Prometheus metrics (text exposition format)",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/api/v1/diagnoses": {
                "post": {
                    "operationId": "createDiagnosis",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                                    "description": "retrying with the same key names the first attempt's "
                                                   "diagnosis, which runs once"}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/DiagnosisRequest"}}}},
                    "responses": {
                        "202": {**_ok("accepted", "#/components/schemas/Accepted"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "400": _error("not JSON"), "409": _error("Idempotency-Key reused for another request"),
                        "413": _error("body too large"),
                        "422": _error("invalid field"), "503": _error("bus unavailable"),
                    },
                },
                "get": {
                    "operationId": "listDiagnoses",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "after", "in": "query", "schema": {"type": "string"},
                         "description": "the `next` value of the previous page"},
                        {"name": "source", "in": "query", "schema": {"type": "string"},
                         "description": "whose history: by default the cluster served now (the cluster summary's "
                                        "`source`), `all` for every diagnosis, or another source's name"},
                    ],
                    "responses": {"200": _ok("newest first", "#/components/schemas/DiagnosisPage"),
                                  "422": _error("invalid parameter"), "503": _error("bus unavailable")},
                },
            },
            "/api/v1/events": {"get": {
                "operationId": "watchResults",
                "responses": {"200": {"description": "Server-Sent Events: one `result` event (Diagnosis) per "
                                      "diagnosis as it completes", "content": {"text/event-stream": {
                                          "schema": _sse_event("result", "#/components/schemas/Diagnosis")}}},
                              "429": _error("too many open event streams for this client (Retry-After)"),
                              "503": _error("bus unavailable")},
            }},
            "/api/v1/cluster": {"get": {
                "operationId": "getClusterSummary",
                "description": "pods, Services, nodes and the cluster DNS from the topology stage's model "
                               "(for pickers); each list capped, `truncated` and `counts` say so",
                "responses": {"200": _ok("the latest summary", "#/components/schemas/ClusterSummary"),
                              "404": _error("no topology stage has published a summary yet"),
                              "503": _error("bus unavailable")},
            }},
            "/api/v1/codes": {"get": {
                "operationId": "listFindingCodes",
                "responses": {"200": {"description": "the finding-code catalogue", "content": {"application/json": {
                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/FindingCode"}}}}}},
            }},
            "/api/v1/openapi.json": {"get": {"operationId": "openapi", "responses": {
                "200": {"description": "this document", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["openapi", "paths"]}}}}}}},
            "/api/v1/diagnoses/{id}": {"get": {
                "operationId": "getDiagnosis", "parameters": [ID_PARAM],
                "responses": {"200": _ok("the diagnosis", "#/components/schemas/Diagnosis"),
                              "404": _error("unknown id"), "503": _error("bus unavailable")},
            }},
            "/api/v1/diagnoses/{id}/events": {"get": {
                "operationId": "diagnosisEvents", "parameters": [ID_PARAM],
                "responses": {"200": {"description": "Server-Sent Events: `progress` events (ProgressEvent), then "
                                      "one `result` event (Diagnosis)",
                                      "content": {"text/event-stream": {"schema": {"oneOf": [
                                          _sse_event("progress", "#/components/schemas/ProgressEvent"),
                                          _sse_event("result", "#/components/schemas/Diagnosis")]}}}},
                              "404": _error("unknown id"),
                              "429": _error("too many open event streams for this client (Retry-After)"),
                              "503": _error("bus unavailable")},
            }},
        },
        "components": {"schemas": schemas},
    }
