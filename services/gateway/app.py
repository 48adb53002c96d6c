"""The gateway: REST + SSE over the diagnosis pipeline.

A request is either durably accepted (a KV record is created, then the requested event is
acknowledged by the stream) or clearly refused (4xx with per-field messages, 503 when the
bus is down) — never half-taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import nats
from aiohttp import web
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from opentelemetry import propagate, trace
from pydantic import ValidationError

from services.gateway.auth import security_middlewares
from services.gateway.openapi import openapi_document
from services.gateway.store import ResultStore
from shared.bus import SUBJECT_REQUESTED, SUBJECT_STORED, Bus, progress_subject
from shared.cluster import SUMMARY_KEY
from shared.codes import CATALOGUE
from shared.logs import log_context
from shared.metrics import metrics_handler
from shared.schemas import Diagnosis, DiagnosisRequest, DiagnosisStatus, StageEnvelope, new_id, now

log = logging.getLogger("netdiag.gateway")
tracer = trace.get_tracer("netdiag")

MAX_BODY = 64 * 1024
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._-]{1,128}")
PAGE_MAX = 200
SSE_IDLE_CHECK_S = 2.0
STATIC_DIR = Path(__file__).parent / "static"

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
STORE: web.AppKey[ResultStore] = web.AppKey("store", ResultStore)
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams", set)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        msg = "unknown field: remove it" if e["type"] == "extra_forbidden" else e["msg"]
        out.append({"field": loc, "message": msg})
    return out


def _json_number(text: str) -> float | int:
    """JSON has one number type: 65535.0 is the integer 65535 (JSON Schema's `integer` agrees),
    which strict validation would otherwise refuse as a port."""
    value = float(text)
    return int(value) if value.is_integer() else value


async def _bus_ready(bus: Bus) -> bool:
    if not bus.connected:
        return False
    try:
        await asyncio.wait_for(bus.js.account_info(), 1.0)
    except (TimeoutError, nats.errors.Error):
        return False
    return True


# ------------------------------------------------------------------ handlers


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = await _bus_ready(request.app[BUS])
    return web.json_response({"ready": ready, "nats": "connected" if ready else "unreachable"},
                             status=200 if ready else 503)


async def create_diagnosis(request: web.Request) -> web.Response:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large: at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"null", parse_float=_json_number)
    except ValueError as exc:
        return error(400, f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object with src, dst, port and protocol")
    try:
        # strict: no silent coercion at the edge ("80" is not a port, 1 is not a boolean), so
        # what is accepted is exactly what the OpenAPI document describes
        req = DiagnosisRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        fields = field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error(422, f"invalid diagnosis request: {summary}", fields=fields)

    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        return error(422, "Idempotency-Key: 1 to 128 characters of letters, digits, '.', '_' or '-'",
                     fields=[{"field": "Idempotency-Key", "message": "1-128 of [A-Za-z0-9._-]"}])
    bus, store = request.app[BUS], request.app[STORE]
    if not bus.connected:
        return error(503, "the diagnosis bus (NATS) is unreachable; retry shortly")
    diagnosis = Diagnosis(id=new_id(), request=req, status=DiagnosisStatus.QUEUED, created_at=now())
    # The root span of the diagnosis (continuing a caller's traceparent, if any): publish_model
    # injects it into the NATS headers, so every stage's span joins this one trace.
    with tracer.start_as_current_span("netdiag.gateway.create_diagnosis", kind=trace.SpanKind.SERVER,
                                      context=propagate.extract(request.headers)) as span:
        try:
            if key is not None:
                # a retry after a 503 (or a lost 202) names the first attempt's diagnosis; its
                # requested event reuses that id's Nats-Msg-Id, so JetStream runs it once
                diagnosis.id = await asyncio.wait_for(store.claim(key, diagnosis.id), 3)
                existing = await store.get(diagnosis.id)
                if existing is not None and existing.request != req:
                    return error(409, "Idempotency-Key was already used for a different request")
                diagnosis = existing or diagnosis
            if key is None or existing is None:
                await asyncio.wait_for(store.create(diagnosis), 3)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("diagnosis %s not stored: %s", diagnosis.id, type(exc).__name__,
                        extra=log_context(diagnosis_id=diagnosis.id, stage="gateway"))
            return error(503, f"the diagnosis bus (NATS) is unreachable; retry shortly ({type(exc).__name__})")
        span.set_attribute("netdiag.diagnosis_id", diagnosis.id)
        env = StageEnvelope(id=diagnosis.id, request=req, created_at=diagnosis.created_at)
        if diagnosis.status != DiagnosisStatus.QUEUED:  # a retry of a finished diagnosis: nothing to queue
            return _accepted(diagnosis)
        try:
            await bus.publish_model(SUBJECT_REQUESTED, env, msg_id=f"{diagnosis.id}:requested")
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("diagnosis %s not queued: %s", diagnosis.id, type(exc).__name__,
                        extra=log_context(diagnosis_id=diagnosis.id, stage="gateway"))
            with contextlib.suppress(Exception):
                await store.forget(diagnosis.id)
            return error(503, f"the diagnosis could not be queued; retry shortly ({type(exc).__name__})")
        log.info("diagnosis %s queued", diagnosis.id, extra=log_context(diagnosis_id=diagnosis.id, stage="gateway"))
    return _accepted(diagnosis)


def _accepted(diagnosis: Diagnosis) -> web.Response:
    location = f"/api/v1/diagnoses/{diagnosis.id}"
    return web.json_response(
        {"id": diagnosis.id, "status": diagnosis.status.value, "location": location},
        status=202, headers={"Location": location},
    )


async def get_diagnosis(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        diagnosis = await store.get(request.match_info["id"])
    except nats.errors.Error:
        return error(503, "the result store (NATS) is unreachable; retry shortly")
    if diagnosis is None:
        return error(404, f"no diagnosis with id {request.match_info['id']!r}")
    return web.Response(text=diagnosis.model_dump_json(), content_type="application/json")


async def list_diagnoses(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "20"))
        if not 1 <= limit <= PAGE_MAX:
            raise ValueError
    except ValueError:
        return error(422, f"limit: must be an integer from 1 to {PAGE_MAX}",
                     fields=[{"field": "limit", "message": f"integer from 1 to {PAGE_MAX}"}])
    after = request.query.get("after")
    store = request.app[STORE]
    try:
        ids = await store.ids()
        if after:
            ids = [i for i in ids if i < after]
        page = ids[:limit]
        items = [d for d in await asyncio.gather(*(store.get(i) for i in page)) if d is not None]
    except nats.errors.Error:
        return error(503, "the result store (NATS) is unreachable; retry shortly")
    body = {
        "items": [json.loads(d.model_dump_json(exclude={"result": {"paths"}})) for d in items],
        "next": page[-1] if len(ids) > limit else None,
    }
    return web.json_response(body)


async def diagnosis_events(request: web.Request) -> web.StreamResponse:
    """SSE: every progress event of the diagnosis (replayed from the stream), then the result."""
    bus, store = request.app[BUS], request.app[STORE]
    diagnosis_id = request.match_info["id"]
    try:
        if await store.get(diagnosis_id) is None:
            return error(404, f"no diagnosis with id {diagnosis_id!r}")
        sub = await bus.js.subscribe(progress_subject(diagnosis_id), ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
    except nats.errors.Error:
        return error(503, "the diagnosis bus (NATS) is unreachable; retry shortly")
    resp = await _open_stream(request)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=SSE_IDLE_CHECK_S)
            except TimeoutError:
                msg = None
            if msg is not None:
                await resp.write(_sse("progress", msg.data.decode()))
                if json.loads(msg.data).get("state") != "result":
                    continue
            else:
                await resp.write(KEEPALIVE)
            diagnosis = await store.get(diagnosis_id)
            if diagnosis and diagnosis.status != DiagnosisStatus.QUEUED:
                await resp.write(_sse("result", diagnosis.model_dump_json()))
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return resp


async def watch_results(request: web.Request) -> web.StreamResponse:
    """SSE of every diagnosis as it completes from now on (the "subscribe to result events" use)."""
    bus, store = request.app[BUS], request.app[STORE]
    try:
        sub = await bus.subscribe(SUBJECT_STORED)
    except nats.errors.Error:
        return error(503, "the diagnosis bus (NATS) is unreachable; retry shortly")
    resp = await _open_stream(request)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=SSE_IDLE_CHECK_S * 5)
            except TimeoutError:
                await resp.write(KEEPALIVE)
                continue
            diagnosis = await store.get(msg.data.decode())
            if diagnosis is not None:
                await resp.write(_sse("result", diagnosis.model_dump_json()))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return resp


KEEPALIVE = b": keepalive\n\n"


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    _track_stream(request)
    return resp


def _track_stream(request: web.Request) -> None:
    """Event streams end only when the client leaves: remember them so shutdown can end them
    (otherwise the server waits for each one to notice, keeping Ctrl-C slow)."""
    task = asyncio.current_task()
    if task is not None:
        request.app[STREAMS].add(task)
        task.add_done_callback(request.app[STREAMS].discard)


async def _end_streams(app: web.Application) -> None:
    streams = app[STREAMS]  # (read apart from list(): mypy infers the key's type from the call's context)
    for task in list(streams):
        task.cancel()  # the stream handlers treat cancellation as the end of the stream


async def cluster_summary(request: web.Request) -> web.Response:
    """The topology stage's cluster summary (shared/cluster.py), as it published it."""
    try:
        kv = await request.app[BUS].cluster_kv()
        entry = await kv.get(SUMMARY_KEY)
    except KeyNotFoundError:
        return error(404, "no cluster summary yet: the topology stage publishes it once its cluster model "
                          "is loaded (snapshot) or synced (live)")
    except (TimeoutError, nats.errors.Error):
        return error(503, "the cluster summary store (NATS) is unreachable; retry shortly")
    return web.Response(body=entry.value, content_type="application/json")


async def finding_codes(_: web.Request) -> web.Response:
    return web.json_response([dataclasses.asdict(c) for c in CATALOGUE.values()])


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def index(_: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if page.exists():
        return web.FileResponse(page)
    return web.Response(text="netdiag gateway: see /api/v1/openapi.json", content_type="text/plain")


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404/405/413 become JSON errors like ours."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large: at most {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400 and not request.path.startswith("/static"):
            resp = error(exc.status, exc.reason)
            if "Allow" in exc.headers:  # a 405 must say which methods are allowed (RFC 9110)
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        raise


def create_app(bus: Bus) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[json_errors, *security_middlewares(getattr(bus, "settings", None))])
    app[BUS] = bus
    app[STORE] = ResultStore(bus)
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/api/v1/diagnoses", create_diagnosis)
    app.router.add_get("/api/v1/diagnoses", list_diagnoses)
    app.router.add_get("/api/v1/diagnoses/{id}", get_diagnosis)
    app.router.add_get("/api/v1/diagnoses/{id}/events", diagnosis_events)
    app.router.add_get("/api/v1/events", watch_results)
    app.router.add_get("/api/v1/cluster", cluster_summary)
    app.router.add_get("/api/v1/codes", finding_codes)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/", index)
    if STATIC_DIR.exists():
        app.router.add_static("/static", STATIC_DIR)
    return app
