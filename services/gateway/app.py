"""The gateway: REST + SSE over the diagnosis pipeline.

A request is either durably accepted (a KV record is created, then the requested event is
acknowledged by the stream) or clearly refused (4xx with per-field messages, 503 when the
bus is down) — never half-taken. When the stream's acknowledgement is lost (the outcome is
unknown), the record is kept and the event re-published under the same Nats-Msg-Id until the
stream acknowledges it (a duplicate ack says it was there all along): a client's retry with the
same Idempotency-Key, and the gateway itself, converge to the one real outcome. The reconciler
(store.Reconciler) ends whatever stays queued past its deadline.
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
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from opentelemetry import propagate, trace

from services.gateway.auth import CLIENT, client_middleware, security_middlewares
from services.gateway.openapi import openapi_document
from services.gateway.store import Reconciler, ResultStore
from shared.bus import DUPLICATE_WINDOW_S, SUBJECT_REQUESTED, SUBJECT_STORED, Bus, progress_subject
from shared.cluster import SUMMARY_KEY
from shared.codes import CATALOGUE
from shared.health import Health
from shared.intake import RequestInvalid, parse_request
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
STREAMS_PER_CLIENT = 20  # open event streams one client address may hold at once
KV_READ_TIMEOUT_S = 2.0  # a read that takes longer is a NATS outage: answer 503 rather than hang
CONFIRM_EVERY_S = 1.0
RETRY_AFTER_S = "2"
SOURCE_TTL_S = 2.0  # the topology stage republishes its summary at most this often
# The UI loads only its own scripts; cytoscape sets style attributes, hence 'unsafe-inline' for styles.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
}

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
STORE: web.AppKey[ResultStore] = web.AppKey("store", ResultStore)
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams", set)
HEALTH: web.AppKey[Health] = web.AppKey("health", Health)
PENDING: web.AppKey[Pending] = web.AppKey("pending")
INTAKE: web.AppKey[Intake] = web.AppKey("intake")
OPEN_STREAMS: web.AppKey[dict[str, int]] = web.AppKey("open_streams", dict)


def error(status: int, message: str, **extra: Any) -> web.Response:
    # a 503 says when to come back (RFC 9110 15.6.4): the bus usually returns within seconds
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def bus_down(what: str = "the diagnosis bus (NATS)") -> web.Response:
    return error(503, f"{what} is unreachable; retry shortly")


class Pending:
    """Requested events whose publish outcome is unknown (the stream's ack never came): re-published
    under the same Nats-Msg-Id until one is acknowledged. Within the stream's duplicate window that
    cannot run a diagnosis twice; past it the reconciler decides."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.events: dict[str, tuple[float, StageEnvelope]] = {}

    def add(self, env: StageEnvelope) -> None:
        self.events.setdefault(env.id, (asyncio.get_running_loop().time(), env))

    async def publish(self, env: StageEnvelope) -> None:
        """Publish (again); raises when the outcome is still unknown, and then keeps it pending."""
        try:
            await self.bus.publish_model(SUBJECT_REQUESTED, env, msg_id=f"{env.id}:requested")
        except BaseException:
            self.add(env)
            raise
        self.events.pop(env.id, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CONFIRM_EVERY_S)
            for diagnosis_id, (since, env) in list(self.events.items()):
                if loop.time() - since > DUPLICATE_WINDOW_S * 0.9:
                    self.events.pop(diagnosis_id, None)  # no longer safe to repeat: the reconciler ends it
                    continue
                if not self.bus.connected:
                    break
                with contextlib.suppress(TimeoutError, nats.errors.Error):
                    await self.publish(env)
                    log.info("diagnosis %s queued (confirmed after an unknown outcome)", diagnosis_id,
                             extra=log_context(diagnosis_id=diagnosis_id, stage="gateway"))
                task = asyncio.current_task()  # a cancellation nats-py turned into an error: still stop
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError


# ------------------------------------------------------------------ handlers


async def healthz(request: web.Request) -> web.Response:
    return await request.app[HEALTH].healthz(request)


async def readyz(request: web.Request) -> web.Response:
    return await request.app[HEALTH].readyz(request)


class Conflict(Exception):
    """The Idempotency-Key (or diagnosis id) names a diagnosis of another request."""


class Intake:
    """Accepting a diagnosis: the KV record is created, then the requested event is published (its
    outcome may stay unknown: Pending re-publishes it). One path for the HTTP POST and for a batch
    the embedded stack submits in-process (services/batch.py); both hand it a request validated at
    their edge (shared.intake)."""

    def __init__(self, bus: Bus, store: ResultStore, pending: Pending) -> None:
        self.bus, self.store, self.pending = bus, store, pending
        self._source: tuple[float, str] | None = None

    async def source(self) -> str | None:
        """The cluster served now, re-read at most every SOURCE_TTL_S: it changes when the topology stage
        serves another cluster, not between two requests, and reading it was a KV round trip per POST."""
        loop = asyncio.get_running_loop()
        if self._source is not None and loop.time() - self._source[0] < SOURCE_TTL_S:
            return self._source[1]
        try:
            source = await asyncio.wait_for(self.store.current_source(), 3)
        except (TimeoutError, nats.errors.Error):
            return None  # the topology stage names it on the way
        self._source = (loop.time(), source) if source is not None else None
        return source

    async def accept(self, req: DiagnosisRequest, *, key: str | None = None,
                     diagnosis_id: str | None = None) -> Diagnosis:
        """The diagnosis stored and queued (or the finished one a retry names). `key`: a client's
        Idempotency-Key; `diagnosis_id`: the id a caller retrying in-process chose for its first attempt.
        Raises Conflict, or TimeoutError / nats.errors.Error when the record could not be stored."""
        store = self.store
        diagnosis = Diagnosis(id=diagnosis_id or new_id(), request=req, status=DiagnosisStatus.QUEUED,
                              created_at=now(), source=await self.source())
        existing = None
        if key is not None:
            # a retry after a 503 (or a lost 202) names the first attempt's diagnosis; its
            # requested event reuses that id's Nats-Msg-Id, so JetStream runs it once
            diagnosis.id = await asyncio.wait_for(store.claim(key, diagnosis.id), 3)
            existing = await store.get(diagnosis.id)
        if existing is None:
            try:
                await asyncio.wait_for(store.create(diagnosis), 3)
            except KeyWrongLastSequenceError:  # this id was stored by an earlier attempt
                existing = await store.get(diagnosis.id)
        if existing is not None:
            if existing.request != req:
                raise Conflict(diagnosis.id)
            diagnosis = existing
        if diagnosis.status != DiagnosisStatus.QUEUED:  # a retry of a finished diagnosis: nothing to queue
            return diagnosis
        env = StageEnvelope(id=diagnosis.id, request=diagnosis.request, created_at=diagnosis.created_at)
        try:
            await self.pending.publish(env)
        except (TimeoutError, nats.errors.Error) as exc:
            # The stream may hold it (its ack lost) or not. The record is stored, so the diagnosis is
            # accepted: the gateway re-publishes it until the stream confirms (and its reconciler
            # ends it as failed should that never happen); a retry with the same Idempotency-Key
            # names this very diagnosis. A 503 here would make a client without a key submit it twice.
            log.warning("diagnosis %s: queuing outcome unknown (%s); re-publishing", diagnosis.id,
                        type(exc).__name__, extra=log_context(diagnosis_id=diagnosis.id, stage="gateway"))
        log.info("diagnosis %s queued", diagnosis.id, extra=log_context(diagnosis_id=diagnosis.id, stage="gateway"))
        return diagnosis


async def create_diagnosis(request: web.Request) -> web.Response:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large: at most {MAX_BODY} bytes")
    try:
        req = parse_request(raw)
    except RequestInvalid as exc:
        message = f"request body is {exc}" if exc.status == 400 else str(exc)
        return error(exc.status, message, **({"fields": exc.fields} if exc.fields else {}))

    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        return error(422, "Idempotency-Key: 1 to 128 characters of letters, digits, '.', '_' or '-'",
                     fields=[{"field": "Idempotency-Key", "message": "1-128 of [A-Za-z0-9._-]"}])
    if not request.app[BUS].connected:
        return error(503, "the diagnosis bus (NATS) is unreachable; retry shortly")
    # The root span of the diagnosis (continuing a caller's traceparent, if any): publish_model
    # injects it into the NATS headers, so every stage's span joins this one trace.
    with tracer.start_as_current_span("netdiag.gateway.create_diagnosis", kind=trace.SpanKind.SERVER,
                                      context=propagate.extract(request.headers)) as span:
        try:
            diagnosis = await request.app[INTAKE].accept(req, key=key)
        except Conflict:
            return error(409, "Idempotency-Key was already used for a different request")
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("diagnosis not stored: %s", type(exc).__name__, extra=log_context(stage="gateway"))
            return error(503, f"the diagnosis bus (NATS) is unreachable; retry shortly ({type(exc).__name__})")
        span.set_attribute("netdiag.diagnosis_id", diagnosis.id)
    return _accepted(diagnosis)


def _accepted(diagnosis: Diagnosis) -> web.Response:
    location = f"/api/v1/diagnoses/{diagnosis.id}"
    return web.json_response(
        {"id": diagnosis.id, "status": diagnosis.status.value, "location": location},
        status=202, headers={"Location": location},
    )


async def _read(request: web.Request, diagnosis_id: str) -> Diagnosis | None:
    """A finished diagnosis from memory, else from the KV, bounded: raises TimeoutError /
    nats.errors.Error at once when NATS is away, so a GET never hangs on an outage."""
    store = request.app[STORE]
    if (done := store.cached(diagnosis_id)) is not None:
        return done
    if not request.app[BUS].connected:
        raise nats.errors.ConnectionReconnectingError
    return await asyncio.wait_for(store.get(diagnosis_id), KV_READ_TIMEOUT_S)


async def get_diagnosis(request: web.Request) -> web.Response:
    try:
        diagnosis = await _read(request, request.match_info["id"])
    except (TimeoutError, nats.errors.Error):
        return bus_down("the result store (NATS)")
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
    if not request.app[BUS].connected:
        return bus_down("the result store (NATS)")
    try:
        # the history of the cluster served now (an earlier `up` against another cluster is not this one's);
        # ?source=all lists every diagnosis, ?source=<name> another cluster's
        wanted = request.query.get("source") or await asyncio.wait_for(store.current_source(), KV_READ_TIMEOUT_S)
        ids = await asyncio.wait_for(store.ids(), KV_READ_TIMEOUT_S)
        if after:
            ids = [i for i in ids if i < after]
        found: list[Diagnosis] = []
        for start in range(0, len(ids), limit * 2):  # read in batches until one more than a page matched
            batch = await asyncio.gather(*(_read(request, i) for i in ids[start:start + limit * 2]))
            found += [d for d in batch if d is not None and wanted in ("all", d.source)]
            if len(found) > limit:
                break
    except (TimeoutError, nats.errors.Error):
        return bus_down("the result store (NATS)")
    items = found[:limit]
    body = {
        "items": [json.loads(d.model_dump_json(exclude={"result": {"paths"}})) for d in items],
        "next": items[-1].id if len(found) > limit else None,
    }
    return web.json_response(body)


async def diagnosis_events(request: web.Request) -> web.StreamResponse:
    """SSE: every progress event of the diagnosis (replayed from the stream), then the result."""
    bus, store = request.app[BUS], request.app[STORE]
    diagnosis_id = request.match_info["id"]
    if (refused := _stream_refused(request)) is not None:
        return refused
    try:
        if await _read(request, diagnosis_id) is None:
            return error(404, f"no diagnosis with id {diagnosis_id!r}")
        sub = await bus.js.subscribe(progress_subject(diagnosis_id), ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
    except (TimeoutError, nats.errors.Error):
        return bus_down()
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
    if (refused := _stream_refused(request)) is not None:
        return refused
    if not bus.connected:
        return bus_down()
    try:
        sub = await bus.subscribe(SUBJECT_STORED)
    except nats.errors.Error:
        return bus_down()
    resp = await _open_stream(request)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=SSE_IDLE_CHECK_S * 5)
            except TimeoutError:
                await resp.write(KEEPALIVE)
                continue
            data = await store.get_json(msg.data.decode())
            if data is not None:
                await resp.write(_sse("result", data.decode()))
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


def _stream_refused(request: web.Request) -> web.Response | None:
    """At most STREAMS_PER_CLIENT open event streams per client (auth.client_middleware's address):
    each holds a NATS subscription, so an unbounded number is a cheap way to exhaust the gateway."""
    if request.app[OPEN_STREAMS].get(request[CLIENT], 0) >= STREAMS_PER_CLIENT:
        return web.json_response({"error": f"too many open event streams: at most {STREAMS_PER_CLIENT} per client; "
                                           "close one first"}, status=429, headers={"Retry-After": "5"})
    return None


def _track_stream(request: web.Request) -> None:
    """Event streams end only when the client leaves: remember them so shutdown can end them
    (otherwise the server waits for each one to notice, keeping Ctrl-C slow), and count them per client."""
    task = asyncio.current_task()
    client, counts = request[CLIENT], request.app[OPEN_STREAMS]
    counts[client] = counts.get(client, 0) + 1

    def ended(t: asyncio.Task[Any]) -> None:
        request.app[STREAMS].discard(t)
        counts[client] -= 1
        if counts[client] <= 0:
            del counts[client]

    if task is not None:
        request.app[STREAMS].add(task)
        task.add_done_callback(ended)


async def _end_streams(app: web.Application) -> None:
    streams = app[STREAMS]  # (read apart from list(): mypy infers the key's type from the call's context)
    for task in list(streams):
        task.cancel()  # the stream handlers treat cancellation as the end of the stream


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "netdiag"  # not the framework and its version
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _background(app: web.Application) -> Any:
    """The re-publisher of unconfirmed requests and the reconciler, for the app's lifetime."""

    async def ctx(app: web.Application) -> Any:
        settings = app[BUS].settings
        reconciler = Reconciler(app[STORE], settings.pipeline_deadline_s, settings.reconcile_interval_s)
        tasks = [asyncio.create_task(app[PENDING].run()), asyncio.create_task(reconciler.run())]
        yield
        for task in tasks:
            task.cancel()
        # bounded: shutting the gateway down never waits on a loop that missed its cancellation
        await asyncio.wait(tasks, timeout=5)

    return ctx


async def cluster_summary(request: web.Request) -> web.Response:
    """The topology stage's cluster summary (shared/cluster.py), as it published it."""
    bus = request.app[BUS]
    try:
        kv = await bus.cluster_kv()
        entry = await kv.get(SUMMARY_KEY)
        body = await bus.unpack(entry.value or b"")  # a large cluster's summary lives in the object store
    except KeyNotFoundError:
        return error(404, "no cluster summary yet: the topology stage publishes it once its cluster model "
                          "is loaded (snapshot) or synced (live)")
    except (TimeoutError, nats.errors.Error):
        return bus_down("the cluster summary store (NATS)")
    return web.Response(body=body, content_type="application/json")


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


def create_app(bus: Bus, health: Health | None = None) -> web.Application:
    """`health`: what the probes look at (default: this app's own connection)."""
    settings = getattr(bus, "settings", None)
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[json_errors, client_middleware(settings), *security_middlewares(settings)])
    app[BUS] = bus
    app[STORE] = ResultStore(bus)
    app[STREAMS] = set()
    app[OPEN_STREAMS] = {}
    app[HEALTH] = health or Health([bus])
    app[PENDING] = Pending(bus)
    app[INTAKE] = Intake(bus, app[STORE], app[PENDING])
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(_security_headers)
    if settings is not None:
        app.cleanup_ctx.append(_background(app))
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
