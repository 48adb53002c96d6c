"""The stage runner: a durable pull consumer per stage, fetch → handle → publish → ack.

* Idempotent: the output carries `Nats-Msg-Id = <diagnosis id>:<stage>`, so a message
  re-handled after a crash publishes its output once (JetStream de-duplicates).
* Bounded redelivery: a handler error NAKs with back-off (longer for a bus error: NATS away
  or frozen, which is no verdict on the diagnosis); after `max_deliver` attempts the diagnosis
  ends as failed with the reason, so a poison message never vanishes and never loops.
* Failures travel down the pipeline: a stage that gives up publishes the envelope with its
  `error` on its own output subject, and the stages after it pass it on untouched. So only the
  simulator ever publishes `completed` (its NATS identity alone may: docs/security.md).
* Invalid events (a malformed envelope, an id not in new_id()'s format) are refused at the
  edge and counted (netdiag_rejected_events_total), never handled.
* Concurrent: one replica handles up to `max_inflight` messages at once (the collector
  waits seconds for agents); more replicas share the same durable consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from opentelemetry import propagate, trace
from pydantic import ValidationError

from shared import metrics
from shared.bus import PUBLISHED, STREAM, SUBJECT_COMPLETED, BlobUnreadable, Bus, is_transient, valid_id
from shared.logs import log_context
from shared.schemas import Diagnosis, DiagnosisStatus, StageEnvelope, now
from shared.security import SIGNATURE_HEADER, signature_valid

log = logging.getLogger("netdiag.stage")
tracer = trace.get_tracer("netdiag")

FINAL_MSG_ID = "{id}:final"  # one final event per diagnosis, whether it completed or failed
FINALISE_TRIES = 3  # deliveries kept in reserve to publish a failure
TRANSIENT_BACKOFF_MAX_S = 8.0
REPLICA = f"{socket.gethostname()}:{os.getpid()}"  # which process handled an attempt (progress events)
STALL_S = 30.0  # a runner whose fetch loop has not turned for this long is wedged: not alive
PULL_EXPIRES_S = 1.0  # a pull request lives this long: the fetch loop turns at least this often
PULL_GRACE_S = 0.5


class Stage(ABC):
    name: str
    input_subject: str
    output_subject: str | None  # None: a sink (the gateway's result store)
    signed_input = False  # True: with a result key configured, refuse events not signed with it

    @abstractmethod
    async def handle(self, env: StageEnvelope) -> StageEnvelope | None:
        """Do the stage's work. Raise only for infrastructure faults (the message is retried)."""

    async def close(self) -> None:
        """Release what the stage holds (watches, connections) when its runner stops."""
        return None  # most stages hold nothing

    def durable(self) -> str:
        return f"netdiag-{self.name}"


def _output_msg_id(stage: Stage, env: StageEnvelope) -> str:
    if stage.output_subject == SUBJECT_COMPLETED:
        return FINAL_MSG_ID.format(id=env.id)
    return f"{env.id}:{stage.name}"


async def publish_output(bus: Bus, stage: Stage, env: StageEnvelope) -> None:
    """The stage's output, de-duplicated by its Nats-Msg-Id; the final event signed when a key is set."""
    assert stage.output_subject is not None
    key = bus.settings.signing_key() if stage.output_subject == SUBJECT_COMPLETED else None
    await bus.publish_model(stage.output_subject, env, msg_id=_output_msg_id(stage, env), sign_key=key)


def backoff_s(exc: BaseException, attempt: int) -> float:
    """A bus error waits for the bus to come back (1, 2, 4, 8 s); a handler error retries soon."""
    if is_transient(exc):
        return min(TRANSIENT_BACKOFF_MAX_S, 2.0 ** (attempt - 1))
    return 0.1 * attempt


async def fail_diagnosis(bus: Bus, stage: Stage, env: StageEnvelope, reason: str) -> None:
    """Send the diagnosis on as failed: down the pipeline (the simulator turns it into the final
    event), or, from the result sink itself, straight into the results bucket."""
    failed = env.model_copy(update={"error": f"stage {stage.name} failed: {reason}", "result": None})
    if stage.output_subject is None:
        await mark_failed(bus, env.id, str(failed.error))
    else:
        await publish_output(bus, stage, failed)
    await bus.progress(env, stage.name, "failed", reason)


class StageRunner:
    def __init__(self, bus: Bus, stage: Stage) -> None:
        self.bus = bus
        self.stage = stage
        s = bus.settings
        self.max_deliver = s.max_deliver
        self.max_inflight = s.max_inflight
        self._inflight = 0
        self._freed = asyncio.Event()
        self._pull: Pull | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.rejected = 0
        self.last_poll = time.monotonic()  # the fetch loop's heartbeat (liveness)
        self.running = False
        self._awaiting_slot = False

    @property
    def alive(self) -> bool:
        """Still pulling: the loop turns (a pull request ends at least every PULL_EXPIRES_S) and the bus lives."""
        if not self.running or self.bus.lost.is_set():
            return False
        # waiting for a free slot is a busy replica, not a wedged one: its handlers' heartbeats speak for it
        return self._awaiting_slot or time.monotonic() - self.last_poll < STALL_S

    async def _subscribe(self) -> Pull:
        s = self.bus.settings
        config = ConsumerConfig(
            durable_name=self.stage.durable(), ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            # spare deliveries beyond max_deliver: they publish the failure if a replica died on the last try
            ack_wait=s.ack_wait_s, max_deliver=self.max_deliver + FINALISE_TRIES,
            filter_subject=self.stage.input_subject, max_ack_pending=max(1000, s.max_inflight * 4),
        )
        try:
            current = (await self.bus.js.consumer_info(STREAM, self.stage.durable())).config
        except nats.js.errors.NotFoundError:
            current = None
        # an existing durable consumer is reused as it is unless brought in line with the settings, or a
        # changed max_deliver/ack_wait would silently not apply
        if current is None or (current.ack_wait, current.max_deliver, current.max_ack_pending) != (
                config.ack_wait, config.max_deliver, config.max_ack_pending):
            await self.bus.js.add_consumer(STREAM, config)
        return await Pull.start(self.bus, self.stage.durable(), self._deliver)

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        self.running = True
        try:
            while not stop.is_set():
                self.last_poll = time.monotonic()
                if self.bus.lost.is_set():  # nothing more will ever arrive: end, so the process can exit
                    log.error("%s: stopping: %s", self.stage.name, self.bus.lost_reason,
                              extra=log_context(stage=self.stage.name))
                    break
                try:
                    if self._pull is None:
                        self._pull = await self._subscribe()
                    await self._free_slot(stopping)
                    if stop.is_set():
                        break
                    self.last_poll = time.monotonic()
                    # as many messages as there are free slots, delivered as they come: a burst arrives in
                    # one pull, and a lone message is handled the moment it is published
                    await self._pull.request(self.max_inflight - self._inflight, stopping)
                except (nats.errors.Error, OSError) as exc:
                    log.info("%s: fetch failed (%s); retrying", self.stage.name, exc,
                             extra=log_context(stage=self.stage.name))
                    await self._drop_pull()
                    await _sleep_or_stop(stop, 0.25)
        finally:  # also when the runner itself is cancelled: no pending wait outlives it
            self.running = False
            stopping.cancel()
            await self._drop_pull()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:  # unacked: JetStream redelivers them to another replica
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.stage.close()

    async def _free_slot(self, stopping: asyncio.Future[Any]) -> None:
        self._awaiting_slot = True
        try:
            while self._inflight >= self.max_inflight and not stopping.done():
                self._freed.clear()
                freed = asyncio.ensure_future(self._freed.wait())
                try:
                    await asyncio.wait({freed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    freed.cancel()
        finally:
            self._awaiting_slot = False

    async def _drop_pull(self) -> None:
        pull, self._pull = self._pull, None
        if pull is not None:
            await pull.close()

    def _deliver(self, msg: Msg) -> None:
        """A message of a pull: handled at once, in a slot of its own."""
        self._inflight += 1
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: message handling failed outside the handler", self.stage.name,
                      exc_info=task.exception(), extra=log_context(stage=self.stage.name))

    async def _process(self, msg: Msg) -> None:
        try:
            data = await self.bus.unpack(msg.data)
        except BlobUnreadable as exc:  # a packed envelope whose blob is gone: nothing to retry into shape
            await self._poison(msg, exc)
            return
        except (nats.errors.Error, TimeoutError) as exc:  # the bus, not the event: later
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=backoff_s(exc, msg.metadata.num_delivered))
            return
        env = PUBLISHED.take((msg.headers or {}).get("Nats-Msg-Id", ""), data)  # this process's own, validated
        if not isinstance(env, StageEnvelope):
            try:
                env = StageEnvelope.model_validate_json(data)
            except ValidationError as exc:
                await self._poison(msg, exc)
                return
        if self.stage.signed_input and not self._signed(msg):
            self.rejected += 1
            metrics.REJECTED_EVENTS.labels(self.stage.name, "unsigned").inc()
            log.error("%s: event for %s dropped: not signed with the result key", self.stage.name, env.id,
                      extra=log_context(diagnosis_id=env.id, stage=self.stage.name))
            await msg.term()
            return
        if env.error is not None and self.stage.output_subject is not None:
            await self._pass_failure(msg, env)
            return
        attempt = msg.metadata.num_delivered
        ctx = propagate.extract(dict(msg.headers or {}))
        started = time.perf_counter()
        with tracer.start_as_current_span(f"netdiag.{self.stage.name}", context=ctx) as span:
            span.set_attribute("netdiag.diagnosis_id", env.id)
            metrics.stage_received(self.stage.name, attempt)
            if attempt > self.max_deliver:
                await self._finalise(msg, env, "gave up after repeated errors")
                return
            await self.bus.progress(env, self.stage.name, "started", attempt=attempt, replica=REPLICA)
            try:
                with _keep_alive(msg, self.bus.settings.ack_wait_s):
                    out = await self.stage.handle(env)
                elapsed = round((time.perf_counter() - started) * 1000, 3)
                # said before the output goes out, on this connection: the next stage's events (it may run in
                # this very process, done before this one's ack) always come after it in the stream
                await self.bus.progress(env, self.stage.name, "done", elapsed_ms=elapsed)
                if out is not None and self.stage.output_subject:
                    # a new dict: the input's may be the very one its publisher holds (shared.bus.PUBLISHED)
                    out = out.model_copy(update={"timings_ms": {**out.timings_ms, self.stage.name: elapsed}})
                    await publish_output(self.bus, self.stage, out)
            except Exception as exc:  # any handler fault: retry, then fail the diagnosis with the reason
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if is_transient(exc) and isinstance(exc, nats.errors.Error):
                    reason = f"the message bus did not answer ({reason})"
                metrics.STAGE_ERRORS.labels(self.stage.name).inc()
                log.warning("%s: diagnosis %s attempt %d failed: %s", self.stage.name, env.id, attempt, reason,
                            extra=log_context(diagnosis_id=env.id, stage=self.stage.name))
                span.record_exception(exc)
                if attempt >= self.max_deliver:
                    await self._finalise(msg, env, reason)
                else:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.nak(delay=backoff_s(exc, attempt))
                return
        await msg.ack()
        self.handled += 1
        metrics.STAGE_SECONDS.labels(self.stage.name).observe(time.perf_counter() - started)

    async def _finalise(self, msg: Msg, env: StageEnvelope, reason: str) -> None:
        """End the diagnosis as failed; if even that cannot be published, NAK so one of the
        spare deliveries tries again (never leave it queued forever)."""
        try:
            await fail_diagnosis(self.bus, self.stage, env, reason)
            await msg.ack()
        except (nats.errors.Error, TimeoutError) as exc:
            log.error("%s: could not fail diagnosis %s (%s); retrying", self.stage.name, env.id, exc,
                      extra=log_context(diagnosis_id=env.id, stage=self.stage.name))
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)

    def _signed(self, msg: Msg) -> bool:
        key = self.bus.settings.signing_key()
        return key is None or signature_valid(key, msg.data, (msg.headers or {}).get(SIGNATURE_HEADER))

    async def _pass_failure(self, msg: Msg, env: StageEnvelope) -> None:
        """An earlier stage gave up: carry its failure on, untouched, towards the final event."""
        assert self.stage.output_subject is not None
        try:
            await publish_output(self.bus, self.stage, env)
        except (nats.errors.Error, TimeoutError) as exc:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=backoff_s(exc, msg.metadata.num_delivered))
            return
        await msg.ack()

    async def _poison(self, msg: Msg, exc: ValidationError | BlobUnreadable) -> None:
        """An unparseable event cannot be retried into shape: terminate it, count it, and fail its
        diagnosis when it names a real one, so it is visible rather than lost. A field used in a subject
        or key (the id) that is not in our own format is never used at all."""
        try:
            raw = json.loads(msg.data)
            diagnosis_id = raw.get("id") if isinstance(raw, dict) else None
        except ValueError:
            diagnosis_id = None
        diagnosis_id = diagnosis_id if valid_id(diagnosis_id) else None
        self.rejected += 1
        metrics.REJECTED_EVENTS.labels(self.stage.name, "invalid").inc()
        log.error("%s: invalid event dropped: %s", self.stage.name, _short_errors(exc),
                  extra=log_context(diagnosis_id=diagnosis_id, stage=self.stage.name))
        if diagnosis_id is not None:
            reason = f"stage {self.stage.name} received an invalid event: {_short_errors(exc, 1)}"
            with contextlib.suppress(nats.errors.Error, TimeoutError, ValueError):
                await self._fail_stored(diagnosis_id, reason)
        await msg.term()

    async def _fail_stored(self, diagnosis_id: str, reason: str) -> None:
        """Fail the diagnosis the gateway stored under this id (its request is read back from there)."""
        try:
            entry = await self.bus.kv.get(diagnosis_id)
        except nats.js.errors.KeyNotFoundError:
            return  # never accepted by the gateway: nothing to fail
        if not entry.value:
            return
        stored = Diagnosis.model_validate_json(entry.value)
        if stored.status != DiagnosisStatus.QUEUED:
            return
        env = StageEnvelope(id=diagnosis_id, request=stored.request, created_at=stored.created_at)
        await fail_diagnosis(self.bus, self.stage, env, reason.removeprefix(f"stage {self.stage.name} failed: "))


def _short_errors(exc: ValidationError | BlobUnreadable, n: int = 3) -> str:
    """Pydantic's errors without the input (which may be 5,000 characters of id)."""
    if isinstance(exc, BlobUnreadable):
        return str(exc)
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:n])


async def mark_failed(bus: Bus, diagnosis_id: str, reason: str) -> None:
    """Turn a stored, still-queued diagnosis into a failed one (the result sink's own last resort;
    the gateway's reconciler does the same for diagnoses past their deadline)."""
    if not valid_id(diagnosis_id):
        return
    try:
        entry = await bus.kv.get(diagnosis_id)
    except nats.js.errors.KeyNotFoundError:
        return  # unknown id: nothing was stored under it
    if not entry.value:
        return
    stored = Diagnosis.model_validate_json(await bus.unpack(entry.value))
    if stored.status == DiagnosisStatus.QUEUED:
        failed = stored.model_copy(update={"status": DiagnosisStatus.FAILED, "error": reason, "completed_at": now()})
        # compare-and-set: a result stored meanwhile wins over this failure
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await bus.kv.update(diagnosis_id, failed.model_dump_json().encode(), last=entry.revision)


@contextlib.contextmanager
def _keep_alive(msg: Msg, ack_wait_s: float) -> Iterator[None]:
    """Tell JetStream the message is still being worked on, so a handler that runs longer
    than ack_wait (a slow API sync, a collection deadline) is not redelivered meanwhile. A timer,
    not a task per message: most handlers finish long before the first beat."""
    loop = asyncio.get_running_loop()
    beats: set[asyncio.Task[None]] = set()
    timer: asyncio.TimerHandle | None = None

    async def in_progress() -> None:
        with contextlib.suppress(nats.errors.Error):
            await msg.in_progress()

    def beat() -> None:
        nonlocal timer
        task = loop.create_task(in_progress())
        beats.add(task)
        task.add_done_callback(beats.discard)
        timer = loop.call_later(ack_wait_s / 4, beat)

    timer = loop.call_later(ack_wait_s / 4, beat)
    try:
        yield
    finally:
        timer.cancel()  # the latest one: beat() replaces it each time


class ConsumerGone(nats.errors.Error):
    """The stage's durable consumer no longer answers pulls: the runner makes it again."""


class Pull:
    """One durable consumer pulled through an inbox of our own: a request for `n` messages (JetStream
    delivers them as they are published, until `n` came or the request expires), each handed to
    `deliver` the moment it arrives. One request at a time, for at most the free slots, so a replica
    never holds more than it can handle; a burst comes in one round trip instead of one per message."""

    def __init__(self, bus: Bus, durable: str, deliver: Callable[[Msg], None]) -> None:
        self.bus, self.deliver = bus, deliver
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}"
        self.inbox = bus.nc.new_inbox()
        self._sub: Subscription | None = None
        self._wanted = 0
        self._over = asyncio.Event()
        self._gone = ""  # why the consumer cannot be pulled (deleted, no responder): made again by the runner

    @classmethod
    async def start(cls, bus: Bus, durable: str, deliver: Callable[[Msg], None]) -> Pull:
        pull = cls(bus, durable, deliver)
        pull._sub = await bus.subscribe(pull.inbox, cb=pull._on_message)
        return pull

    async def request(self, n: int, stopping: asyncio.Future[Any]) -> None:
        """Ask for up to `n` messages; return once they came, the request expired, or the runner stops."""
        self._wanted = n
        self._over.clear()
        body = {"batch": n, "expires": int(PULL_EXPIRES_S * 1e9)}
        await self.bus.nc.publish(self.subject, json.dumps(body).encode(), reply=self.inbox)
        over = asyncio.ensure_future(self._over.wait())
        try:
            # the server ends the request itself (408) at expiry; the grace covers a lost status
            await asyncio.wait({over, stopping}, timeout=PULL_EXPIRES_S + PULL_GRACE_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
            self._wanted = 0
        if self._gone:
            raise ConsumerGone(self._gone)

    async def _on_message(self, msg: Msg) -> None:
        status = (msg.headers or {}).get(Header.STATUS)
        if status is None:
            self._wanted -= 1
            if self._wanted <= 0:
                self._over.set()
            self.deliver(msg)
        elif status != "100":  # 408 expired, 409 (max waiting, consumer deleted, leader change): request over
            description = (msg.headers or {}).get(Header.DESCRIPTION, "")
            if status == "503" or (status == "409" and "deleted" in description.lower()):
                self._gone = f"{self.subject}: {status} {description or 'no responders'}"
            self._over.set()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_stages(bus: Bus, stages: list[Stage], stop: asyncio.Event) -> None:
    await asyncio.gather(*(StageRunner(bus, s).run(stop) for s in stages))
