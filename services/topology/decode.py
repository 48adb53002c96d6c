"""Fast JSON decoding of Kubernetes lists (msgspec): a list's items are split without being parsed, and a
Pod is decoded straight into the few fields the model keeps (services.topology.model.trim), so the
volumes, env, resources and statuses' bulk of 150,000 pods are never built as Python objects.

A pod whose fields do not have the API's shape (a hand-edited snapshot) is decoded as a plain dict
instead, and trimmed the same way: the typed path is a shortcut, never a different meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from services.topology.model import Obj

DecodeError = msgspec.DecodeError

# Fields are named as the API spells them (camelCase); UNSET ones are left out of the dict, as if absent.
Opt = Any | UnsetType


class _Meta(Struct):
    name: Opt = UNSET
    namespace: Opt = UNSET
    uid: Opt = UNSET
    resourceVersion: Opt = UNSET
    labels: Opt = UNSET
    annotations: Opt = UNSET
    deletionTimestamp: Opt = UNSET


class _Container(Struct):
    name: Opt = UNSET
    ports: Opt = UNSET
    command: Opt = UNSET
    args: Opt = UNSET


class _ContainerStatus(Struct):
    name: Opt = UNSET
    ready: Opt = UNSET
    started: Opt = UNSET
    restartCount: Opt = UNSET
    state: Opt = UNSET


class _PodSpec(Struct):
    nodeName: Opt = UNSET
    hostNetwork: Opt = UNSET
    dnsPolicy: Opt = UNSET
    subdomain: Opt = UNSET
    hostname: Opt = UNSET
    initContainers: list[_Container] | UnsetType | None = UNSET
    containers: list[_Container] | UnsetType | None = UNSET


class _PodStatus(Struct):
    phase: Opt = UNSET
    reason: Opt = UNSET
    message: Opt = UNSET
    podIP: Opt = UNSET
    podIPs: Opt = UNSET
    hostIP: Opt = UNSET
    hostIPs: Opt = UNSET
    conditions: Opt = UNSET
    initContainerStatuses: list[_ContainerStatus] | UnsetType | None = UNSET
    containerStatuses: list[_ContainerStatus] | UnsetType | None = UNSET


class _Pod(Struct):
    apiVersion: Opt = UNSET
    kind: Opt = UNSET
    metadata: _Meta | UnsetType | None = UNSET
    spec: _PodSpec | UnsetType | None = UNSET
    status: _PodStatus | UnsetType | None = UNSET


class _Kind(Struct):
    kind: Opt = UNSET


class _List(Struct):
    apiVersion: Opt = UNSET
    kind: Opt = UNSET
    metadata: Opt = UNSET
    items: list[Raw] | UnsetType = UNSET


_pod = msgspec.json.Decoder(_Pod)
_kind = msgspec.json.Decoder(_Kind)
_list = msgspec.json.Decoder(_List)
_any = msgspec.json.Decoder()


def decode(data: bytes | str) -> Any:
    """Any JSON document (DecodeError when it is none)."""
    return _any.decode(data)


def decode_item(raw: bytes | Raw, kind: str | None) -> Any:
    """One list item; `kind` is the typed list's item kind (None: read the item's own)."""
    if kind is None:
        try:
            found = _kind.decode(raw).kind
        except msgspec.ValidationError:  # not an object: the caller says what it is
            return _any.decode(raw)
        kind = found if isinstance(found, str) else None
    if kind == "Pod":
        try:
            return msgspec.to_builtins(_pod.decode(raw))
        except msgspec.ValidationError:
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
