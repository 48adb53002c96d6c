"""The thin gateway client shared by `netdiag` and `kubectl netdiag`: submit, follow, watch.

Standard library only (http.client, json), on purpose: a command that talks to a running
gateway must start in a fraction of a second, and aiohttp alone takes longer than that to
import. Results come back as the gateway's JSON documents; the caller decides whether it
needs the pydantic models (text rendering) or not (JSON output, exit code).

The SSE reader has no line-length limit: a `data:` line is one whole diagnosis, and a result
with many paths runs to megabytes (aiohttp's reader stopped at 128 KiB lines).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import http.client

# http.client (with email and ssl) is imported when a Gateway is made: `netdiag --help`, which
# imports this module for CommandError, does not pay for it

EXIT_USAGE, EXIT_SYSTEM = 3, 4
SUBMIT_RETRIES = 4  # 503s retried with the same Idempotency-Key (about 5 s in all)
DEFAULT_WAIT_S = 120.0
CONNECT_TIMEOUT_S = 10.0


class CommandError(Exception):
    """A clear one-line failure with the exit code it means (usage 3, system 4)."""

    def __init__(self, message: str, code: int = EXIT_SYSTEM, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.fields = fields or []  # a refused request: the gateway's per-field errors


def auth_headers() -> dict[str, str]:
    """A gateway with auth (the Helm chart's) wants NETDIAG_TOKEN as a bearer token."""
    token = os.environ.get("NETDIAG_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def sse_events(resp: http.client.HTTPResponse) -> Iterator[tuple[str, str]]:
    """(event, data) of a text/event-stream, per the WHATWG rules we use: `event:`/`data:` fields,
    a blank line ends an event, `:` lines are comments (keep-alives). Lines of any length."""
    event, data = "message", list[str]()
    while True:
        raw = resp.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


class Gateway:
    """One gateway, one keep-alive connection per instance (not shared across threads)."""

    def __init__(self, base: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base if "://" in base else f"http://{base}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(f"--server {base!r}: expected a URL such as http://127.0.0.1:8080", EXIT_USAGE)
        self.base = base.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self.headers = {"Accept": "application/json", **auth_headers()}

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        import http.client

        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _request(self, method: str, path: str, body: str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """A JSON request on the keep-alive connection (reconnecting once if the server closed it)."""
        import http.client

        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect(self._timeout)
            try:
                self._conn.request(method, self._prefix + path, body=body, headers={**self.headers, **(headers or {})})
                resp = self._conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise CommandError(f"lost the gateway at {self.base}: {exc}") from exc
                continue
            except OSError as exc:
                self.close()
                raise CommandError(f"cannot reach the gateway at {self.base}: {exc}") from exc
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, {"error": raw[:200].decode(errors="replace")}
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def submit(self, request_json: str) -> str:
        """POST with an Idempotency-Key, retrying a 503 (bus briefly down) with the same key: the
        request ends durably accepted once, or clearly refused."""
        import secrets

        headers = {"Content-Type": "application/json", "Idempotency-Key": secrets.token_hex(16)}
        for attempt in range(SUBMIT_RETRIES + 1):
            status, body = self._request("POST", "/api/v1/diagnoses", request_json, headers)
            if status == 202:
                return str(body["id"])
            if status != 503 or attempt == SUBMIT_RETRIES:
                doc = body if isinstance(body, dict) else {"error": body}
                raise CommandError(f"gateway refused the request ({status}): {doc.get('error')}",
                                   EXIT_USAGE if status < 500 else EXIT_SYSTEM, doc.get("fields"))
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def get(self, diagnosis_id: str) -> dict[str, Any] | None:
        status, body = self._request("GET", f"/api/v1/diagnoses/{diagnosis_id}")
        return body if status == 200 else None

    def _stream(self, path: str, read_timeout: float | None) -> http.client.HTTPResponse:
        conn = self._connect(self._timeout)
        try:
            conn.request("GET", self._prefix + path, headers={**self.headers, "Accept": "text/event-stream"})
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise CommandError(f"cannot reach the gateway at {self.base}: {exc}") from exc
        if resp.status != 200:
            conn.close()
            raise CommandError(f"gateway refused the event stream {path} ({resp.status})")
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        return resp

    def follow(self, diagnosis_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
               wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
        """The diagnosis document, once it has one (progress events to `on_progress` meanwhile)."""
        resp = self._stream(f"/api/v1/diagnoses/{diagnosis_id}/events", wait_s)
        try:
            for event, data in sse_events(resp):
                if event == "result":
                    return dict(json.loads(data))
                if on_progress is not None:
                    on_progress(json.loads(data))
        except TimeoutError as exc:
            raise CommandError(f"no result for {diagnosis_id} within {wait_s:.0f}s") from exc
        except OSError as exc:
            raise CommandError(f"lost the event stream of {diagnosis_id}: {exc}") from exc
        finally:
            resp.close()
        raise CommandError(f"event stream of {diagnosis_id} ended without a result")

    def results(self) -> Iterator[dict[str, Any]]:
        """Every diagnosis document as it completes, from now on. The stream is open when this
        returns, and the gateway answers the headers once it has subscribed: nothing submitted
        afterwards is missed."""
        return self._results(self._stream("/api/v1/events", None))

    def _results(self, resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        try:
            for event, data in sse_events(resp):
                if event == "result":
                    yield dict(json.loads(data))
        except OSError as exc:
            raise CommandError(f"lost the result stream of {self.base}: {exc}") from exc
        finally:
            resp.close()
