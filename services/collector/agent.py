"""The node agent: answers `netdiag.node.<node>.collect` with a reference to this node's dump.

Request/reply on NATS, in the queue group `netdiag-agent-<node>` (two agents per node are
safe: one answers). The dump goes to the JetStream object store (gzip JSON); the reply is
small. The agent runs in its node's host network namespace — or, in the lab, treats a named
netns as that (`--netns`) — and only ever reads. It refuses requests naming another node.
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

from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, ValidationError

from services.collector.reader import collect_node, warm_host_nft_cache
from services.collector.reader.netns import host_ref
from shared.bus import Bus, node_collect_subject
from shared.config import Settings
from shared.schemas import BlobRef

log = logging.getLogger("netdiag.agent")

NFT_REFRESH_S = 10.0  # the standalone agent's minimum interval between background nft reads
NFT_POLL_S = 1.0
M_MMAP_THRESHOLD = -3  # glibc mallopt(3)
MMAP_THRESHOLD_BYTES = 256 * 1024
MAX_DUMP_BYTES = 32 * 1024 * 1024  # compressed; NATS object store chunks it, but bounded on purpose
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class CollectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=253)
    diagnosis_id: str | None = Field(None, max_length=64)
    pod_ips: dict[IPvAnyAddress, str] = Field(
        default_factory=dict, max_length=100_000, description="pod IP → 'namespace/name', to name pod namespaces")


class CollectReply(BaseModel):
    node: str
    ok: bool
    blob: BlobRef | None = None
    error: str | None = None
    duration_ms: float = 0.0
    namespaces: int = 0
    size: int = Field(0, description="uncompressed JSON bytes")


def queue_group(node: str) -> str:
    return f"netdiag-agent-{node}"


def blob_name(node: str, diagnosis_id: str | None) -> str:
    """Keyed by diagnosis and node, so a redelivered request overwrites rather than piles up."""
    key = _SAFE.sub("_", diagnosis_id) if diagnosis_id else f"adhoc-{time.time_ns()}"
    return f"nodes/{key}/{_SAFE.sub('_', node)}.json.gz"


class NodeAgent:
    """nft_refresh_s: keep the host's nft rules read ahead (see `_keep_nft_rules_read`), at
    most one re-read per that many seconds; None (the default in-process, e.g. the embedded
    lab stack) reads them only when asked."""

    def __init__(self, bus: Bus, node: str, netns: str | None = None,
                 max_dump_bytes: int = MAX_DUMP_BYTES, nft_refresh_s: float | None = None) -> None:
        self.bus = bus
        self.node = node
        self.netns = netns
        self.max_dump_bytes = max_dump_bytes
        self.nft_refresh_s = nft_refresh_s
        self._sub = None
        self._refresher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one collection at a time: bounded CPU and memory per node

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(node_collect_subject(self.node), queue=queue_group(self.node),
                                                cb=self._on_request)
        await self.bus.nc.flush()
        if self.nft_refresh_s is not None:
            self._refresher = asyncio.create_task(self._keep_nft_rules_read(self.nft_refresh_s))

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

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
        reply = await self.answer(msg.data)
        if msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    async def answer(self, data: bytes) -> CollectReply:
        try:
            request = CollectRequest.model_validate_json(data)
        except ValidationError as exc:
            return CollectReply(node=self.node, ok=False, error=f"invalid request: {exc.errors()[:3]}")
        if request.node != self.node:
            return CollectReply(node=self.node, ok=False,
                                error=f"this agent serves node {self.node!r}, not {request.node!r}")
        try:
            async with self._lock:
                return await self._collect(request)
        except Exception as exc:  # the requester gets the reason instead of a timeout
            log.exception("collection failed")
            return CollectReply(node=self.node, ok=False, error=f"{type(exc).__name__}: {exc}")

    async def _collect(self, request: CollectRequest) -> CollectReply:
        pod_ips = {str(ip): pod for ip, pod in request.pod_ips.items()}
        dump = await asyncio.to_thread(collect_node, self.node, self.netns, pod_ips)
        duration_ms, namespaces = dump.duration_ms, 1 + len(dump.pods)
        raw = dump.model_dump_json(exclude_none=True).encode()
        raw_size = len(raw)
        data = await asyncio.to_thread(gzip.compress, raw, 6)
        del raw, dump  # the dump can be MBs: keep only the compressed form while storing it
        if len(data) > self.max_dump_bytes:
            return CollectReply(node=self.node, ok=False, duration_ms=duration_ms,
                                error=f"dump of {len(data)} compressed bytes exceeds the limit of "
                                      f"{self.max_dump_bytes}")
        ref = await self.bus.put_blob(blob_name(self.node, request.diagnosis_id), data)
        return CollectReply(node=self.node, ok=True, blob=ref, duration_ms=duration_ms,
                            namespaces=namespaces, size=raw_size)


async def request_dump(bus: Bus, node: str, timeout: float, *, diagnosis_id: str | None = None,
                       pod_ips: dict[str, str] | None = None) -> CollectReply:
    """Ask node's agent for a dump (client side). Raises TimeoutError / NoRespondersError when
    nobody answers in time; an invalid reply becomes a failed CollectReply."""
    request = CollectRequest(node=node, diagnosis_id=diagnosis_id, pod_ips=pod_ips or {})  # type: ignore[arg-type]
    msg = await bus.nc.request(node_collect_subject(node), request.model_dump_json().encode(), timeout=timeout)
    try:
        return CollectReply.model_validate_json(msg.data)
    except ValidationError as exc:
        return CollectReply(node=node, ok=False, error=f"invalid reply: {exc.errors()[:2]}")


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
    bus = await Bus.connect(name=f"agent-{node}", settings=settings)
    agent = NodeAgent(bus, node, netns, nft_refresh_s=NFT_REFRESH_S)
    try:
        await agent.start()
        log.info("agent for node %s serving %s", node, node_collect_subject(node))
        await stop.wait()
    finally:
        await agent.stop()
        await bus.close()
