"""The lab API's object store: objects by kind, one global resourceVersion, a bounded watch history.

Thread-safe (the lab mutates it from test threads while the HTTP server reads it on its own loop).
It also plays the EndpointSlice/Endpoints controllers: any Pod or Service change re-derives the
endpoint objects of that namespace with `lab.objects.endpoint_objects`, so a readiness flip shows up
in the slices exactly as it would in a cluster.
"""

from __future__ import annotations

import bisect
import copy
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lab.objects import (
    RESOURCE_BY_KIND,
    Obj,
    endpoint_objects,
    node_ready_patch,
    pod_status_patch,
    timestamp,
)

ENDPOINT_CONTROLLER = "endpointslice-controller.k8s.io"
FIRST_RESOURCE_VERSION = 1000  # any opaque start; real clusters are never at 1


class ResourceExpired(Exception):
    """A resourceVersion older than the retained history (the apiserver's 410 Gone)."""


class NotFound(KeyError):
    pass


class SelectorError(ValueError):
    """An unparsable or unsupported label/field selector (the apiserver's 400 BadRequest)."""


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    obj: Obj
    prev: Obj | None  # the object before a MODIFIED/DELETED, to compute selector transitions


def object_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


# ------------------------------------------------------------------ selectors

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9._-]*)\s*)?$"
)


def _split_top_level(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # = != in notin exists !exists
    values: frozenset[str] = frozenset()

    def __call__(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return self.key in labels
            case "!exists":
                return self.key not in labels
            case "=" | "in":
                return value in self.values
            case _:  # != and notin also match objects without the label
                return value not in self.values


def parse_label_selector(selector: str) -> list[LabelRequirement]:
    """Kubernetes label selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`."""
    reqs: list[LabelRequirement] = []
    for part in _split_top_level(selector):
        m = _REQUIREMENT.match(part)
        if not m or (m["neg"] and m["op"]):
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        key, op, value = m["key"], (m["op"] or "").strip(), m["value"] or ""
        if not op:
            reqs.append(LabelRequirement(key, "!exists" if m["neg"] else "exists"))
        elif op in ("in", "notin"):
            if not value.startswith("("):
                raise SelectorError(f"{op} needs a parenthesised value set: {part.strip()!r}")
            reqs.append(LabelRequirement(key, op, frozenset(v.strip() for v in value[1:-1].split(",") if v.strip())))
        else:
            reqs.append(LabelRequirement(key, "!=" if op == "!=" else "=", frozenset({value})))
    return reqs


def _path(*keys: str) -> Callable[[Obj], str]:
    def get(obj: Obj) -> str:
        value: object = obj
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return str(value).lower()
        return "" if value is None else str(value)
    return get


_COMMON_FIELDS = {"metadata.name": _path("metadata", "name"), "metadata.namespace": _path("metadata", "namespace")}
# the field labels each kind's registry strategy accepts upstream (GetAttrs / AddFieldLabelConversionFunc)
SUPPORTED_FIELDS: dict[str, dict[str, Callable[[Obj], str]]] = {
    "Pod": {
        "spec.nodeName": _path("spec", "nodeName"), "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": lambda o: str(bool(o["spec"].get("hostNetwork", False))).lower(),
        "status.phase": _path("status", "phase"), "status.podIP": _path("status", "podIP"),
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Node": {"spec.unschedulable": lambda o: str(bool(o["spec"].get("unschedulable", False))).lower()},
    "Namespace": {"status.phase": _path("status", "phase")},
    "Service": {"spec.clusterIP": _path("spec", "clusterIP"), "spec.type": _path("spec", "type")},
}

@dataclass(frozen=True)
class FieldRequirement:
    get: Callable[[Obj], str]
    value: str
    negate: bool

    def __call__(self, obj: Obj) -> bool:
        return (self.get(obj) == self.value) != self.negate


def parse_field_selector(kind: str, selector: str) -> list[FieldRequirement]:
    fields = _COMMON_FIELDS | SUPPORTED_FIELDS.get(kind, {})
    reqs: list[FieldRequirement] = []
    for part in _split_top_level(selector):
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector requirement: {part.strip()!r}")
        field, op, value = m.groups()
        if field not in fields:
            raise SelectorError(f"field label not supported: {field}")
        reqs.append(FieldRequirement(fields[field], value, op == "!="))
    return reqs


@dataclass
class Filter:
    """What a list or watch request asks for: a namespace, label and field selectors."""

    namespace: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, kind: str, namespace: str | None, label_selector: str | None,
              field_selector: str | None) -> Filter:
        return cls(namespace, tuple(parse_label_selector(label_selector or "")),
                   tuple(parse_field_selector(kind, field_selector or "")))

    @property
    def selective(self) -> bool:
        return bool(self.labels or self.fields)

    def __call__(self, obj: Obj) -> bool:
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(p(labels) for p in self.labels) and all(p(obj) for p in self.fields)


# ------------------------------------------------------------------ the store


def _now() -> str:
    return timestamp(datetime.now(UTC))


def _without_rv(obj: Obj) -> Obj:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}


class ObjectStore:
    def __init__(self, history: int = 1000) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {kind: {} for kind in RESOURCE_BY_KIND}
        self._order: dict[str, list[tuple[str, str]]] = {}  # kind → its keys sorted (dropped when keys change)
        self._rv = FIRST_RESOURCE_VERSION
        self._events: list[WatchEvent] = []
        self._history = history
        self._compacted_rv = FIRST_RESOURCE_VERSION  # watches from below this get 410 Gone

    # ---------------------------------------------------------- reading

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, kind: str, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._objects[self._kind(kind)].get((namespace or "", name))
            if obj is None:
                raise NotFound(f"{kind} {namespace + '/' if namespace else ''}{name} not found")
            return copy.deepcopy(obj)

    def snapshot(self, kind: str, flt: Filter | None = None) -> tuple[list[Obj], int]:
        """Matching objects sorted by (namespace, name), and the resourceVersion they are current at.

        The returned dicts are the stored ones: callers must not mutate them (the store replaces whole
        objects on every change, so a snapshot stays consistent)."""
        with self._lock:
            bucket = self._objects[self._kind(kind)]
            return [bucket[k] for k in self._sorted(kind) if flt is None or flt(bucket[k])], self._rv

    def page(self, kind: str, flt: Filter, after: tuple[str, str] | None, limit: int) -> tuple[list[Obj], int, int]:
        """One page of a paged list: up to `limit` (0: all) matching objects after the key `after`, in (namespace,
        name) order as the API server walks its keys, the current resourceVersion and how many more match. A
        page costs its own size, not the whole kind's (a 150,000-pod list is 300 pages)."""
        with self._lock:
            bucket, keys = self._objects[self._kind(kind)], self._sorted(kind)
            start = bisect.bisect_right(keys, after) if after is not None else 0
            if flt.namespace is None and not flt.selective:
                end = start + limit if limit else len(keys)
                return [bucket[k] for k in keys[start:end]], self._rv, max(0, len(keys) - end)
            matching = [bucket[k] for k in keys[start:] if flt(bucket[k])]
            page = matching[:limit] if limit else matching
            return page, self._rv, len(matching) - len(page)

    def _sorted(self, kind: str) -> list[tuple[str, str]]:
        keys = self._order.get(kind)
        if keys is None:
            keys = self._order[kind] = sorted(self._objects[kind])
        return keys

    def events_since(self, kind: str, rv: int) -> tuple[list[WatchEvent], int]:
        """Events of `kind` after `rv`, and the current resourceVersion; ResourceExpired if `rv` is compacted."""
        with self._lock:
            if rv < self._compacted_rv:
                raise ResourceExpired(f"too old resource version: {rv} ({self._compacted_rv})")
            lo, hi = 0, len(self._events)
            while lo < hi:  # events are ordered by rv: bisect for the first one after `rv`
                mid = (lo + hi) // 2
                if self._events[mid].rv <= rv:
                    lo = mid + 1
                else:
                    hi = mid
            return [e for e in self._events[lo:] if e.kind == kind], self._rv

    def check_not_expired(self, rv: int) -> None:
        with self._lock:
            if rv < self._compacted_rv:
                raise ResourceExpired(f"too old resource version: {rv} ({self._compacted_rv})")

    # ---------------------------------------------------------- mutating

    def apply(self, obj: Obj) -> Obj:
        """Create or replace an object (server-side fields kept); emits ADDED/MODIFIED. Returns the stored copy."""
        with self._lock:
            stored = self._put(obj)
            self._after_change(stored)
            return copy.deepcopy(stored)

    def load(self, objects: list[Obj]) -> None:
        """Put every object, then derive each touched namespace's endpoints once: deriving them per object, as
        apply() does, rescans the namespace on every pod (hours at 150,000 pods)."""
        with self._lock:
            touched = set()
            for obj in objects:
                stored = self._put(obj)
                if stored["kind"] in ("Pod", "Service"):
                    touched.add(stored["metadata"].get("namespace"))
            pods: dict[str, list[Obj]] = defaultdict(list)
            services: dict[str, dict[str, Obj]] = defaultdict(dict)
            for (ns, _), pod in self._objects["Pod"].items():
                pods[ns].append(pod)
            for (ns, name), svc in self._objects["Service"].items():
                services[ns][name] = svc
            for ns in sorted(n for n in touched if n):
                self._sync_endpoints(ns, pods[ns], services[ns])

    def sync(self, objects: list[Obj]) -> int:
        """Make the store hold exactly `objects` (plus derived endpoints): applies what changed, deletes what
        is gone. Returns how many watch events that produced."""
        with self._lock:
            before = self._rv
            wanted = {(o["kind"], object_key(o)) for o in objects}
            derived = ("EndpointSlice", "Endpoints")  # re-derived by _after_change
            for kind, bucket in self._objects.items():
                for key in [k for k in bucket if (kind, k) not in wanted and kind not in derived]:
                    self._after_change(self._remove(kind, key))
            for obj in objects:
                if obj["kind"] not in derived:
                    self._after_change(self._put(obj))
            return self._rv - before

    def delete(self, kind: str, namespace: str | None, name: str) -> Obj:
        with self._lock:
            gone = self._remove(self._kind(kind), (namespace or "", name))
            self._after_change(gone)
            return copy.deepcopy(gone)

    def set_pod_ready(self, key: str, ready: bool, container: str | None = None) -> Obj:
        """Flip readiness of one container (default: all) of pod `namespace/name`, as the kubelet reports it."""
        with self._lock:
            pod = self.get("Pod", *key.split("/", 1))
            current = {cs["name"]: cs["ready"] or pod["status"]["phase"] != "Running"
                       for cs in pod["status"].get("containerStatuses", [])}
            wanted = {name: ready if container in (None, name) else was for name, was in current.items()}
            return self.apply(pod_status_patch(pod, pod["status"]["phase"], wanted))

    def set_pod_terminating(self, key: str) -> Obj:
        """A graceful delete in progress: deletionTimestamp set, the pod still there (endpoints terminating)."""
        with self._lock:
            pod = self.get("Pod", *key.split("/", 1))
            pod["metadata"] |= {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": 30}
            return self.apply(pod)

    def set_node_ready(self, name: str, ready: bool) -> Obj:
        with self._lock:
            return self.apply(node_ready_patch(self.get("Node", None, name), ready))

    # ---------------------------------------------------------- internals

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in RESOURCE_BY_KIND:
            raise ValueError(f"the lab API serves no kind {kind!r}; known: {sorted(RESOURCE_BY_KIND)}")
        return kind

    def _record(self, type_: str, kind: str, obj: Obj, prev: Obj | None) -> None:
        self._events.append(WatchEvent(self._rv, type_, kind, obj, prev))
        if len(self._events) > self._history:
            dropped = self._events[: len(self._events) - self._history]
            del self._events[: len(dropped)]
            self._compacted_rv = dropped[-1].rv
        self._notify()

    def _notify(self) -> None:
        """Hook: called after every recorded event (the HTTP server wakes its watchers)."""

    def _put(self, obj: Obj) -> Obj:
        kind = self._kind(obj.get("kind", ""))
        resource = RESOURCE_BY_KIND[kind]
        obj = copy.deepcopy(obj)
        obj["apiVersion"] = resource.api_version
        meta = obj.setdefault("metadata", {})
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = object_key(obj)
        bucket = self._objects[kind]
        existing = bucket.get(key)
        if existing is not None:
            meta["uid"] = existing["metadata"]["uid"]
            meta["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
            if "generation" in existing["metadata"]:
                spec_changed = obj.get("spec") != existing.get("spec")
                meta["generation"] = existing["metadata"]["generation"] + spec_changed
            if _without_rv(obj) == _without_rv(existing):
                return existing  # a no-op update does not bump the resourceVersion
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        bucket[key] = obj
        if existing is None:
            self._order.pop(kind, None)
        self._record("MODIFIED" if existing is not None else "ADDED", kind, obj, existing)
        return obj

    def _remove(self, kind: str, key: tuple[str, str]) -> Obj:
        existing = self._objects[kind].pop(key, None)
        if existing is None:
            raise NotFound(f"{kind} {'/'.join(k for k in key if k)} not found")
        self._order.pop(kind, None)
        self._rv += 1
        gone = {**existing, "metadata": {**existing["metadata"], "resourceVersion": str(self._rv)}}
        self._record("DELETED", kind, gone, existing)
        return gone

    def _after_change(self, obj: Obj) -> None:
        if obj["kind"] in ("Pod", "Service"):
            self._sync_endpoints(obj["metadata"]["namespace"])

    def _sync_endpoints(self, namespace: str, pods: list[Obj] | None = None,
                        services: dict[str, Obj] | None = None) -> None:
        if pods is None:
            pods = [p for (ns, _), p in self._objects["Pod"].items() if ns == namespace]
        if services is None:
            services = {name: s for (ns, name), s in self._objects["Service"].items() if ns == namespace}
        desired: dict[tuple[str, tuple[str, str]], Obj] = {}
        for svc in services.values():
            for obj in endpoint_objects(svc, pods):
                desired[(obj["kind"], object_key(obj))] = obj
        for kind in ("EndpointSlice", "Endpoints"):
            for key, current in list(self._objects[kind].items()):
                labels = current["metadata"].get("labels") or {}
                managed = (labels.get("endpointslice.kubernetes.io/managed-by") == ENDPOINT_CONTROLLER
                           if kind == "EndpointSlice" else labels.get("kubernetes.io/service-name") is not None)
                if key[0] == namespace and managed and (kind, key) not in desired:
                    self._remove(kind, key)
        for obj in desired.values():
            self._put(obj)
