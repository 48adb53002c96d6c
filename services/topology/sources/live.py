"""Live source: informer-style list+watch caches over the official `kubernetes` client.

One daemon thread per resource lists (paginated) and then watches from the list's
resourceVersion, applying each event to the shared ClusterModel, so a diagnosis reads a
warm cache and never re-lists. A watch that ends (server timeout) resumes from the last
seen resourceVersion (bookmarks keep it fresh); 410 Gone / "too old resource version"
re-lists. A detection-only kind the API refuses (403/404: ConfigMaps in a namespace the chart
grants no Role in) syncs empty and detection reports an assumption; the core kinds keep the source
unsynced, loudly. Objects are trimmed on arrival (no managedFields, no last-applied, no pod
bulk), and no event queue exists between the stream and the model: memory is bounded
by the cluster's (trimmed) size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from services.topology.decode import decode, decode_list
from services.topology.model import ClusterModel, bulk_build, object_key, trim
from shared.config import DEFAULT_CONFIGMAP_NAMESPACES, Settings
from shared.kube import api_client

log = logging.getLogger("netdiag.topology.live")

# Namespaces whose ConfigMaps detection reads (CNI and kube-proxy configuration) unless configured.
DETECTION_NAMESPACES = DEFAULT_CONFIGMAP_NAMESPACES
# Kinds only detection reads, and optional CRDs (PodEIP: absent without ack-extend-network-controller): when
# the API refuses them they sync empty and detection says so (an assumption); every other kind is needed to
# diagnose at all and keeps the source unsynced.
DETECTION_ONLY_KINDS = frozenset({"ConfigMap", "DaemonSet", "IPPool", "FelixConfiguration", "PodEIP"})
UNREADABLE_STATUS = {403: "forbidden", 404: "not found"}
HTTP_GONE = 410


class ResourceExpired(Exception):
    """The watch's resourceVersion is gone (410): re-list."""


@dataclass(frozen=True)
class Resource:
    kind: str
    lister: Callable[..., Any]
    namespace: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.namespace}" if self.namespace else self.kind


def resources(api: client.ApiClient, configmap_namespaces: Iterable[str] = DETECTION_NAMESPACES) -> list[Resource]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    discovery, networking = client.DiscoveryV1Api(api), client.NetworkingV1Api(api)
    out = [
        Resource("Node", core.list_node),
        Resource("Namespace", core.list_namespace),
        Resource("Pod", core.list_pod_for_all_namespaces),
        Resource("Service", core.list_service_for_all_namespaces),
        Resource("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces),
        Resource("NetworkPolicy", networking.list_network_policy_for_all_namespaces),
        Resource("DaemonSet", apps.list_daemon_set_for_all_namespaces),
    ]
    out += [Resource("ConfigMap", _namespaced(core.list_namespaced_config_map, ns), ns) for ns in configmap_namespaces]
    # Calico's IPPools (a CRD: 404 where Calico is not installed, which detection only minds for Calico)
    custom = client.CustomObjectsApi(api)
    out.append(Resource("IPPool", partial(custom.list_cluster_custom_object, "crd.projectcalico.org", "v1", "ippools")))
    out.append(Resource("FelixConfiguration", partial(custom.list_cluster_custom_object, "crd.projectcalico.org",
                                                      "v1", "felixconfigurations")))
    # ack-extend-network-controller's PodEIPs (a pod's own EIP, docs/topology.md)
    out.append(Resource("PodEIP", partial(custom.list_cluster_custom_object, "alibabacloud.com", "v1beta1", "podeips")))
    return out


def _namespaced(fn: Callable[..., Any], namespace: str) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return fn(namespace, **kwargs)
    return call


@dataclass
class _State:
    resource_version: str | None = None
    synced: threading.Event = field(default_factory=threading.Event)
    lists: int = 0
    events: int = 0
    resumes: int = 0  # watches the server ended that were resumed from the last resourceVersion
    last_error: str | None = None


class LiveSource:
    """Keeps a ClusterModel in sync with the API server. `start()` then `wait_synced()`."""

    def __init__(self, api: client.ApiClient, model: ClusterModel | None = None, *, page_size: int = 500,
                 watch_timeout_s: int = 240, retry_s: float = 1.0, unreadable_retry_s: float = 60.0,
                 configmap_namespaces: Iterable[str] = DETECTION_NAMESPACES) -> None:
        self.api = api
        self.model = model or ClusterModel()
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.unreadable_retry_s = unreadable_retry_s  # RBAC may be granted later: look again, rarely
        self.resources = resources(api, configmap_namespaces)
        self.state = {r.name: _State() for r in self.resources}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: dict[str, Any] = {}  # resource → its open watch response (closed on stop)

    @property
    def name(self) -> str:
        """The source as diagnoses and the history name it: the API server it follows."""
        return f"live:{self.api.configuration.host}"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LiveSource:
        for res in self.resources:
            t = threading.Thread(target=self._run, args=(res,), name=f"netdiag-watch-{res.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(st.synced.wait(max(0.0, deadline - time.monotonic())) for st in self.state.values())

    @property
    def synced(self) -> bool:
        return all(st.synced.is_set() for st in self.state.values())

    def errors(self) -> dict[str, str]:
        return {name: st.last_error for name, st in self.state.items() if st.last_error}

    def stop(self) -> None:
        self._stop.set()
        for resp in list(self._open.values()):
            try:
                # shutdown() unblocks the watch thread's pending read at once; close() alone
                # waits for the next event or the server's timeout
                resp.shutdown()
                resp.close()
            except Exception:  # closing a half-dead socket may raise anything; we are leaving
                log.debug("closing a watch response failed", exc_info=True)
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------ informer loop

    def _run(self, res: Resource) -> None:
        st = self.state[res.name]
        while not self._stop.is_set():
            try:
                if st.resource_version is None:
                    st.resource_version = self._list(res)
                    st.lists += 1
                    self.model.set_unreadable(res.kind, res.namespace, None)
                    st.synced.set()
                st.resource_version = self._watch(res, st)
                st.last_error = None
                if not self._stop.is_set():
                    st.resumes += 1
            except ResourceExpired:
                log.info("%s: resourceVersion expired, re-listing", res.name)
                st.resource_version = None
            except Exception as exc:  # API down, RBAC, network: keep the cache, retry with a pause
                if self._stop.is_set():
                    return
                st.last_error = f"{type(exc).__name__}: {exc}"
                pause = self.unreadable_retry_s if self._unreadable(res, st, exc) else self.retry_s
                log.warning("%s: %s; retrying in %.1fs", res.name, st.last_error, pause)
                if isinstance(exc, ApiException) and exc.status == HTTP_GONE:
                    st.resource_version = None
                self._stop.wait(pause)

    def _unreadable(self, res: Resource, st: _State, exc: Exception) -> bool:
        """A detection-only kind the API refuses to list: synced empty, the reason kept in the model."""
        if (res.kind not in DETECTION_ONLY_KINDS or st.resource_version is not None
                or not isinstance(exc, ApiException) or exc.status not in UNREADABLE_STATUS):
            return False
        self.model.replace(res.kind, [], namespace=res.namespace)
        self.model.set_unreadable(res.kind, res.namespace, UNREADABLE_STATUS[exc.status])
        st.synced.set()
        return True

    def _list(self, res: Resource) -> str:
        """List page by page, applying each page as it comes (a relist holds the model plus one page, never a
        second copy of the cluster); what the list did not return is forgotten at its end."""
        with bulk_build():
            return self._list_pages(res)

    def _list_pages(self, res: Resource) -> str:
        seen: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            try:
                head, items = decode_list(res.lister(**kwargs).data)
            except ApiException as exc:
                if exc.status == HTTP_GONE and token:  # the continue token expired: start over
                    seen, token = set(), None
                    continue
                raise
            if head is None:
                raise ValueError(f"{res.name}: the API answered a list request with something else")
            for item in items:
                obj = trim(res.kind, item)
                self.model.apply("MODIFIED", res.kind, obj)
                seen.add(object_key(obj))
            meta = head.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.model.forget_unseen(res.kind, seen, namespace=res.namespace)
                return str(meta.get("resourceVersion") or "")

    def _watch(self, res: Resource, st: _State) -> str | None:
        resp = res.lister(watch=True, resource_version=st.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=self.watch_timeout_s, _preload_content=False,
                          _request_timeout=(10, self.watch_timeout_s + 30))
        self._open[res.name] = resp
        rv = st.resource_version
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if not line:
                    continue
                event = decode(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == HTTP_GONE:
                        raise ResourceExpired(obj.get("message"))
                    raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.model.apply(kind, res.kind, trim(res.kind, obj))
                    st.events += 1
        finally:
            self._open.pop(res.name, None)
            resp.close()
            resp.release_conn()
        return rv


_registry: dict[str, LiveSource] = {}
_registry_lock = threading.Lock()


def shared_live_source(kubeconfig: Path | str | None = None,
                       configmap_namespaces: Iterable[str] | None = None) -> LiveSource:
    """One warm cache per process and kubeconfig: diagnoses share it, never re-list. The ConfigMap
    namespaces default to NETDIAG_CONFIGMAP_NAMESPACES (the chart sets it to what its Roles grant)."""
    key = str(kubeconfig or "")
    with _registry_lock:
        source = _registry.get(key)
        if source is None:
            if configmap_namespaces is None:
                configmap_namespaces = Settings.from_env().configmap_namespaces
            source = _registry[key] = LiveSource(api_client(kubeconfig),
                                                 configmap_namespaces=configmap_namespaces).start()
        return source


def close_shared_live_source(kubeconfig: Path | str | None = None) -> None:
    with _registry_lock:
        source = _registry.pop(str(kubeconfig or ""), None)
    if source is not None:
        source.stop()
