"""The emulator's HTTP side: `POST /` with every parameter in the query string (what the
Alibaba Cloud SDK sends once an endpoint and the http protocol are set), HMAC-SHA1 v1
signature checked against the configured AccessKey, error bodies shaped
`{Code, Message, RequestId, HostId}` with the HTTP status the real API uses.

Control endpoints (not part of any cloud API) under `/_emulator/`:
  PUT  /_emulator/state      replace the state (JSON body, same format as a state file)
  POST /_emulator/throttle   body {"count": N, "action": "DescribeX" | null}: the next N
                             matching calls fail with Throttling
  POST /_emulator/deny       body {"action": "DescribeX" | null, "code": "Forbidden.RAM" | null}: every
                             matching call fails with that error (HTTP 403) until code is null
  GET  /_emulator/calls      the actions called so far (for pagination/retry tests)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from lab.cloudemu.api import ACTIONS, ApiError
from lab.cloudemu.state import StateError, normalise

DEFAULT_KEY_ID = "emulator-key-id"
DEFAULT_KEY_SECRET = "emulator-key-secret"


def _pct(value: str) -> str:
    return quote(value, safe="~")


def string_to_sign(params: dict[str, str], method: str = "POST") -> str:
    canonical = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(params.items()) if k != "Signature")
    return f"{method}&%2F&{_pct(canonical)}"


def sign(params: dict[str, str], secret: str, method: str = "POST") -> str:
    digest = hmac.new(f"{secret}&".encode(), string_to_sign(params, method).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class EmulatorState:
    state: dict[str, Any]
    keys: dict[str, str]
    throttle: dict[str | None, int] = field(default_factory=dict)
    denied: dict[str | None, str] = field(default_factory=dict)  # action (None: every one) → error code
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


EMU = web.AppKey("emu", EmulatorState)


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"Code": code, "Message": message, "RequestId": str(uuid.uuid4()).upper(),
            "HostId": "cloudemu", "Recommend": ""}
    return web.json_response(body, status=status)


def _take_throttle(emu: EmulatorState, action: str) -> bool:
    with emu.lock:
        for key in (action, None):
            if emu.throttle.get(key, 0) > 0:
                emu.throttle[key] -= 1
                return True
    return False


async def _rpc(request: web.Request) -> web.Response:
    emu: EmulatorState = request.app[EMU]
    params = dict(request.query)
    if request.can_read_body and request.content_type == "application/x-www-form-urlencoded":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    key_id = params.get("AccessKeyId", "")
    if key_id not in emu.keys:
        return _error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    expected = sign(params, emu.keys[key_id], request.method)
    if not hmac.compare_digest(expected, params.get("Signature", "")):
        # sdk-core splits this message on ':' to compare string-to-sign: keep the colon.
        return _error(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation. "
                      f"server string to sign is:{string_to_sign(params, request.method)}")
    action, version = params.get("Action", ""), params.get("Version", "")
    handler = ACTIONS.get((version, action))
    if handler is None:
        return _error(404, "InvalidAction.NotFound", f"Specified api {action} ({version}) is not found.")
    with emu.lock:
        emu.calls.append(action)
    if _take_throttle(emu, action):
        return _error(400, "Throttling", "Request was denied due to request throttling.")
    with emu.lock:
        denied = emu.denied.get(action) or emu.denied.get(None)
    if denied:  # what a RAM user without the Describe* permission gets
        return _error(403, denied, "User not authorized to operate on the specified resource, or this API "
                      "doesn't support RAM.")
    try:
        with emu.lock:
            body = handler(emu.state, params)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    body["RequestId"] = str(uuid.uuid4()).upper()
    return web.json_response(body)


async def _put_state(request: web.Request) -> web.Response:
    emu: EmulatorState = request.app[EMU]
    try:
        state = normalise(await request.json())
    except (ValueError, StateError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    with emu.lock:
        emu.state = state
    return web.json_response({"ok": True})


async def _throttle(request: web.Request) -> web.Response:
    emu: EmulatorState = request.app[EMU]
    body = await request.json()
    with emu.lock:
        emu.throttle[body.get("action")] = int(body.get("count", 1))
    return web.json_response({"ok": True})


async def _deny(request: web.Request) -> web.Response:
    emu: EmulatorState = request.app[EMU]
    body = await request.json()
    _set_denied(emu, body.get("action"), body.get("code"))
    return web.json_response({"ok": True})


def _set_denied(emu: EmulatorState, action: str | None, code: str | None) -> None:
    with emu.lock:
        if code:
            emu.denied[action] = code
        else:
            emu.denied.pop(action, None)


async def _calls(request: web.Request) -> web.Response:
    emu: EmulatorState = request.app[EMU]
    with emu.lock:
        return web.json_response({"calls": list(emu.calls)})


def make_app(emu: EmulatorState) -> web.Application:
    app = web.Application()
    app[EMU] = emu
    app.router.add_route("*", "/", _rpc)
    app.router.add_put("/_emulator/state", _put_state)
    app.router.add_post("/_emulator/throttle", _throttle)
    app.router.add_post("/_emulator/deny", _deny)
    app.router.add_get("/_emulator/calls", _calls)
    return app


class CloudEmulator:
    """The emulator on its own event loop in a daemon thread, so synchronous SDK calls (from
    tests, benches or `asyncio.to_thread`) and asyncio callers can both reach it.

        with CloudEmulator(state) as emu:
            provider = AlibabaProvider(endpoint=emu.endpoint, ...)
    """

    def __init__(self, state: dict[str, Any], keys: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.emu = EmulatorState(state=normalise(state), keys=keys or {DEFAULT_KEY_ID: DEFAULT_KEY_SECRET})
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def calls(self) -> list[str]:
        with self.emu.lock:
            return list(self.emu.calls)

    def set_state(self, state: dict[str, Any]) -> None:
        with self.emu.lock:
            self.emu.state = normalise(state)
            self.emu.calls.clear()

    def throttle(self, count: int, action: str | None = None) -> None:
        with self.emu.lock:
            self.emu.throttle[action] = count

    def deny(self, action: str | None = None, code: str | None = "Forbidden.RAM") -> None:
        """Every call of `action` (None: of any action) fails with `code`; code None lifts it."""
        _set_denied(self.emu, action, code)

    def start(self) -> CloudEmulator:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def boot() -> None:
            self._runner = web.AppRunner(make_app(self.emu), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
            started.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="cloudemu", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("cloud emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> CloudEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_keys(raw: str | None) -> dict[str, str]:
    """`id:secret[,id:secret]` → keys; default is the well-known emulator key."""
    if not raw:
        return {DEFAULT_KEY_ID: DEFAULT_KEY_SECRET}
    pairs = [p.split(":", 1) for p in raw.split(",")]
    return {k: v for k, v in pairs}
