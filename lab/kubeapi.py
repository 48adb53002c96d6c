"""The lab's Kubernetes API: an aiohttp server on loopback speaking the apiserver's REST dialect.

Read-only over HTTP (discovery, get, list with selectors and pagination, watch with bookmarks and
410 Gone); the lab mutates objects through Python (`apply`, `delete`, `set_pod_ready`, …), each change
bumping the global resourceVersion and reaching every open watch. The one write it serves is a
TokenReview (authentication.k8s.io/v1, nothing stored): for the lab's own token and the ServiceAccount
tokens `mint_token` issues. `requests` counts what was asked, by "METHOD /path".

Run modes: `await api.start()` on the running loop, `api.start_in_thread()` for sync callers, or a
daemon: `python -m lab.kubeapi --scenario FILE --run-dir DIR` (see `spawn_daemon`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from lab.kubeconfig import write_kubeconfig
from lab.kubestore import (
    Filter,
    NotFound,
    ObjectStore,
    ResourceExpired,
    SelectorError,
    WatchEvent,
)
from lab.objects import KUBERNETES_VERSION, RESOURCES, Obj, Resource, scenario_objects
from lab.scenario import ResolvedScenario, Scenario, resolve
from lab.state import ApiInfo, LabState

PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})  # system:public-info-viewer
# API groups discovery lists: the stored kinds' and authentication.k8s.io (TokenReview, never stored)
GROUP_VERSIONS = {r.group: r.version for r in RESOURCES if r.group} | {"authentication.k8s.io": "v1"}
TOKENREVIEWS = {"name": "tokenreviews", "singularName": "tokenreview", "namespaced": False, "kind": "TokenReview",
                "verbs": ["create"]}
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the apiserver's --api-audiences default
ADMIN_USER: Obj = {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
DEFAULT_WATCH_TIMEOUT_S = 1800  # the apiserver's --min-request-timeout
STATE_POLL_S = 0.3  # how quickly a daemon follows scenario edits in the lab state file


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def _error(code: int, reason: str, message: str, details: Obj | None = None) -> web.Response:
    return web.json_response(status_object(code, reason, message, details), status=code)


def _encode_continue(rv: int, start: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": list(start)}).encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise SelectorError(f"invalid continue token: {exc}") from exc


def _list_item(obj: Obj) -> Obj:
    # the apiserver's JSON lists carry kind/apiVersion only on the list itself, not on its items
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class LabKubeAPI(ObjectStore):
    """An ObjectStore served over HTTP."""

    def __init__(self, token: str | None = None, history: int = 1000, bookmark_interval_s: float = 10.0) -> None:
        super().__init__(history=history)
        self.token = token or secrets.token_urlsafe(24)
        self.bookmark_interval_s = bookmark_interval_s
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._forbidden: set[str] = set()  # path prefixes answered 403, as RBAC would
        self._tokens: dict[str, tuple[Obj, tuple[str, ...]]] = {}  # minted token → (user info, audiences)
        self.echo_audiences = True  # False: answer TokenReviews like an authenticator that ignores audiences
        self.requests: Counter[str] = Counter()  # "POST /apis/authentication.k8s.io/v1/tokenreviews" → count

    # ---------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on the running loop; returns the base URL."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        app = web.Application(middlewares=[self._auth])
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{sock_port}"
        return self.url

    async def stop(self) -> None:
        self._stopping = True
        self._wake_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0) -> str:
        """Serve from a background thread with its own loop (for sync callers); returns the base URL."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start(host, port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="lab-kubeapi", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError("lab Kubernetes API did not start")
        if failure:
            raise failure[0]
        return self.url

    def stop_thread(self, timeout_s: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._stopping = True
        self._loop.call_soon_threadsafe(self._wake_watchers)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> LabKubeAPI:
        """`with LabKubeAPI(...) as api:` serves from a background thread for the block."""
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    def write_kubeconfig(self, path: str | Path) -> Path:
        return write_kubeconfig(path, self.url, self.token)

    # ---------------------------------------------------------- change notification

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._wake_watchers()
        else:
            loop.call_soon_threadsafe(self._wake_watchers)

    def _wake_watchers(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def forbid(self, path_prefix: str) -> None:
        """Refuse every request under `path_prefix` with 403 Forbidden, as missing RBAC would
        (e.g. `/api/v1/namespaces/kube-flannel/configmaps`)."""
        self._forbidden.add(path_prefix)

    # ---------------------------------------------------------- tokens

    def mint_token(self, namespace: str, name: str, audiences: tuple[str, ...] = (API_AUDIENCE,), *,
                   node: str | None = None, pod: str | None = None) -> str:
        """A token of ServiceAccount `namespace/name`, as the TokenRequest API issues one: the lab's
        TokenReview authenticates it as `system:serviceaccount:<namespace>:<name>` for `audiences`
        (the API only accepts its own token for its other requests). With `node` (and `pod`) it is a
        pod-bound projected token: the review's `user.extra` names the pod and its node, as Kubernetes
        >= 1.30 does (`authentication.kubernetes.io/node-name`, `…/pod-name`, with their uids)."""
        token = secrets.token_urlsafe(32)
        user: Obj = {"username": f"system:serviceaccount:{namespace}:{name}", "uid": str(uuid.uuid4()),
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                "system:authenticated"]}
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"]}
        if pod:
            extra["authentication.kubernetes.io/pod-name"] = [pod]
            extra["authentication.kubernetes.io/pod-uid"] = [str(uuid.uuid4())]
        if node:
            extra["authentication.kubernetes.io/node-name"] = [node]
            extra["authentication.kubernetes.io/node-uid"] = [str(uuid.uuid5(uuid.NAMESPACE_DNS, node))]
        if pod or node:
            user["extra"] = extra
        self._tokens[token] = (user, audiences)
        return token

    def revoke_token(self, token: str) -> None:
        """Forget a minted token (its ServiceAccount deleted): reviews of it fail from now on."""
        self._tokens.pop(token, None)

    def review_token(self, token: str, audiences: list[str]) -> Obj:
        """The TokenReview status for `token`, asked for `audiences` (empty: the API's own)."""
        valid_for: tuple[str, ...]
        if token == self.token:
            user, valid_for = ADMIN_USER, (API_AUDIENCE,)
        elif token in self._tokens:
            user, valid_for = self._tokens[token]
        else:
            return {"user": {}, "error": "invalid bearer token"}
        wanted = audiences or [API_AUDIENCE]
        matched = [a for a in wanted if a in valid_for]
        if not matched:
            return {"user": {}, "error": f"token audiences {json.dumps(list(valid_for))} is invalid for the "
                                         f"target audiences {json.dumps(wanted)}"}
        # a webhook authenticator that knows nothing of audiences answers without them
        return {"authenticated": True, "user": user, **({"audiences": matched} if self.echo_audiences else {})}

    # ---------------------------------------------------------- HTTP

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[f"{request.method} {request.path}"] += 1
        if request.path.rstrip("/") not in PUBLIC_PATHS and \
                request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Unauthorized")
        if any(request.path.startswith(prefix) for prefix in self._forbidden):
            return _error(403, "Forbidden", f"{request.path} is forbidden: the service account may not read it")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(404, "NotFound", "the server could not find the requested resource")
        except web.HTTPMethodNotAllowed:
            # the lab API is read-only over HTTP (but for TokenReview); the lab changes objects through Python
            return _error(405, "MethodNotAllowed", f"{request.method} is not supported by the lab API")

    def _routes(self, app: web.Application) -> None:
        class _Router:
            """Every path answers with and without a trailing slash, as the apiserver does."""

            @staticmethod
            def add_get(path: str, handler: Any) -> None:
                app.router.add_get(path, handler)
                app.router.add_get(path + "/", handler)

            @staticmethod
            def add_post(path: str, handler: Any) -> None:
                app.router.add_post(path, handler)
                app.router.add_post(path + "/", handler)

        r = _Router()
        r.add_get("/version", self._version)
        for path in ("/healthz", "/livez", "/readyz"):
            r.add_get(path, self._healthz)
        r.add_get("/api", self._core_versions)
        r.add_get("/apis", self._groups)
        group_versions: dict[str, list[Resource]] = {}
        for res in RESOURCES:
            group_versions.setdefault(res.api_version, []).append(res)
        for gv, resources in group_versions.items():
            prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            r.add_get(prefix, self._resource_list_handler(gv, [self._discovery_entry(res) for res in resources]))
            for res in resources:
                r.add_get(f"{prefix}/{res.plural}", self._collection_handler(res, all_namespaces=True))
                if res.namespaced:
                    ns_prefix = f"{prefix}/namespaces/{{namespace}}/{res.plural}"
                    r.add_get(ns_prefix, self._collection_handler(res, all_namespaces=False))
                    r.add_get(ns_prefix + "/{name}", self._get_handler(res))
                else:
                    r.add_get(f"{prefix}/{res.plural}/{{name}}", self._get_handler(res))
        for group in GROUP_VERSIONS:
            r.add_get(f"/apis/{group}", self._group_handler(group))
        r.add_get("/apis/authentication.k8s.io/v1",
                  self._resource_list_handler("authentication.k8s.io/v1", [TOKENREVIEWS]))
        r.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._tokenreview)

    async def _version(self, request: web.Request) -> web.Response:
        major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
        return web.json_response({
            "major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
            "minCompatibilityMajor": major, "minCompatibilityMinor": str(int(minor) - 1),
            "gitVersion": KUBERNETES_VERSION, "gitCommit": "948afe5ca072329a73c8e79ed5938717a5cb3d21",
            "gitTreeState": "clean", "buildDate": "2024-09-11T21:22:08Z", "goVersion": "go1.22.6",
            "compiler": "gc", "platform": "linux/amd64",
        })

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _core_versions(self, request: web.Request) -> web.Response:
        return web.json_response({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
        })

    @staticmethod
    def _group_object(group: str) -> Obj:
        gv = {"groupVersion": f"{group}/{GROUP_VERSIONS[group]}", "version": GROUP_VERSIONS[group]}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    async def _groups(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                  "groups": [self._group_object(g) for g in sorted(GROUP_VERSIONS)]})

    def _group_handler(self, group: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group_object(group)})
        return handler

    @staticmethod
    def _discovery_entry(res: Resource) -> Obj:
        return {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced, "kind": res.kind,
                "verbs": ["get", "list", "watch"], **({"shortNames": list(res.short_names)} if res.short_names else {})}

    @staticmethod
    def _resource_list_handler(group_version: str, entries: list[Obj]) -> Any:
        body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}

        async def handler(request: web.Request) -> web.Response:
            return web.json_response(body)
        return handler

    async def _tokenreview(self, request: web.Request) -> web.Response:
        """POST a TokenReview: answered as the apiserver does (201, the review echoed with its status)."""
        try:
            review = await request.json()
        except ValueError as exc:
            return _error(400, "BadRequest", f"the request body is not JSON: {exc}")
        kind = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1"}  # the defaults, from the URL
        if not isinstance(review, dict) or any(review.get(k, v) != v for k, v in kind.items()):
            return _error(400, "BadRequest", "the body must be an authentication.k8s.io/v1 TokenReview")
        spec = review.get("spec") or {}
        if not spec.get("token"):
            return _error(400, "BadRequest", "token is required for TokenReview in authentication")
        status = self.review_token(spec["token"], list(spec.get("audiences") or []))
        return web.json_response({**review, **kind, "metadata": {}, "status": status}, status=201)

    def _get_handler(self, res: Resource) -> Any:
        async def handler(request: web.Request) -> web.Response:
            name, ns = request.match_info["name"], request.match_info.get("namespace")
            try:
                return web.json_response(self.get(res.kind, ns, name))
            except NotFound:
                return _error(404, "NotFound", f'{res.plural} "{name}" not found',
                              {"name": name, "group": res.group, "kind": res.plural} if res.group
                              else {"name": name, "kind": res.plural})
        return handler

    def _collection_handler(self, res: Resource, all_namespaces: bool) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            q = request.query
            namespace = None if all_namespaces else request.match_info["namespace"]
            try:
                flt = Filter.parse(res.kind, namespace, q.get("labelSelector"), q.get("fieldSelector"))
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, res, flt)
                return self._list(res, flt, q.get("limit"), q.get("continue"))
            except ValueError as exc:  # selectors, continue tokens, numbers that are not
                return _error(400, "BadRequest", str(exc))
        return handler

    def _list(self, res: Resource, flt: Filter, limit: str | None, cont: str | None) -> web.Response:
        after, token_rv = None, None
        if cont:
            token_rv, after = _decode_continue(cont)
            try:
                self.check_not_expired(token_rv)
            except ResourceExpired:
                return _error(410, "Expired", "The provided continue parameter is too old to display a "
                              "consistent list result. You can start a new list without the continue parameter.")
        items, rv, rest = self.page(res.kind, flt, after, int(limit or 0))
        rv = token_rv if token_rv is not None else rv
        meta: Obj = {"resourceVersion": str(rv)}
        if rest:
            last = items[-1]["metadata"]
            meta["continue"] = _encode_continue(rv, (last.get("namespace", ""), last["name"]))
            if not flt.selective:
                meta["remainingItemCount"] = rest
        # msgspec: a 500-pod page is megabytes of JSON, the stdlib encoder's time is most of serving it
        body = msgspec.json.encode({"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                                    "items": [_list_item(o) for o in items]})
        return web.Response(body=body, content_type="application/json")

    async def _watch(self, request: web.Request, res: Resource, flt: Filter) -> web.StreamResponse:
        q = request.query
        timeout_s = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_S)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + timeout_s
        requested = q.get("resourceVersion") or "0"
        state_first = q.get("sendInitialEvents") == "true" or requested == "0"
        last = int(requested)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(type_: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            if state_first:
                # "get state and start at most recent": synthetic ADDED for what exists now
                items, last = self.snapshot(res.kind, flt)
                for obj in items:
                    await send("ADDED", obj)
                if q.get("sendInitialEvents") == "true" and bookmarks:  # WatchList: end of the initial state
                    await send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version, "metadata": {
                        "resourceVersion": str(last), "annotations": {"k8s.io/initial-events-end": "true"}}})
            else:
                self.check_not_expired(last)
            next_bookmark = time.monotonic() + self.bookmark_interval_s
            while not self._stopping:
                wake = self._wake
                events, current = self.events_since(res.kind, last)
                for event in events:
                    translated = self._translate(event, flt)
                    if translated is not None:
                        await send(*translated)
                last = current
                now = time.monotonic()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                            "metadata": {"resourceVersion": str(last)}})
                    next_bookmark = now + self.bookmark_interval_s
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
        except ResourceExpired as exc:
            await send("ERROR", status_object(410, "Expired", str(exc)))
        except ConnectionResetError:  # the client went away
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    @staticmethod
    def _translate(event: WatchEvent, flt: Filter) -> tuple[str, Obj] | None:
        """The event as this watcher sees it: selector transitions turn into ADDED/DELETED, as in the cacher."""
        now_matches = flt(event.obj)
        before = event.prev is not None and event.type != "ADDED" and flt(event.prev)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if before or now_matches else None
        if event.type == "ADDED":
            return ("ADDED", event.obj) if now_matches else None
        if now_matches:
            return ("MODIFIED" if before else "ADDED", event.obj)
        if before and event.prev is not None:
            prev = {**event.prev, "metadata": {**event.prev["metadata"],
                                               "resourceVersion": event.obj["metadata"]["resourceVersion"]}}
            return "DELETED", prev
        return None


# ------------------------------------------------------------------ scenario loading and daemon mode


def serve_scenario(resolved: ResolvedScenario, token: str | None = None, **kwargs: Any) -> LabKubeAPI:
    """A LabKubeAPI loaded with every object of the scenario (not yet listening: call start*)."""
    api = LabKubeAPI(token=token, **kwargs)
    api.load(scenario_objects(resolved))
    return api


def spawn_daemon(*, state_file: str | Path | None = None, scenario_file: str | Path | None = None,
                 run_dir: str | Path | None = None, timeout_s: float = 15.0) -> ApiInfo:
    """Start `python -m lab.kubeapi` as a detached process; returns once it listens.

    With `state_file` (a lab state.json) it serves that lab's scenario, records itself in the file's `api`
    slot and follows later scenario changes in the file. With `scenario_file` + `run_dir` it serves a bare
    scenario. Either way it writes `kubeconfig` and `kubeapi.json` (the ApiInfo) next to it, logs to
    `kubeapi.log` there, and runs until SIGTERM: end it with `stop_daemon(info.pid)`."""
    if state_file is not None:
        argv, run_dir = ["--state", str(state_file)], Path(state_file).parent
    elif scenario_file is not None and run_dir is not None:
        argv, run_dir = ["--scenario", str(scenario_file), "--run-dir", str(run_dir)], Path(run_dir)
    else:
        raise ValueError("spawn_daemon needs state_file, or scenario_file and run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "kubeapi.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.kubeapi", *argv], stdout=subprocess.PIPE, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
        )
    assert proc.stdout is not None
    stdout = proc.stdout
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not line or not line[0]:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"lab Kubernetes API did not start; see {run_dir / 'kubeapi.log'}")
    stdout.close()
    return ApiInfo.model_validate_json(line[0])


def stop_daemon(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the daemon and wait for it to exit (reaping it if it is our child); SIGKILL after the timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # started by another process (e.g. an earlier `lab up`)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)  # it holds the token
    tmp.replace(path)  # atomic: readers never see half a file


def _record_in_state(state_file: Path, info: ApiInfo) -> None:
    state = LabState.model_validate_json(state_file.read_text())  # re-read: the lab may have saved since
    _write_private(state_file, state.model_copy(update={"api": info}).model_dump_json(indent=2))


async def _follow_state(api: LabKubeAPI, state_file: Path, created: datetime, stop: asyncio.Event) -> None:
    """Re-serve the lab's scenario whenever the state file's `scenario` changes (faults that edit it)."""
    seen = LabState.model_validate_json(state_file.read_text()).scenario
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATE_POLL_S)
        try:
            scenario = LabState.model_validate_json(state_file.read_text()).scenario
            if scenario != seen:
                events = api.sync(scenario_objects(resolve(Scenario.model_validate(scenario)), created))
                print(f"scenario changed: {events} watch events", file=sys.stderr, flush=True)
                seen = scenario
        except (OSError, ValueError) as exc:  # a lab being torn down, or a bad edit: keep serving what we have
            print(f"state file not applied: {exc}", file=sys.stderr, flush=True)


async def _serve_forever(scenario: Scenario, run_dir: Path, port: int, state_file: Path | None) -> None:
    created = datetime.now(UTC)
    api = LabKubeAPI()
    api.load(scenario_objects(resolve(scenario), created))
    await api.start(port=port)
    host, _, port_text = api.url.removeprefix("http://").rpartition(":")
    kubeconfig = api.write_kubeconfig(run_dir / "kubeconfig")
    info = ApiInfo(host=host, port=int(port_text), token=api.token, kubeconfig=str(kubeconfig), pid=os.getpid())
    _write_private(run_dir / "kubeapi.json", info.model_dump_json())
    if state_file is not None:
        _record_in_state(state_file, info)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(info.model_dump_json(), flush=True)
    if state_file is not None:
        await _follow_state(api, state_file, created, stop)
    await stop.wait()
    await api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.kubeapi", description=(__doc__ or "").splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", type=Path, help="a lab's state.json: serve its scenario, fill its api slot")
    source.add_argument("--scenario", type=Path, help="a scenario YAML (see examples/lab/)")
    parser.add_argument("--run-dir", type=Path, help="with --scenario: where kubeconfig and kubeapi.json go")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    args = parser.parse_args(argv)
    if args.state is not None:
        scenario = Scenario.model_validate(LabState.model_validate_json(args.state.read_text()).scenario)
        run_dir = args.state.parent
    else:
        if args.run_dir is None:
            parser.error("--scenario needs --run-dir")
        scenario, run_dir = Scenario.load(args.scenario), args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve_forever(scenario, run_dir, args.port, args.state))


if __name__ == "__main__":
    main()
