"""The OpenAPI 3 document, generated from the same pydantic models the handlers validate with."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from shared.schemas import Diagnosis, DiagnosisRequest, ProgressEvent


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}


@cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(DiagnosisRequest, "validation"), (Diagnosis, "serialization"), (ProgressEvent, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs["$defs"]
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
    health = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "netdiag", "version": "1", "description": "Kubernetes network diagnosis API"},
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": health}}}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": health}}},
                "503": {"description": "NATS unreachable", "content": {"application/json": {"schema": health}}}}}},
            "/api/v1/diagnoses": {
                "post": {
                    "operationId": "createDiagnosis",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/DiagnosisRequest"}}}},
                    "responses": {
                        "202": {**_ok("accepted", "#/components/schemas/Accepted"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "400": _error("not JSON"), "413": _error("body too large"),
                        "422": _error("invalid field"), "503": _error("bus unavailable"),
                    },
                },
                "get": {
                    "operationId": "listDiagnoses",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "after", "in": "query", "schema": {"type": "string"},
                         "description": "the `next` value of the previous page"},
                    ],
                    "responses": {"200": _ok("newest first", "#/components/schemas/DiagnosisPage"),
                                  "422": _error("invalid parameter"), "503": _error("bus unavailable")},
                },
            },
            "/api/v1/events": {"get": {
                "operationId": "watchResults",
                "responses": {"200": {"description": "Server-Sent Events: one `result` event (Diagnosis) per "
                                      "diagnosis as it completes", "content": {"text/event-stream": {
                                          "schema": {"type": "string"}}}},
                              "503": _error("bus unavailable")},
            }},
            "/api/v1/diagnoses/{id}": {"get": {
                "operationId": "getDiagnosis", "parameters": [ID_PARAM],
                "responses": {"200": _ok("the diagnosis", "#/components/schemas/Diagnosis"),
                              "404": _error("unknown id"), "503": _error("bus unavailable")},
            }},
            "/api/v1/diagnoses/{id}/events": {"get": {
                "operationId": "diagnosisEvents", "parameters": [ID_PARAM],
                "responses": {"200": {"description": "Server-Sent Events: `progress` events (ProgressEvent), then "
                                      "one `result` event (Diagnosis)",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "404": _error("unknown id"), "503": _error("bus unavailable")},
            }},
        },
        "components": {"schemas": schemas},
    }
