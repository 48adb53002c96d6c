"""`--batch FILE`: one JSON request per line in, one JSON document per line out, same order.

Streamed: the input is read lazily and each result is printed as soon as it and every line
before it are done, so 10,000 lines use the memory of a few dozen. At most `concurrency`
diagnoses are in flight and at most `2 * concurrency` lines are held (in flight or finished,
waiting for an earlier one). Each line is validated exactly as the gateway validates a POST
body (shared.intake); a bad line becomes that line's error object, in its place, and the other
lines still run.

Exit status: the highest status any line would have had on its own (0 REACHABLE, 1
UNREACHABLE, 2 AMBIGUOUS/UNDETERMINED, 3 an invalid line, 4 a diagnosis that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from services.client import DEFAULT_WAIT_S, EXIT_SYSTEM, EXIT_USAGE, SUBMIT_RETRIES, CommandError, Gateway

if TYPE_CHECKING:  # the embedded stack and the bus load only for a batch that runs one
    from services.stack import EmbeddedStack
    from shared.bus import Bus

log = logging.getLogger("netdiag.batch")

VERDICT_EXIT = {"REACHABLE": 0, "UNREACHABLE": 1, "AMBIGUOUS": 2, "UNDETERMINED": 2}
SNIFF_BYTES = 8192
READ_CHUNK = 64 * 1024


def open_batch(spec: str) -> IO[bytes]:
    """The batch input, checked before anything starts: one clear line for a missing file, a
    directory or binary data (exit 3)."""
    if spec == "-":
        return sys.stdin.buffer
    path = Path(spec)
    if path.is_dir():
        raise CommandError(f"--batch {spec}: is a directory; expected a file with one JSON request per line",
                           EXIT_USAGE)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise CommandError(f"--batch {spec}: no such file", EXIT_USAGE) from None
    except OSError as exc:
        raise CommandError(f"--batch {spec}: cannot read it ({exc.strerror})", EXIT_USAGE) from None
    head = fh.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(fh, "peek") else b""
    if b"\0" in head:
        fh.close()
        raise CommandError(f"--batch {spec}: binary data, not text; expected one JSON request per line",
                           EXIT_USAGE)
    return fh


def _line(n: int, raw: bytes) -> tuple[int, Any] | None:
    """(line number, DiagnosisRequest | error object) of one input line; None when it is blank."""
    from shared.intake import RequestInvalid, parse_request

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return n, {"line": n, "error": f"line {n}: not UTF-8 text"}
    if not text.strip():
        return None
    try:
        return n, parse_request(text)
    except RequestInvalid as exc:
        if exc.fields:
            fields = "; ".join(f"{f['field']}: {f['message']}" for f in exc.fields)
            return n, {"line": n, "error": f"line {n}: {fields}", "fields": exc.fields}
        return n, {"line": n, "error": f"line {n}: {exc}"}


def validated(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, DiagnosisRequest | error object) per non-blank line, lazily."""
    for n, raw in enumerate(fh, 1):
        if (item := _line(n, raw)) is not None:
            yield item


async def validated_async(fh: IO[bytes]) -> AsyncIterator[tuple[int, Any]]:
    """validated(), for a caller on an event loop."""
    n = 0
    async for raw in _lines_async(fh):
        n += 1
        if (item := _line(n, raw)) is not None:
            yield item


async def _lines_async(fh: IO[bytes]) -> AsyncIterator[bytes]:
    """The input's lines. A file is read directly; a pipe or a terminal in a thread, so a slow writer
    never stalls the loop (which, embedded, also runs every stage), a chunk at a time: whatever has
    arrived (read1), so a line is taken as soon as it is written, and a fast writer costs one thread hop
    per 64 KiB, not one per line."""
    try:
        regular = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
    except (OSError, ValueError):  # no file descriptor (an in-memory stream): nothing to wait for
        regular = True
    if regular or not hasattr(fh, "read1"):
        while raw := (fh.readline() if regular else await asyncio.to_thread(fh.readline)):
            yield raw
        return
    pending = b""
    while chunk := await asyncio.to_thread(fh.read1, READ_CHUNK):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def batch_request(req: Any) -> Any:
    """A batch's request: without per-stage progress events unless the line asks for them (nobody
    follows a batch line's events; its result is stored and announced all the same)."""
    if "progress" in req.options.model_fields_set:
        return req
    return req.model_copy(update={"options": req.options.model_copy(update={"progress": False})})


class Progress:
    """`… 1234 lines, 56/s` on stderr: rewritten in place on a terminal, a line every 10 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = self.last = time.monotonic()
        self.done = 0

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= (0.25 if self.tty else 10.0):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            clear, end = ("\r\033[K", "") if self.tty else ("", "\n")
            print(f"{clear}netdiag: batch: {self.done} lines, {rate:.0f}/s", end=end, file=sys.stderr, flush=True)

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        clear = "\r\033[K" if self.tty else ""
        print(f"{clear}netdiag: batch: {self.done} lines in {elapsed:.1f} s", file=sys.stderr, flush=True)


async def run_ordered(items: AsyncIterator[tuple[int, Any]], work: Callable[[Any], Awaitable[dict[str, Any]]],
                      concurrency: int, emit: Callable[[dict[str, Any]], None]) -> None:
    """`work` on every request item (error objects pass through), `emit` in input order as soon as a
    line and every line before it are done, with at most `concurrency` running and `2 * concurrency`
    held (in flight or finished, waiting for an earlier one)."""
    slots = asyncio.Semaphore(concurrency)
    held: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue(maxsize=2 * concurrency)
    loop = asyncio.get_running_loop()

    async def bounded(item: Any) -> dict[str, Any]:
        async with slots:
            return await work(item)

    async def produce() -> None:
        try:
            async for _, item in items:
                if isinstance(item, dict):
                    done: asyncio.Future[dict[str, Any]] = loop.create_future()
                    done.set_result(item)
                    await held.put(done)
                else:
                    await held.put(asyncio.ensure_future(bounded(item)))
        finally:
            await held.put(None)

    producer = asyncio.ensure_future(produce())
    try:
        while (entry := await held.get()) is not None:
            emit(await entry)
        await producer  # its error, if reading failed
    finally:
        producer.cancel()


class Results:
    """One watch stream of completed diagnoses, handed to whoever waits for each id. A result
    can arrive before its submitter learns the id: the last few unclaimed ones are kept."""

    KEEP_UNCLAIMED = 4096

    def __init__(self, gateway: Gateway) -> None:
        self._stream = gateway.results()
        self._cond = threading.Condition()
        self._arrived: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._alive = True
        self._thread = threading.Thread(target=self._read, name="batch-results", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for doc in self._stream:
                with self._cond:
                    self._arrived[str(doc.get("id"))] = doc
                    while len(self._arrived) > self.KEEP_UNCLAIMED:
                        self._arrived.popitem(last=False)
                    self._cond.notify_all()
        except CommandError:
            pass  # the waiters fall back to asking for their result directly
        finally:
            with self._cond:
                self._alive = False
                self._cond.notify_all()

    def wait(self, diagnosis_id: str, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while diagnosis_id not in self._arrived:
                left = deadline - time.monotonic()
                if left <= 0 or not self._alive:
                    return None
                self._cond.wait(left)
            return self._arrived.pop(diagnosis_id)


class Output:
    """Each line's document on stdout, the stderr ticker, and the worst status of any line."""

    def __init__(self) -> None:
        self.worst = 0
        self.progress = Progress()

    def emit(self, doc: dict[str, Any]) -> None:
        # a compact line: msgspec is several times faster than json for a diagnosis of many steps
        self.worst = max(self.worst, exit_status(doc))
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        sys.stdout.flush()
        self.progress.tick()

    def finish(self) -> int:
        self.progress.finish()
        return self.worst


def _failed(req: Any, error: str, diagnosis_id: str | None = None) -> dict[str, Any]:
    return {"request": json.loads(req.model_dump_json()), **({"id": diagnosis_id} if diagnosis_id else {}),
            "error": error}


async def diagnose_batch(fh: IO[bytes], base_url: str, concurrency: int, wait_s: float = DEFAULT_WAIT_S) -> int:
    """Run every line of `fh` against the gateway at `base_url` (--server); print each result in order."""
    results = await asyncio.to_thread(Results, Gateway(base_url))
    local = threading.local()
    out = Output()

    def diagnose(req: Any) -> dict[str, Any]:
        gw = getattr(local, "gateway", None) or Gateway(base_url)
        local.gateway = gw
        try:
            diagnosis_id = gw.submit(req.model_dump_json())
        except CommandError as exc:
            return _failed(req, str(exc))
        doc = results.wait(diagnosis_id, wait_s) or gw.get(diagnosis_id)  # the stream may have dropped
        if doc is None or doc.get("status") == "queued":
            return _failed(req, f"no result within {wait_s:.0f}s", diagnosis_id)
        return doc

    # the gateway client is synchronous: each diagnosis waits in a thread of its own
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch") as pool:
        loop = asyncio.get_running_loop()
        await run_ordered(validated_async(fh), lambda req: loop.run_in_executor(pool, diagnose, batch_request(req)),
                          concurrency, out.emit)
    return out.finish()


async def diagnose_batch_embedded(fh: IO[bytes], stack: EmbeddedStack, concurrency: int,
                                  wait_s: float = DEFAULT_WAIT_S) -> int:
    """`diagnose_batch` against the embedded stack this process runs: each line is handed to the
    gateway's own intake (the POST's path, without HTTP and its threads) and its stored result is
    read off the results bucket as it is written."""
    import nats

    from services.gateway.app import Conflict
    from shared.schemas import new_id

    out = Output()
    bus, intake = stack.gateway_bus, stack.intake
    assert bus is not None
    async with StoredResults(bus) as results:

        async def diagnose(req: Any) -> dict[str, Any]:
            diagnosis_id = new_id()  # chosen here, so a retry names the first attempt's diagnosis
            arrival = results.expect(diagnosis_id)
            try:
                for attempt in range(SUBMIT_RETRIES + 1):
                    try:
                        await intake.accept(req, diagnosis_id=diagnosis_id)
                        break
                    except (TimeoutError, nats.errors.Error) as exc:
                        if attempt == SUBMIT_RETRIES:
                            return _failed(req, f"the diagnosis bus (NATS) did not take the request: "
                                                f"{type(exc).__name__}")
                        await asyncio.sleep(0.5 * (attempt + 1))
                    except Conflict:
                        return _failed(req, f"diagnosis {diagnosis_id} exists for another request")
                try:
                    return await asyncio.wait_for(arrival, wait_s)
                except TimeoutError:  # the watch may have missed it: the stored record says
                    data = await intake.store.get_json(diagnosis_id)
                    doc = json.loads(data) if data is not None else None
                    if doc is None or doc.get("status") == "queued":
                        return _failed(req, f"no result within {wait_s:.0f}s", diagnosis_id)
                    return dict(doc)
            finally:
                results.forget(diagnosis_id)

        await run_ordered(validated_async(fh), lambda req: diagnose(batch_request(req)), concurrency, out.emit)
    return out.finish()


class StoredResults:
    """The results bucket's updates from now on (one ordered push consumer, no read per result): the
    finished record of each diagnosis somebody expects, as its JSON document."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sub: Any = None

    async def __aenter__(self) -> StoredResults:
        from nats.js.api import DeliverPolicy

        from shared.bus import RESULTS_BUCKET

        self._sub = await self.bus.js.subscribe(f"$KV.{RESULTS_BUCKET}.>", ordered_consumer=True,
                                                deliver_policy=DeliverPolicy.NEW, cb=self._on_update)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    def expect(self, diagnosis_id: str) -> asyncio.Future[dict[str, Any]]:
        future = self._waiting[diagnosis_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, diagnosis_id: str) -> None:
        self._waiting.pop(diagnosis_id, None)

    async def _on_update(self, msg: Any) -> None:
        future = self._waiting.get(msg.subject.rpartition(".")[2])
        if future is None or future.done() or not msg.data:
            return
        try:
            data = await self.bus.unpack(msg.data)  # a large result is stored in the object store
        except Exception:  # a blob not readable now: the waiter reads the record itself after its timeout
            log.warning("result of %s not read from the watch", msg.subject, exc_info=True)
            return
        doc = msgspec.json.decode(data)
        if doc.get("status") != "queued" and not future.done():
            future.set_result(doc)


def exit_status(doc: dict[str, Any]) -> int:
    """What this line would have exited with on its own."""
    if "line" in doc and doc.get("error"):
        return EXIT_USAGE
    result = doc.get("result")
    if doc.get("error") or not isinstance(result, dict):
        return EXIT_SYSTEM
    return VERDICT_EXIT.get(str(result.get("verdict")), EXIT_SYSTEM)
