"""The cluster model: trimmed Kubernetes objects and the lookup indexes over them.

Every source (snapshot or live watch) feeds the model through `apply()`, which keeps the
indexes current object by object, so a diagnosis never scans all pods: an address resolves
through a dict keyed by its integer value, a Service's endpoints through its slices.

Objects stay API-form dicts (what the simulator consumes), trimmed to the fields a diagnosis
reads (see docs/topology.md). They are compact: identical subtrees (label sets, container
lists, conditions, container statuses) are stored once and shared between objects, so the
model's objects are read-only; nobody may mutate one in place.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from shared.schemas import IPAddress
from shared.selectors import LabelSelector, SelectorError, compile_selector

KINDS = ("Node", "Pod", "Service", "EndpointSlice", "Namespace", "NetworkPolicy", "ConfigMap", "DaemonSet", "IPPool",
         "FelixConfiguration", "PodEIP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Obj = dict[str, Any]

# Pod fields the diagnosis reads; everything else (volumes, env, resources, probes'
# bodies, timestamps …) is dropped at the edge.
_POD_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp")
_POD_SPEC_KEYS = ("nodeName", "hostNetwork", "dnsPolicy", "subdomain", "hostname")
_CONTAINER_KEYS = ("name", "ports")
_HOST_CONTAINER_KEYS = ("name", "ports", "command", "args")  # control-plane flags (service CIDR)
_POD_STATUS_KEYS = ("phase", "reason", "message", "podIP", "podIPs", "hostIP", "hostIPs")
_CONDITION_KEYS = ("type", "status", "reason", "message")
_CONTAINER_STATUS_KEYS = ("name", "ready", "started", "restartCount")
_ENDPOINT_KEYS = ("addresses", "conditions", "nodeName", "zone", "hints")
# Node status bulk no check reads (image lists run to kilobytes per node)
_NODE_STATUS_DROP = ("images", "volumesInUse", "volumesAttached")


def _compact(value: Any) -> Any:
    """Rebuild JSON containers tightly with interned strings (labels, names repeat a lot)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


class _Shared:
    """Hash-consing of JSON subtrees: an equal label set, container list or condition list is stored
    once and shared by every object that has it (150,000 pods of a few hundred Deployments carry a few
    hundred distinct ones). The memo is forgotten past `limit` entries (a long-lived watch sees label
    sets come and go); objects keep what they share, later ones start sharing anew."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._memo: dict[bytes, Any] = {}
        self._encode = msgspec.json.Encoder().encode

    def __call__(self, value: Any) -> Any:
        if not value or not isinstance(value, dict | list):
            return _compact(value)
        try:
            key = self._encode(value)
        except (TypeError, msgspec.EncodeError):  # a YAML value JSON cannot say: kept, not shared
            return _compact(value)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= self.limit:
                self._memo.clear()
            found = self._memo[key] = _compact(value)
        return found


share = _Shared()


def _pick(obj: Obj, keys: tuple[str, ...]) -> Obj:
    return {k: obj[k] for k in keys if k in obj}


def _trim_meta(meta: Obj) -> Obj:
    meta = dict(meta)
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and isinstance(annotations, dict) and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if not meta["annotations"]:
            del meta["annotations"]
    for key in ("labels", "annotations", "ownerReferences"):
        if key in meta:
            meta[key] = share(meta[key])
    return meta


_gc_lock = threading.Lock()
_gc_holds = 0
_gc_was_enabled = False


@contextmanager
def bulk_build() -> Iterator[None]:
    """Pause the cyclic garbage collector while a load or list builds objects by the million: each of its full
    collections would walk every object built so far, for nothing (the model's objects are acyclic, freed by
    reference counting), and they were most of a 150,000-pod load. Concurrent holds (one watch thread per
    kind) count: the collector is back as it was when the last one ends, and what was built is frozen
    (gc.freeze: long-lived, so later collections do not walk the whole cluster; at 150,000 pods one walk
    took seconds, and landed in the middle of a diagnosis). Frozen objects are still freed by reference
    counting when the model drops them."""
    global _gc_holds, _gc_was_enabled
    with _gc_lock:
        if _gc_holds == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holds += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holds -= 1
            if _gc_holds == 0 and _gc_was_enabled:
                gc.freeze()
                gc.enable()


class Trimmed(dict[str, Any]):
    """An object already in the model's form (the JSON decoder's pod fast path builds these): trim() passes it
    through as it is."""

    __slots__ = ()


def trim(kind: str, obj: Obj) -> Obj:
    """Drop what the diagnosis never reads: managedFields, last-applied, pod bulk; share the rest."""
    if type(obj) is Trimmed:
        return obj
    if kind == "Pod":
        return _trim_pod(obj)
    meta = _trim_meta(obj.get("metadata") or {})
    out: Obj = {"apiVersion": obj.get("apiVersion", _API_VERSIONS.get(kind, "v1")), "kind": kind, "metadata": meta}
    if kind == "EndpointSlice":
        out.update({k: share(v) for k, v in obj.items() if k not in out and k != "endpoints"})
        out["endpoints"] = [_trim_endpoint(ep) for ep in obj.get("endpoints") or []]
        return out
    for key, value in obj.items():
        if key not in out:
            out[key] = value
    if kind == "Node" and isinstance(out.get("status"), dict):
        out["status"] = {k: v for k, v in out["status"].items() if k not in _NODE_STATUS_DROP}
    return _compact(out)


def intern(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


# A pod's subtrees, each trimmed by one function that both the dict path below and the JSON decoder's fast path
# (services.topology.decode, which memoises them by their raw bytes) call: DROP means "leave the field out".
DROP = object()


def pod_annotations(annotations: Any) -> Any:
    if annotations and isinstance(annotations, dict) and LAST_APPLIED in annotations:
        annotations = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if not annotations:
            return DROP
    return share(annotations)


def pod_containers(containers: Any, host_network: bool) -> Any:
    if not containers:
        return DROP
    keys = _HOST_CONTAINER_KEYS if host_network else _CONTAINER_KEYS
    return share([_pick(c, keys) for c in containers])


def pod_conditions(conditions: Any) -> Any:
    return share([_pick(c, _CONDITION_KEYS) for c in conditions]) if conditions else DROP


def pod_container_statuses(statuses: Any) -> Any:
    if not statuses:
        return DROP
    return share([{**_pick(c, _CONTAINER_STATUS_KEYS), "state": _container_state(c.get("state") or {})}
                  for c in statuses])


def _put(out: Obj, key: str, value: Any) -> None:
    if value is DROP:
        out.pop(key, None)
    else:
        out[key] = value


def _trim_pod(obj: Obj) -> Obj:
    """Unique fields (name, uid, IPs) kept as they are, repeated scalars interned, repeated subtrees shared."""
    meta = obj.get("metadata") or {}
    out_meta = _pick(meta, _POD_META_KEYS)
    if "namespace" in out_meta:
        out_meta["namespace"] = intern(out_meta["namespace"])
    if "labels" in out_meta:
        out_meta["labels"] = share(out_meta["labels"])
    if "annotations" in out_meta:
        _put(out_meta, "annotations", pod_annotations(out_meta["annotations"]))
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    out_spec = {k: intern(v) for k, v in _pick(spec, _POD_SPEC_KEYS).items()}
    for group in ("initContainers", "containers"):
        _put(out_spec, group, pod_containers(spec.get(group), bool(spec.get("hostNetwork"))))
    out_status = _pick(status, _POD_STATUS_KEYS)
    for key in ("phase", "reason", "hostIP"):
        if key in out_status:
            out_status[key] = intern(out_status[key])
    if "hostIPs" in out_status:
        out_status["hostIPs"] = share(out_status["hostIPs"])
    _put(out_status, "conditions", pod_conditions(status.get("conditions")))
    for group in ("initContainerStatuses", "containerStatuses"):
        _put(out_status, group, pod_container_statuses(status.get(group)))
    return {"apiVersion": intern(obj.get("apiVersion", "v1")), "kind": "Pod", "metadata": out_meta,
            "spec": out_spec, "status": out_status}


def _trim_endpoint(ep: Obj) -> Obj:
    """150,000 of these in a big cluster's slices: the addresses and the pod's name are unique, kept as they
    are; the rest repeats (interned, shared). Written out: this is most of loading the slices."""
    out = {k: ep[k] for k in _ENDPOINT_KEYS if k in ep}
    if "conditions" in out:
        out["conditions"] = share(out["conditions"])
    if "hints" in out:
        out["hints"] = share(out["hints"])
    if type(node := out.get("nodeName")) is str:
        out["nodeName"] = sys.intern(node)
    if type(zone := out.get("zone")) is str:
        out["zone"] = sys.intern(zone)
    if ref := ep.get("targetRef"):
        out["targetRef"] = endpoint_ref(ref)
    return out


def endpoint_ref(ref: Obj) -> Obj:
    """An endpoint's targetRef (both the dict path and the decoder's EndpointSlice fast path): the pod's name is
    unique, kept as it is; the kind and namespace repeat (interned). Written out: 150,000 of these in a load."""
    out: Obj = {}
    if "kind" in ref:
        out["kind"] = intern(ref["kind"])
    if "name" in ref:
        out["name"] = ref["name"]
    if "namespace" in ref:
        out["namespace"] = intern(ref["namespace"])
    return out


def _container_state(state: Obj) -> Obj:
    """Which state (running/waiting/terminated) and why; timestamps and ids dropped."""
    return {k: _pick(v or {}, ("reason", "exitCode")) for k, v in state.items()}


_API_VERSIONS = {
    "EndpointSlice": "discovery.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "DaemonSet": "apps/v1",
    "IPPool": "crd.projectcalico.org/v1",  # Calico's CRD (Kubernetes datastore)
    "FelixConfiguration": "crd.projectcalico.org/v1",
    "PodEIP": "alibabacloud.com/v1beta1",  # ack-extend-network-controller's CRD: a pod's own EIP
}


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def parse_ip(value: Any) -> IPAddress | None:
    text = str(value).split("%")[0]
    try:  # the C parser first: it is most of what loading 150,000 pods spends on addresses
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        pass
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_V6 = 1 << 128


def address_key(ip: IPAddress) -> int:
    """The integer the indexes key an address by (IPv6 above every IPv4 value, so ::a.b.c.d stays apart)."""
    return int(ip) if ip.version == 4 else _V6 | int(ip)


def text_key(value: Any) -> int | None:
    """address_key(parse_ip(value)) without building the address object (the load's hot path), None when the
    value is no address."""
    if type(value) is str:
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
        except (OSError, ValueError):
            pass
    ip = parse_ip(value)
    return None if ip is None else address_key(ip)


def _keys(raw: Iterable[Any]) -> Iterator[int]:
    for value in raw:
        if value:
            key = text_key(value)
            if key is not None:
                yield key


def _pod_ip_strings(pod: Obj) -> list[Any]:
    status = pod.get("status") or {}
    return [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]


def pod_ips(pod: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(r) for r in _pod_ip_strings(pod) if r) if ip is not None]


def unusable_addresses(kind: str, obj: Obj) -> list[str]:
    """The address fields of an object that are not IP addresses (a hand-edited snapshot's `not-an-ip`):
    the object is kept, those addresses are not, and the load says so instead of dropping them silently."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    if kind == "Pod":
        ip = status.get("podIP")
        if (not ip or text_key(ip) is not None) and all(
                not isinstance(p, dict) or not p.get("ip") or p["ip"] == ip for p in status.get("podIPs") or []):
            return []  # the common case (one usable address), without the lists below: 150,000 pods in a load
        fields = [("status.podIP", ip)] + [("status.podIPs", p.get("ip"))
                                                            for p in status.get("podIPs") or [] if isinstance(p, dict)]
    elif kind == "Node":
        fields = [(f"status.addresses {a.get('type')}", a.get("address")) for a in status.get("addresses") or []
                  if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP")]
    elif kind == "Service":
        fields = [("spec.clusterIP", ip) for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]
                  if ip not in (None, "", "None")] + [("spec.externalIPs", ip) for ip in spec.get("externalIPs") or []]
    else:
        return []
    return [f"{kind.lower()} {object_key(obj)}: {name} {value!r} is not an IP address"
            for name, value in dict.fromkeys(fields) if value and text_key(value) is None]


def _node_address_strings(node: Obj) -> list[Any]:
    return [a.get("address") for a in (node.get("status") or {}).get("addresses") or []]


def node_addresses(node: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(a) for a in _node_address_strings(node)) if ip is not None]


def _cluster_ip_strings(svc: Obj) -> list[Any]:
    spec = svc.get("spec") or {}
    return [r for r in spec.get("clusterIPs") or [spec.get("clusterIP")] if r != "None"]


def service_cluster_ips(svc: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(r) for r in _cluster_ip_strings(svc) if r) if ip is not None]


def service_external_ips(svc: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(r) for r in (svc.get("spec") or {}).get("externalIPs") or []) if ip]


def _lb_ip_strings(svc: Obj) -> list[Any]:
    return [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]


def service_lb_ips(svc: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(r) for r in _lb_ip_strings(svc) if r) if ip is not None]


def is_host_network(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def pod_phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Unknown")


class KeyIndex(dict[Any, "str | set[str]"]):
    """value → object keys, holding a lone key as the string itself: most addresses, pods and slices
    have exactly one owner, and 150,000 one-element sets would cost more than the objects' keys."""

    def add(self, value: Any, key: str) -> None:
        cur = self.setdefault(value, key)  # one dict operation in the common case (a new value)
        if cur is key:
            return
        if isinstance(cur, set):
            cur.add(key)
        elif cur != key:
            self[value] = {cur, key}

    def discard(self, value: Any, key: str) -> None:
        cur = self.get(value)
        if isinstance(cur, set):
            cur.discard(key)
            if len(cur) == 1:
                self[value] = next(iter(cur))
        elif cur == key:
            del self[value]

    def keys_of(self, value: Any) -> list[str]:
        cur = self.get(value)
        return [] if cur is None else [cur] if isinstance(cur, str) else sorted(cur)


class ClusterModel:
    """Objects by kind and key, and lookup indexes over them.

    Thread-safe for one writer (a watch thread) and many readers: writers hold `lock`;
    a diagnosis holds it while it reads (lookups are dict hits, so briefly).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.generation: dict[str, int] = dict.fromkeys(KINDS, 0)
        # address (address_key) → object keys (several pods may hold one IP: a finished pod and its successor)
        self.pods_by_ip = KeyIndex()
        self.nodes_by_address = KeyIndex()
        self.services_by_cluster_ip = KeyIndex()
        self.services_by_external_ip = KeyIndex()
        self.services_by_lb_ip = KeyIndex()
        self.services_by_node_port = KeyIndex()  # (nodePort, protocol) → Services
        self.pod_eips_by_address = KeyIndex()  # a PodEIP's status.eipAddress → PodEIPs
        self.policies_by_namespace = KeyIndex()
        self.pods_by_component = KeyIndex()  # static control-plane pods
        # the relations: a pod runs on a node; a Service owns slices; a slice lists pods
        self.pods_by_node = KeyIndex()
        self.slices_by_service = KeyIndex()
        self.slices_by_pod = KeyIndex()
        # (kind, namespace) a source may not read (RBAC) → why; detection reports each as an assumption
        self.unreadable: dict[tuple[str, str | None], str] = {}
        # id(NetworkPolicy object) → (the object, its compiled podSelector): compiled once per version of the
        # policy, not once per pod of every diagnosis; apply() drops a replaced or deleted version's entry
        self._pod_selectors: dict[int, tuple[Obj, LabelSelector | None]] = {}

    # ------------------------------------------------------------ writing

    def apply(self, event: str, kind: str, obj: Obj) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED) of an already trimmed object."""
        key = object_key(obj)
        with self.lock:
            store = self.objects[kind]
            old = store.pop(key, None)
            if old is not None:
                for index, value in self._entries(kind, old):
                    index.discard(value, key)
                if kind == "NetworkPolicy":
                    self._pod_selectors.pop(id(old), None)
            if event != "DELETED":
                store[key] = obj
                for index, value in self._entries(kind, obj):
                    index.add(value, key)
            self.generation[kind] += 1

    def replace(self, kind: str, objs: Iterable[Obj], namespace: str | None = None) -> None:
        """A (re-)list: the given objects become the whole set of this kind (in `namespace`). Applied as
        they come, so a relist holds one copy of the objects plus the page in hand, never two."""
        seen: set[str] = set()
        for obj in objs:
            with self.lock:
                self.apply("MODIFIED", kind, obj)
            seen.add(object_key(obj))
        self.forget_unseen(kind, seen, namespace)

    def forget_unseen(self, kind: str, seen: set[str], namespace: str | None = None) -> None:
        """The end of a relist: what the list did not return (in `namespace`) is gone."""
        prefix = f"{namespace}/" if namespace else ""
        with self.lock:
            for key in [k for k in self.objects[kind] if k.startswith(prefix) and k not in seen]:
                self.apply("DELETED", kind, self.objects[kind][key])

    def set_unreadable(self, kind: str, namespace: str | None, reason: str | None) -> None:
        """Record why `kind` (in `namespace`) cannot be read, or clear it (None); a change counts as a
        change of that kind, so cached detections are redone."""
        with self.lock:
            if self.unreadable.get((kind, namespace)) == reason:
                return
            if reason is None:
                del self.unreadable[(kind, namespace)]
            else:
                self.unreadable[(kind, namespace)] = reason
            self.generation[kind] += 1

    def _entries(self, kind: str, obj: Obj) -> Iterator[tuple[KeyIndex, Any]]:
        meta = obj.get("metadata") or {}
        if kind == "Pod":
            for ip in _keys(_pod_ip_strings(obj)):
                yield self.pods_by_ip, ip
            component = (meta.get("labels") or {}).get("component")
            if component:
                yield self.pods_by_component, component
            node = (obj.get("spec") or {}).get("nodeName")
            if node:
                yield self.pods_by_node, node
        elif kind == "Node":
            for ip in _keys(_node_address_strings(obj)):
                yield self.nodes_by_address, ip
        elif kind == "Service":
            for ip in _keys(_cluster_ip_strings(obj)):
                yield self.services_by_cluster_ip, ip
            for ip in _keys((obj.get("spec") or {}).get("externalIPs") or []):
                yield self.services_by_external_ip, ip
            for ip in _keys(_lb_ip_strings(obj)):
                yield self.services_by_lb_ip, ip
            for port in (obj.get("spec") or {}).get("ports") or []:
                if port.get("nodePort"):
                    yield self.services_by_node_port, (int(port["nodePort"]), port.get("protocol") or "TCP")
        elif kind == "NetworkPolicy":
            yield self.policies_by_namespace, meta.get("namespace")
        elif kind == "PodEIP":
            for ip in _keys([(obj.get("status") or {}).get("eipAddress")]):
                yield self.pod_eips_by_address, ip
        elif kind == "EndpointSlice":
            svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if svc:
                yield self.slices_by_service, f"{meta.get('namespace')}/{svc}"
            for ep in obj.get("endpoints") or []:
                ref = ep.get("targetRef") or {}
                if ref.get("kind") == "Pod" and ref.get("name"):
                    yield self.slices_by_pod, f"{ref.get('namespace') or meta.get('namespace')}/{ref['name']}"

    # ------------------------------------------------------------ reading

    def get(self, kind: str, key: str | None) -> Obj | None:
        return self.objects[kind].get(key) if key else None

    def _get_all(self, kind: str, keys: Iterable[str]) -> list[Obj]:
        store = self.objects[kind]
        return [store[k] for k in keys if k in store]

    def pods_at(self, ip: IPAddress) -> list[Obj]:
        return self._get_all("Pod", self.pods_by_ip.keys_of(address_key(ip)))

    def pod_eips_at(self, ip: IPAddress) -> list[Obj]:
        return self._get_all("PodEIP", self.pod_eips_by_address.keys_of(address_key(ip)))

    def nodes_at(self, ip: IPAddress) -> list[Obj]:
        return self._get_all("Node", self.nodes_by_address.keys_of(address_key(ip)))

    def services_by_ip(self, ip: IPAddress) -> tuple[str, list[Obj]]:
        """The Services owning a destination address, and how: cluster_ip, external_ip, lb_ip."""
        for how, index in (("cluster_ip", self.services_by_cluster_ip), ("external_ip",
                           self.services_by_external_ip), ("lb_ip", self.services_by_lb_ip)):
            found = self._get_all("Service", index.keys_of(address_key(ip)))
            if found:
                return how, found
        return "", []

    def services_with_node_port(self, port: int, protocol: str) -> list[Obj]:
        return self._get_all("Service", self.services_by_node_port.keys_of((port, protocol)))

    def slices_of(self, service_key: str) -> list[Obj]:
        return self._get_all("EndpointSlice", self.slices_by_service.keys_of(service_key))

    def services_of_pod(self, pod_key: str) -> list[str]:
        """Services whose EndpointSlices list this pod."""
        services = set()
        for sl in self.slices_by_pod.keys_of(pod_key):
            meta = (self.objects["EndpointSlice"].get(sl) or {}).get("metadata") or {}
            svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if svc:
                services.add(f"{meta.get('namespace')}/{svc}")
        return sorted(services)

    def pods_on_node(self, node: str) -> list[str]:
        return self.pods_by_node.keys_of(node)

    def policies_selecting(self, pods: Iterable[Obj]) -> dict[str, Obj]:
        """The NetworkPolicies (by key) whose podSelector selects one of `pods` in its namespace. A selector the API
        would reject counts as selecting: it is carried, and the simulator says it ignored it."""
        store, found = self.objects["NetworkPolicy"], {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            for key in self.policies_by_namespace.keys_of(meta.get("namespace")):
                if key not in found and (policy := store.get(key)) is not None:
                    selector = self.pod_selector(policy)
                    try:
                        selected = selector is None or selector.matches(labels)
                    except (AttributeError, TypeError):  # labels that are no mapping
                        selected = True
                    if selected:
                        found[key] = policy
        return found

    def pod_selector(self, policy: Obj) -> LabelSelector | None:
        """A NetworkPolicy's compiled podSelector; None when the API would reject it."""
        cached = self._pod_selectors.get(id(policy))
        if cached is None or cached[0] is not policy:
            try:
                selector: LabelSelector | None = compile_selector((policy.get("spec") or {}).get("podSelector"))
            except (SelectorError, AttributeError, TypeError):
                selector = None
            cached = self._pod_selectors[id(policy)] = (policy, selector)
        return cached[1]

    def policies_in(self, namespace: str) -> list[Obj]:
        return self._get_all("NetworkPolicy", self.policies_by_namespace.keys_of(namespace))

    def counts(self) -> dict[str, int]:
        return {kind: len(objs) for kind, objs in self.objects.items()}
