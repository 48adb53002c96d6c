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

import json
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from services.client import DEFAULT_WAIT_S, EXIT_SYSTEM, EXIT_USAGE, CommandError, Gateway

VERDICT_EXIT = {"REACHABLE": 0, "UNREACHABLE": 1, "AMBIGUOUS": 2, "UNDETERMINED": 2}
SNIFF_BYTES = 8192


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


def numbered_lines(fh: IO[bytes]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of every non-blank line; text None when the line is not UTF-8."""
    for n, raw in enumerate(fh, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield n, None
            continue
        if text.strip():
            yield n, text


def validated(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, DiagnosisRequest | error object) per non-blank line, lazily."""
    from shared.intake import RequestInvalid, parse_request

    for n, text in numbered_lines(fh):
        if text is None:
            yield n, {"line": n, "error": f"line {n}: not UTF-8 text"}
            continue
        try:
            yield n, parse_request(text)
        except RequestInvalid as exc:
            if exc.fields:
                fields = "; ".join(f"{f['field']}: {f['message']}" for f in exc.fields)
                yield n, {"line": n, "error": f"line {n}: {fields}", "fields": exc.fields}
            else:
                yield n, {"line": n, "error": f"line {n}: {exc}"}


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


def run_ordered(items: Iterator[tuple[int, Any]], work: Callable[[Any], dict[str, Any]], concurrency: int,
                emit: Callable[[dict[str, Any]], None]) -> None:
    """`work` on every request item (error objects pass through), `emit` in input order, with at
    most `concurrency` running and `2 * concurrency` held."""
    window: deque[Future[dict[str, Any]] | dict[str, Any]] = deque()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch") as pool:
        for _, item in items:
            window.append(item if isinstance(item, dict) else pool.submit(work, item))
            while len(window) > 2 * concurrency or (window and _ready(window[0])):
                emit(_take(window.popleft()))
        while window:
            emit(_take(window.popleft()))


def _ready(entry: Future[dict[str, Any]] | dict[str, Any]) -> bool:
    return isinstance(entry, dict) or entry.done()


def _take(entry: Future[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    return entry if isinstance(entry, dict) else entry.result()


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


def diagnose_batch(fh: IO[bytes], base_url: str, concurrency: int, wait_s: float = DEFAULT_WAIT_S) -> int:
    """Run every line of `fh` against the gateway at `base_url`; print each result in order."""
    results = Results(Gateway(base_url))
    local = threading.local()
    worst = 0
    progress = Progress()

    def diagnose(req: Any) -> dict[str, Any]:
        gw = getattr(local, "gateway", None) or Gateway(base_url)
        local.gateway = gw
        request = json.loads(req.model_dump_json())
        try:
            diagnosis_id = gw.submit(req.model_dump_json())
        except CommandError as exc:
            return {"request": request, "error": str(exc)}
        doc = results.wait(diagnosis_id, wait_s) or gw.get(diagnosis_id)  # the stream may have dropped
        if doc is None or doc.get("status") == "queued":
            return {"request": request, "id": diagnosis_id, "error": f"no result within {wait_s:.0f}s"}
        return doc

    def emit(doc: dict[str, Any]) -> None:
        nonlocal worst
        worst = max(worst, exit_status(doc))
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
        progress.tick()

    run_ordered(validated(fh), diagnose, concurrency, emit)
    progress.finish()
    return worst


def exit_status(doc: dict[str, Any]) -> int:
    """What this line would have exited with on its own."""
    if "line" in doc and doc.get("error"):
        return EXIT_USAGE
    result = doc.get("result")
    if doc.get("error") or not isinstance(result, dict):
        return EXIT_SYSTEM
    return VERDICT_EXIT.get(str(result.get("verdict")), EXIT_SYSTEM)
