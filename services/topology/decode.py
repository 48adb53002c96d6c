"""Fast JSON decoding of Kubernetes lists (msgspec): a list's items are split without being parsed, and a
Pod is decoded straight into the model's form (a `Trimmed` dict), so the volumes, env, resources and
statuses' bulk of 150,000 pods are never built as Python objects.

A pod's repeated subtrees (labels, annotations, container lists and statuses, conditions) are trimmed once per
distinct value (services.topology.decode._Memo): the pods of one Deployment share their template's
bytes, so most of them cost a dict lookup. The trimming itself is the model's (services.topology.model's
pod_* functions, the same ones its dict path calls), so the fast path is a shortcut, never a different
meaning. A pod whose fields do not have the API's shape (a hand-edited snapshot) is decoded as a plain dict
instead, and trimmed by the dict path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from services.topology.model import (
    DROP,
    Obj,
    Trimmed,
    endpoint_ref,
    intern,
    pod_annotations,
    pod_conditions,
    pod_container_statuses,
    pod_containers,
    share,
    trim,
)

DecodeError = msgspec.DecodeError

# Fields are named as the API spells them (camelCase); UNSET ones are absent; an empty Raw is an absent subtree.
Opt = Any | UnsetType
_ABSENT = Raw()


class _Meta(Struct):
    name: Opt = UNSET
    namespace: Opt = UNSET
    uid: Opt = UNSET
    resourceVersion: Opt = UNSET
    labels: Raw = _ABSENT
    annotations: Raw = _ABSENT
    deletionTimestamp: Opt = UNSET


class _PodSpec(Struct):
    nodeName: Opt = UNSET
    hostNetwork: Opt = UNSET
    dnsPolicy: Opt = UNSET
    subdomain: Opt = UNSET
    hostname: Opt = UNSET
    initContainers: Raw = _ABSENT
    containers: Raw = _ABSENT


class _Condition(Struct):
    type: Opt = UNSET
    status: Opt = UNSET
    reason: Opt = UNSET
    message: Opt = UNSET


class _StateDetail(Struct):
    reason: Opt = UNSET
    exitCode: Opt = UNSET


class _ContainerStatus(Struct):
    name: Opt = UNSET
    ready: Opt = UNSET
    started: Opt = UNSET
    restartCount: Opt = UNSET
    state: dict[str, _StateDetail | None] | UnsetType | None = UNSET


class _PodStatus(Struct):
    phase: Opt = UNSET
    reason: Opt = UNSET
    message: Opt = UNSET
    podIP: Opt = UNSET
    podIPs: Opt = UNSET
    hostIP: Opt = UNSET
    hostIPs: Raw = _ABSENT
    # decoded, then memoised by what is kept of them: timestamps and container ids make each pod's bytes its own
    conditions: list[_Condition] | UnsetType | None = UNSET
    initContainerStatuses: list[_ContainerStatus] | UnsetType | None = UNSET
    containerStatuses: list[_ContainerStatus] | UnsetType | None = UNSET


class _Pod(Struct):
    apiVersion: Opt = UNSET
    metadata: _Meta | None = None
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


class _Endpoint(Struct):
    addresses: Opt = UNSET
    conditions: Raw = _ABSENT
    nodeName: Opt = UNSET
    zone: Opt = UNSET
    hints: Raw = _ABSENT
    targetRef: dict[str, Any] | UnsetType | None = UNSET


class _Kind(Struct):
    kind: Opt = UNSET


class _List(Struct):
    apiVersion: Opt = UNSET
    kind: Opt = UNSET
    metadata: Opt = UNSET
    items: list[Raw] | UnsetType = UNSET


_pod = msgspec.json.Decoder(_Pod)
to_builtins = msgspec.to_builtins
_encode = msgspec.json.Encoder().encode
_kind = msgspec.json.Decoder(_Kind)
_list = msgspec.json.Decoder(_List)
_fields = msgspec.json.Decoder(dict[str, Raw])
_endpoints = msgspec.json.Decoder(list[_Endpoint] | None)
_any = msgspec.json.Decoder()


class _Memo:
    """A subtree's trimmed form by its JSON bytes: the raw bytes of a Raw field, or the encoding of a decoded
    struct, which holds only the fields the model keeps (so a container status' timestamps and ids, dropped by
    the decoder, do not make each pod's different). Forgotten past `limit` distinct ones, as `share` is."""

    def __init__(self, trim: Callable[[Any], Any], typed: bool = False, limit: int = 20_000) -> None:
        self.trim = trim
        self.key: Callable[[Any], bytes] = _encode if typed else bytes
        self.load: Callable[[Any], Any] = to_builtins if typed else _any.decode
        self.limit = limit
        self._memo: dict[bytes, Any] = {}

    def __call__(self, value: Any) -> Any:
        key = self.key(value)
        found = self._memo.get(key, _MISSING)
        if found is _MISSING:
            if len(self._memo) >= self.limit:
                self._memo.clear()
            found = self._memo[key] = self.trim(self.load(value))
        return found


_MISSING = object()
_labels = _Memo(share)
_annotations = _Memo(pod_annotations)
_containers = _Memo(lambda value: pod_containers(value, host_network=False))
_host_containers = _Memo(lambda value: pod_containers(value, host_network=True))
_shared = _Memo(share)
_conditions = _Memo(pod_conditions, typed=True)
_statuses = _Memo(pod_container_statuses, typed=True)


def _pod_obj(pod: _Pod) -> Trimmed:
    """The model's form of a decoded pod: what services.topology.model's _trim_pod makes of the same JSON, field
    for field and in the same order (tests/topology/test_scale.py compares them). Written out field by field:
    this runs 150,000 times in a load."""
    meta: Obj = {}
    if (m := pod.metadata) is not None:
        if m.name is not UNSET:
            meta["name"] = m.name
        if m.namespace is not UNSET:
            meta["namespace"] = intern(m.namespace)
        if m.uid is not UNSET:
            meta["uid"] = m.uid
        if m.resourceVersion is not UNSET:
            meta["resourceVersion"] = m.resourceVersion
        if m.labels:
            meta["labels"] = _labels(m.labels)
        if m.annotations and (annotations := _annotations(m.annotations)) is not DROP:
            meta["annotations"] = annotations
        if m.deletionTimestamp is not UNSET:
            meta["deletionTimestamp"] = m.deletionTimestamp
    spec: Obj = {}
    if (s := pod.spec) is not None:
        if s.nodeName is not UNSET:
            spec["nodeName"] = intern(s.nodeName)
        if s.hostNetwork is not UNSET:
            spec["hostNetwork"] = s.hostNetwork
        if s.dnsPolicy is not UNSET:
            spec["dnsPolicy"] = intern(s.dnsPolicy)
        if s.subdomain is not UNSET:
            spec["subdomain"] = intern(s.subdomain)
        if s.hostname is not UNSET:
            spec["hostname"] = intern(s.hostname)
        containers = _host_containers if s.hostNetwork else _containers
        if s.initContainers and (found := containers(s.initContainers)) is not DROP:
            spec["initContainers"] = found
        if s.containers and (found := containers(s.containers)) is not DROP:
            spec["containers"] = found
    status: Obj = {}
    if (st := pod.status) is not None:
        if st.phase is not UNSET:
            status["phase"] = intern(st.phase)
        if st.reason is not UNSET:
            status["reason"] = intern(st.reason)
        if st.message is not UNSET:
            status["message"] = st.message
        if st.podIP is not UNSET:
            status["podIP"] = st.podIP
        if st.podIPs is not UNSET:
            status["podIPs"] = st.podIPs
        if st.hostIP is not UNSET:
            status["hostIP"] = intern(st.hostIP)
        if st.hostIPs:
            status["hostIPs"] = _shared(st.hostIPs)
        if st.conditions:
            status["conditions"] = _conditions(st.conditions)
        if st.initContainerStatuses:
            status["initContainerStatuses"] = _statuses(st.initContainerStatuses)
        if st.containerStatuses:
            status["containerStatuses"] = _statuses(st.containerStatuses)
    return Trimmed(apiVersion=intern("v1" if pod.apiVersion is UNSET else pod.apiVersion), kind="Pod",
                   metadata=meta, spec=spec, status=status)


def _endpoint_obj(ep: _Endpoint) -> Obj:
    """The model's form of a decoded endpoint: what services.topology.model's _trim_endpoint makes of the same
    JSON, field for field and in the same order. 150,000 of these in a load."""
    out: Obj = {}
    if ep.addresses is not UNSET:
        out["addresses"] = ep.addresses
    if ep.conditions:
        out["conditions"] = _shared(ep.conditions)
    if ep.nodeName is not UNSET:
        out["nodeName"] = intern(ep.nodeName)
    if ep.zone is not UNSET:
        out["zone"] = intern(ep.zone)
    if ep.hints:
        out["hints"] = _shared(ep.hints)
    if ep.targetRef:
        out["targetRef"] = endpoint_ref(ep.targetRef)
    return out


def _slice_obj(raw: bytes | Raw) -> Trimmed | None:
    """The model's form of an EndpointSlice: its few top-level fields go through the dict path (trim), its
    endpoints are decoded typed (_endpoint_obj). None when the item is no EndpointSlice-shaped object."""
    fields = _fields.decode(raw)
    head = {k: _any.decode(v) for k, v in fields.items() if k != "endpoints"}
    if head.get("kind", "EndpointSlice") != "EndpointSlice" or not isinstance(head.get("metadata") or {}, dict):
        return None  # another kind in an EndpointSliceList, or odd metadata: the dict path says what it is
    endpoints = _endpoints.decode(fields["endpoints"]) if "endpoints" in fields else None
    out = trim("EndpointSlice", head)
    out["endpoints"] = [_endpoint_obj(ep) for ep in endpoints or []]  # the dict path's last key too
    return Trimmed(out)


def decode(data: bytes | str) -> Any:
    """Any JSON document (DecodeError when it is none)."""
    return _any.decode(data)


def decode_item(raw: bytes | Raw, kind: str | None) -> Any:
    """One list item; `kind` is the typed list's item kind (None: read the item's own). A Pod comes back in the
    model's form (trim() passes it through), anything else as the JSON says."""
    if kind is None:
        try:
            found = _kind.decode(raw).kind
        except msgspec.ValidationError:  # not an object: the caller says what it is
            return _any.decode(raw)
        kind = found if isinstance(found, str) else None
    try:
        if kind == "Pod":
            return _pod_obj(_pod.decode(raw))
        if kind == "EndpointSlice" and (found_slice := _slice_obj(raw)) is not None:
            return found_slice
    except msgspec.ValidationError:  # not the API's shape: decoded as a plain dict, trimmed by the dict path
        pass
    return _any.decode(raw)


def decode_list(data: bytes | str) -> tuple[Obj | None, Iterator[Any]]:
    """A list document as (its envelope without items, its items decoded one at a time), or (None, …)
    with the document itself as the only item when it is no list. Raises DecodeError on bad JSON."""
    try:
        envelope = _list.decode(data)
    except msgspec.ValidationError:  # no object, or `items` is no list
        return None, iter([_any.decode(data)])
    if envelope.items is UNSET:
        return None, iter([_any.decode(data)])
    head = {k: v for k, v in msgspec.structs.asdict(envelope).items() if k != "items" and v is not UNSET}
    kind = head.get("kind")
    item_kind = kind[:-4] if isinstance(kind, str) and kind.endswith("List") and kind != "List" else None
    return head, (decode_item(raw, item_kind) for raw in envelope.items)
