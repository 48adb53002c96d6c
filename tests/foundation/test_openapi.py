"""The OpenAPI document matches the app: the same routes, and schemathesis-generated requests
against every documented operation get documented, schema-conformant responses."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis

from services.gateway.app import create_app
from services.gateway.openapi import openapi_document
from shared.schemas import StepKind
from tests.foundation.helpers import ThreadedStack, stack_on

UI_ROUTES = {("GET", "/"), ("HEAD", "/")}  # the web page, not part of the API
STREAM_READ_S = 1.0  # endless event streams (the results watch) are read this long, then validated

schema = schemathesis.openapi.from_dict(openapi_document())


def app_routes() -> set[tuple[str, str]]:
    app = create_app(bus=None)  # type: ignore[arg-type]  # routing only, no request is served
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if not path.startswith("/static"):
            routes.add((route.method, path))
    return routes - UI_ROUTES


def test_document_paths_equal_app_routes() -> None:
    doc = openapi_document()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(m, p) for m, p in app_routes() if m != "HEAD"}  # aiohttp adds HEAD to every GET
    assert documented == served


@pytest.fixture(scope="module")
def api_url(nats_url: str) -> Iterator[str]:
    with ThreadedStack(stack_on(nats_url)) as st:
        yield st.url


@schema.parametrize()
@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url, timeout=STREAM_READ_S)


def test_document_describes_every_step_detail() -> None:
    """A client knows what each kind of step carries: Step.info is a oneOf discriminated by kind."""
    schemas = openapi_document()["components"]["schemas"]
    info = schemas["Step"]["properties"]["info"]
    mapping = info["discriminator"]["mapping"]
    assert info["discriminator"]["propertyName"] == "kind" and set(mapping) == {k.value for k in StepKind}
    for kind, ref in mapping.items():
        detail = schemas[ref.removeprefix("#/components/schemas/")]
        assert detail["description"] and "kind" in detail["required"], kind
        assert kind in detail["properties"]["kind"].get("enum", [detail["properties"]["kind"].get("const")])
