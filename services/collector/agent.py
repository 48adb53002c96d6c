"""The node agent: answers `netdiag.node.<node>.collect` with a reference to this node's dump.

Request/reply on NATS, in the queue group `netdiag-agent-<node>` (two agents per node are
safe: one answers). The dump goes to the JetStream object store (gzip JSON); the reply is
small. The agent runs in its node's host network namespace — or, in the lab, treats a named
netns as that (`--netns`) — and only ever reads. It refuses requests naming another node.

Requests are answered concurrently: one that arrives while a collection covering its pods is
running shares that collection (each request still gets its own blob); others wait their turn,
and a request whose requester has stopped waiting (its `deadline` passed) is answered
"expired" without collecting, so the agent never works through a backlog nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gzip
import logging
import math
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from services.collector.dropmetrics import DropMetrics
from services.collector.droptrace import DropCounter, DropTracer
from services.collector.probe import ProbeLimits, Prober
from services.collector.reader import collect_node, warm_host_nft_cache
from services.collector.reader.netns import host_ref
from shared.bus import Bus, is_transient, node_collect_subject
from shared.collect import CollectReply, CollectRequest
from shared.collect import request_dump as request_dump  # the client side, re-exported
from shared.config import Settings
from shared.health import Health
from shared.live import (
    DropsReply,
    DropsRequest,
    ProbeReply,
    ProbeRequest,
    TracingStatus,
    node_drops_subject,
    node_probe_subject,
)
from shared.logs import log_context
from shared.metrics import start_metrics_server
from shared.service import BusLost, start_health_server

log = logging.getLogger("netdiag.agent")

NFT_REFRESH_S = 10.0  # the standalone agent's minimum interval between background nft reads
NFT_POLL_S = 1.0
M_MMAP_THRESHOLD = -3  # glibc mallopt(3)
MMAP_THRESHOLD_BYTES = 256 * 1024
MAX_DUMP_BYTES = 32 * 1024 * 1024  # compressed; NATS object store chunks it, but bounded on purpose
CLOCK_SKEW_S = 1.0  # a deadline is the requester's wall clock: allow NTP-level skew between nodes
TRACE_SETTLE_S = 0.05  # bpftrace prints each event as its perf buffer wakes it (line-buffered)
TRACE_SKEW_S = 0.5  # a drops window spans nodes' wall clocks
TRACER_WAIT_S = 20.0  # a probe waits this long for a tracer still attaching (bpftrace compiles for seconds)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class _Dump:
    """One collection, compressed: what concurrent requests share."""

    data: bytes
    duration_ms: float
    namespaces: int
    size: int


@dataclass
class _Collection:
    pod_ips: dict[str, str]
    task: asyncio.Task[_Dump]


def queue_group(node: str) -> str:
    return f"netdiag-agent-{node}"


def node_blob_name(diagnosis_id: str | None) -> str:
    """A dump in the node's own bucket (the agent's): unique per collection, since an agent never
    replaces an object (that would take reading and purging the bucket, rights it does not have); the
    bucket's TTL clears them. Short, as it becomes a subject token (base64) after the bucket's name."""
    key = _SAFE.sub("_", diagnosis_id) if diagnosis_id else "adhoc"
    return f"{key}/{time.time_ns():x}.json.gz"


class NodeAgent:
    """nft_refresh_s: keep the host's nft rules read ahead (see `_keep_nft_rules_read`), at
    most one re-read per that many seconds; None (the default in-process, e.g. the embedded
    lab stack) reads them only when asked."""

    def __init__(self, bus: Bus, node: str, netns: str | None = None,
                 max_dump_bytes: int = MAX_DUMP_BYTES, nft_refresh_s: float | None = None,
                 clock_skew_s: float = CLOCK_SKEW_S, live: bool = False,
                 probe_limits: ProbeLimits | None = None) -> None:
        self.bus = bus
        self.node = node
        self.netns = netns
        self.max_dump_bytes = max_dump_bytes
        self.nft_refresh_s = nft_refresh_s
        self.clock_skew_s = clock_skew_s
        self.collections = 0  # collections run (shared ones once)
        self._sub: Subscription | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one collection at a time: bounded CPU and memory per node
        self._current: _Collection | None = None
        self._answering: set[asyncio.Task[None]] = set()
        # live probes (off unless asked): the prober and the process's drop tracer
        self.live = live
        self.prober = Prober(node, netns, probe_limits) if live else None
        self.tracer: DropTracer | None = None
        self._tracer_task: asyncio.Task[DropTracer] | None = None
        self._live_subs: list[object] = []
        self.drop_metrics: DropMetrics | None = None  # names pods in the drop counters after each collection

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(node_collect_subject(self.node), queue=queue_group(self.node),
                                             cb=self._on_request)
        if self.live:
            # the tracer compiles for seconds: probes are answered meanwhile, their drops say "starting"
            self._tracer_task = asyncio.create_task(asyncio.to_thread(DropTracer.acquire))
            for subject, handler in ((node_probe_subject(self.node), self._on_probe),
                                     (node_drops_subject(self.node), self._on_drops)):
                self._live_subs.append(await self.bus.subscribe(subject, queue=queue_group(self.node),
                                                                cb=self._answer_in_task(handler)))
        if self.nft_refresh_s is not None:
            self._refresher = asyncio.create_task(self._keep_nft_rules_read(self.nft_refresh_s))

    async def tracing_ready(self) -> TracingStatus:
        """Wait for the drop tracer to attach (or to fail); its status."""
        if self._tracer_task is None:
            return TracingStatus(available=False, reason="live probes are off on this agent")
        self.tracer = await asyncio.shield(self._tracer_task)
        return self.tracer.status

    def tracing_status(self) -> TracingStatus:
        if self._tracer_task is None:
            return TracingStatus(available=False, reason="live probes are off on this agent")
        if not self._tracer_task.done():
            return TracingStatus(available=False, reason="the drop tracer is still starting on this node")
        return self._tracer_task.result().status

    def _answer_in_task(self, handler: Callable[[bytes], Awaitable[BaseModel]]) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            async def respond() -> None:
                reply = await handler(msg.data)
                if msg.reply:
                    await msg.respond(reply.model_dump_json().encode())

            task = asyncio.create_task(respond())
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

        return on_msg

    async def _on_probe(self, data: bytes) -> ProbeReply:
        assert self.prober is not None
        try:
            request = ProbeRequest.model_validate_json(data)
        except ValidationError as exc:
            return ProbeReply(node=self.node, ok=False, error=f"invalid request: {exc.errors()[:3]}")
        if self._tracer_task is not None and not self._tracer_task.done():
            # an agent that just started: probe once its tracer watches, or the drops go unseen
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tracer_task), TRACER_WAIT_S)
        reply = await self.prober.probe(request)
        reply.tracing = self.tracing_status()
        return reply

    async def _on_drops(self, data: bytes) -> DropsReply:
        try:
            request = DropsRequest.model_validate_json(data)
        except ValidationError as exc:
            return DropsReply(node=self.node, ok=False, error=f"invalid request: {exc.errors()[:3]}")
        if request.node != self.node:
            return DropsReply(node=self.node, ok=False, error=f"this agent serves node {self.node!r}")
        status = self.tracing_status()
        if not status.available or self._tracer_task is None:
            return DropsReply(node=self.node, ok=True, tracing=status)
        tracer = self._tracer_task.result()
        # events of the probe's last packets may still be in bpftrace's buffers
        await asyncio.sleep(max(0.0, request.until + TRACE_SETTLE_S - time.time()))
        assert self.prober is not None
        inodes = {ref.inode for _, ref, _ in await self.prober.namespaces()}
        events = tracer.matching(request.sport, request.protocol, request.since - TRACE_SKEW_S,
                                 request.until + TRACE_SKEW_S, inodes)
        return DropsReply(node=self.node, ok=True, events=events, tracing=status)

    async def stop(self) -> None:
        for sub in self._live_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        self._live_subs = []
        if self._tracer_task is not None:
            with contextlib.suppress(Exception):
                tracer = await self._tracer_task
                await asyncio.to_thread(tracer.release)
            self._tracer_task = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)

    async def _keep_nft_rules_read(self, min_interval_s: float) -> None:
        """`iptables-nft-save` takes ~1.3 s for 5,000 Services, longer than a whole warm
        collection. So the agent reads the host's nft rules at start and again soon after
        they change (polling the generation id costs ~1 ms), at most once per min_interval_s
        (bounded CPU under kube-proxy churn); a diagnosis then usually finds them cached. A
        request arriving mid-read reads its pods meanwhile and waits only for that read
        (`NftCache.reading`), so the agent lock is not needed here."""
        last_read = -math.inf
        while True:
            if time.monotonic() - last_read >= min_interval_s:
                try:
                    if await asyncio.to_thread(warm_host_nft_cache, self.netns):
                        last_read = time.monotonic()
                except Exception:  # a request will report the same problem with its context
                    log.debug("reading nft rules ahead failed", exc_info=True)
                    last_read = time.monotonic()
            await asyncio.sleep(NFT_POLL_S)

    async def _on_request(self, msg: Msg) -> None:
        # nats-py awaits a callback before handing over the next message: answer in a task, so
        # a request arriving mid-collection can share it or be found expired at once
        task = asyncio.create_task(self._respond(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _respond(self, msg: Msg) -> None:
        reply = await self.answer(msg.data)
        if msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    def _expired(self, request: CollectRequest) -> CollectReply | None:
        late = time.time() - (request.deadline or math.inf)
        if late <= self.clock_skew_s:
            return None
        return CollectReply(node=self.node, ok=False, error=f"expired: the requester's deadline passed {late:.1f}s "
                            "ago by this node's clock; not collected")

    async def answer(self, data: bytes) -> CollectReply:
        try:
            request = CollectRequest.model_validate_json(data)
        except ValidationError as exc:
            return CollectReply(node=self.node, ok=False, error=f"invalid request: {exc.errors()[:3]}")
        if request.node != self.node:
            return CollectReply(node=self.node, ok=False,
                                error=f"this agent serves node {self.node!r}, not {request.node!r}")
        expired = self._expired(request)
        if expired is not None:
            return expired
        try:
            dump = await self._shared_dump(request)
            return dump if isinstance(dump, CollectReply) else await self._store(request, dump)
        except Exception as exc:  # the requester gets the reason instead of a timeout
            log.exception("collection failed", extra=log_context(diagnosis_id=request.diagnosis_id, node=self.node))
            return CollectReply(node=self.node, ok=False, error=f"{type(exc).__name__}: {exc}",
                                retryable=is_transient(exc))

    async def _shared_dump(self, request: CollectRequest) -> _Dump | CollectReply:
        """Join the running collection when it names every pod this request names; else wait for
        the lock and run one (unless the request expired while waiting: that reply instead)."""
        pod_ips = {str(ip): pod for ip, pod in request.pod_ips.items()}
        current = self._current
        if current is not None and not current.task.done() and pod_ips.items() <= current.pod_ips.items():
            return await asyncio.shield(current.task)  # one requester giving up must not cancel the others'
        async with self._lock:
            expired = self._expired(request)
            if expired is not None:
                return expired
            task = asyncio.create_task(self._dump(pod_ips))
            self._current = _Collection(pod_ips, task)
            try:
                return await asyncio.shield(task)
            finally:
                self._current = None  # not keep the last dump's bytes around

    async def _dump(self, pod_ips: dict[str, str]) -> _Dump:
        self.collections += 1
        dump = await asyncio.to_thread(collect_node, self.node, self.netns, pod_ips)
        if self.drop_metrics is not None:
            self.drop_metrics.pods.update({p.inode: p.pod for p in dump.pods if p.inode and p.pod})
        duration_ms, namespaces = dump.duration_ms, 1 + len(dump.pods)
        raw = dump.model_dump_json(exclude_none=True).encode()
        raw_size = len(raw)
        del dump  # the dump can be MBs: keep only the compressed form while storing it
        data = await asyncio.to_thread(gzip.compress, raw, 6)
        return _Dump(data, duration_ms, namespaces, raw_size)

    async def _store(self, request: CollectRequest, dump: _Dump) -> CollectReply:
        if len(dump.data) > self.max_dump_bytes:
            return CollectReply(node=self.node, ok=False, duration_ms=dump.duration_ms,
                                error=f"dump of {len(dump.data)} compressed bytes exceeds the limit of "
                                      f"{self.max_dump_bytes}")
        ref = await self.bus.put_node_blob(self.node, node_blob_name(request.diagnosis_id), dump.data)
        return CollectReply(node=self.node, ok=True, blob=ref, duration_ms=dump.duration_ms,
                            namespaces=dump.namespaces, size=dump.size)


def _return_big_buffers_to_the_kernel() -> None:
    """Each collection allocates MB-sized texts (iptables-save output, the JSON) in a different
    thread's malloc arena; with glibc's default sliding mmap threshold those stay in the arenas
    and the agent's RSS grew by ~17 MB per request up to ~125 MB. A fixed threshold serves them
    with mmap, so they go back on free (measured with bench/collector.py)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


async def run_agent(settings: Settings, node: str, netns: str | None = None,
                    stop: asyncio.Event | None = None) -> None:
    """`netdiag agent --node NAME [--netns NS]`: serve until stop is set (or SIGINT/SIGTERM)."""
    if stop is None:  # standalone: signals stop us; embedded, the caller owns the signals
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    if netns:
        host_ref(netns)  # fail at start, clearly, if the namespace does not exist
    _return_big_buffers_to_the_kernel()
    bus = await Bus.connect_agent(node, settings)
    agent = NodeAgent(bus, node, netns, nft_refresh_s=NFT_REFRESH_S, live=settings.live_probe,
                      probe_limits=ProbeLimits.of(settings))
    health = await start_health_server(Health([bus]), settings.health_port)
    metrics = await _start_drop_metrics(settings, agent) if settings.drop_metrics else None
    try:
        await agent.start()
        log.info("agent for node %s serving %s", node, node_collect_subject(node), extra=log_context(node=node))
        ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.lost.wait())]
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        for end in ends:
            end.cancel()
        if bus.lost.is_set():  # only a new process reconnects: exit so the DaemonSet restarts it
            raise BusLost(bus.lost_reason)
    finally:
        if health is not None:
            await health.cleanup()
        await agent.stop()
        await bus.close()
        if metrics is not None:
            metrics.unregister()
            await asyncio.to_thread(metrics.counter.stop)


async def _start_drop_metrics(settings: Settings, agent: NodeAgent) -> DropMetrics:
    """Kernel drop counters on the metrics port; when tracing is impossible here, say why and go on."""
    counter = DropCounter(settings.drop_metrics_interval_s)
    status = await asyncio.to_thread(counter.start)
    if not status.available:
        log.warning("drop metrics unavailable: %s", status.reason)
    metrics = DropMetrics(agent.node, counter, host_ref(agent.netns).inode)
    agent.drop_metrics = metrics
    metrics.register()
    start_metrics_server(settings)
    return metrics
