"""The cluster model: trimmed Kubernetes objects, lookup indexes and a networkx graph.

Every source (snapshot or live watch) feeds the model through `apply()`, which keeps the
indexes and the graph current object by object, so a diagnosis never scans all pods:
an address resolves through a dict, a Service's endpoints through its graph neighbours.

Graph nodes are `node:<name>`, `pod:<ns>/<name>`, `service:<ns>/<name>` and
`slice:<ns>/<name>`; edges pod→node (runs on), service→slice (owns), slice→pod
(endpoint). Objects stay plain API-form dicts (what the simulator consumes).
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import networkx as nx

from shared.schemas import IPAddress

KINDS = ("Node", "Pod", "Service", "EndpointSlice", "Namespace", "NetworkPolicy", "ConfigMap", "DaemonSet", "IPPool")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Obj = dict[str, Any]

# Pod fields the diagnosis reads; everything else (volumes, env, resources, probes'
# bodies, timestamps …) is dropped at the edge and repeated strings are interned, which
# is what keeps 150k pods well under 2 GB.
_POD_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp")
_POD_SPEC_KEYS = ("nodeName", "hostNetwork", "dnsPolicy", "subdomain", "hostname")
_CONTAINER_KEYS = ("name", "ports")
_HOST_CONTAINER_KEYS = ("name", "ports", "command", "args")  # control-plane flags (service CIDR)
_POD_STATUS_KEYS = ("phase", "reason", "message", "podIP", "podIPs", "hostIP", "hostIPs")
_CONDITION_KEYS = ("type", "status", "reason", "message")
_CONTAINER_STATUS_KEYS = ("name", "ready", "started", "restartCount")
_ENDPOINT_KEYS = ("addresses", "conditions", "nodeName", "zone", "hints")
_TARGET_REF_KEYS = ("kind", "name", "namespace")


def _compact(value: Any) -> Any:
    """Rebuild JSON containers tightly with interned strings (labels, names repeat a lot)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _pick(obj: Obj, keys: tuple[str, ...]) -> Obj:
    return {k: obj[k] for k in keys if k in obj}


def trim(kind: str, obj: Obj) -> Obj:
    """Drop what the diagnosis never reads: managedFields, last-applied, pod bulk."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if not meta["annotations"]:
            del meta["annotations"]
    out: Obj = {"apiVersion": obj.get("apiVersion", _API_VERSIONS.get(kind, "v1")), "kind": kind, "metadata": meta}
    if kind == "Pod":
        out["metadata"] = _pick(meta, _POD_META_KEYS)
        out["spec"] = _trim_pod_spec(obj.get("spec") or {})
        out["status"] = _trim_pod_status(obj.get("status") or {})
        return _compact(out)
    if kind == "EndpointSlice":
        out.update({k: v for k, v in obj.items() if k not in out and k != "endpoints"})
        out["endpoints"] = [_trim_endpoint(ep) for ep in obj.get("endpoints") or []]
        return _compact(out)
    for key, value in obj.items():
        if key not in out:
            out[key] = value
    return out


def _trim_endpoint(ep: Obj) -> Obj:
    out = _pick(ep, _ENDPOINT_KEYS)
    if ep.get("targetRef"):
        out["targetRef"] = _pick(ep["targetRef"], _TARGET_REF_KEYS)
    return out


def _trim_pod_spec(spec: Obj) -> Obj:
    out = _pick(spec, _POD_SPEC_KEYS)
    keys = _HOST_CONTAINER_KEYS if spec.get("hostNetwork") else _CONTAINER_KEYS
    for group in ("initContainers", "containers"):
        if spec.get(group):
            out[group] = [_pick(c, keys) for c in spec[group]]
    return out


def _container_state(state: Obj) -> Obj:
    """Which state (running/waiting/terminated) and why; timestamps and ids dropped."""
    return {k: _pick(v or {}, ("reason", "exitCode")) for k, v in state.items()}


def _trim_pod_status(status: Obj) -> Obj:
    out = _pick(status, _POD_STATUS_KEYS)
    if status.get("conditions"):
        out["conditions"] = [_pick(c, _CONDITION_KEYS) for c in status["conditions"]]
    for group in ("initContainerStatuses", "containerStatuses"):
        if status.get(group):
            out[group] = [{**_pick(c, _CONTAINER_STATUS_KEYS), "state": _container_state(c.get("state") or {})}
                          for c in status[group]]
    return out


_API_VERSIONS = {
    "EndpointSlice": "discovery.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "DaemonSet": "apps/v1",
    "IPPool": "crd.projectcalico.org/v1",  # Calico's CRD (Kubernetes datastore)
}


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def parse_ip(value: Any) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(value).split("%")[0])
    except ValueError:
        return None


def pod_ips(pod: Obj) -> list[IPAddress]:
    status = pod.get("status") or {}
    raw = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
    return [ip for ip in (parse_ip(r) for r in raw if r) if ip is not None]


def unusable_addresses(kind: str, obj: Obj) -> list[str]:
    """The address fields of an object that are not IP addresses (a hand-edited snapshot's `not-an-ip`):
    the object is kept, those addresses are not, and the load says so instead of dropping them silently."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    if kind == "Pod":
        fields = [("status.podIP", status.get("podIP"))] + [("status.podIPs", p.get("ip"))
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
            for name, value in dict.fromkeys(fields) if value and parse_ip(value) is None]


def node_addresses(node: Obj) -> list[IPAddress]:
    addrs = (node.get("status") or {}).get("addresses") or []
    return [ip for ip in (parse_ip(a.get("address")) for a in addrs) if ip is not None]


def service_cluster_ips(svc: Obj) -> list[IPAddress]:
    spec = svc.get("spec") or {}
    raw = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return [ip for ip in (parse_ip(r) for r in raw if r and r != "None") if ip is not None]


def service_external_ips(svc: Obj) -> list[IPAddress]:
    return [ip for ip in (parse_ip(r) for r in (svc.get("spec") or {}).get("externalIPs") or []) if ip]


def service_lb_ips(svc: Obj) -> list[IPAddress]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [ip for ip in (parse_ip(i.get("ip")) for i in ingress if i.get("ip")) if ip is not None]


def is_host_network(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def pod_phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Unknown")


class ClusterModel:
    """Objects by kind and key, lookup indexes, and the cluster graph.

    Thread-safe for one writer (a watch thread) and many readers: writers hold `lock`;
    a diagnosis holds it while it reads (lookups are dict hits, so briefly).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.generation: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        # address → object keys (several pods may hold one IP: a finished pod and its successor)
        self.pods_by_ip: dict[IPAddress, set[str]] = defaultdict(set)
        self.nodes_by_address: dict[IPAddress, set[str]] = defaultdict(set)
        self.services_by_cluster_ip: dict[IPAddress, set[str]] = defaultdict(set)
        self.services_by_external_ip: dict[IPAddress, set[str]] = defaultdict(set)
        self.services_by_lb_ip: dict[IPAddress, set[str]] = defaultdict(set)
        self.services_by_node_port: dict[tuple[int, str], set[str]] = defaultdict(set)
        self.policies_by_namespace: dict[str, set[str]] = defaultdict(set)
        self.pods_by_component: dict[str, set[str]] = defaultdict(set)  # static control-plane pods
        # (kind, namespace) a source may not read (RBAC) → why; detection reports each as an assumption
        self.unreadable: dict[tuple[str, str | None], str] = {}

    # ------------------------------------------------------------ writing

    def apply(self, event: str, kind: str, obj: Obj) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED) of an already trimmed object."""
        key = object_key(obj)
        with self.lock:
            store = self.objects[kind]
            old = store.pop(key, None)
            if old is not None:
                self._unindex(kind, key, old)
            if event != "DELETED":
                store[key] = obj
                self._index(kind, key, obj)
            self.generation[kind] += 1

    def replace(self, kind: str, objs: Iterable[Obj], namespace: str | None = None) -> None:
        """A (re-)list: the given objects become the whole set of this kind (in `namespace`)."""
        prefix = f"{namespace}/" if namespace else ""
        with self.lock:
            fresh = {object_key(o): o for o in objs}
            for key in [k for k in self.objects[kind] if k.startswith(prefix) and k not in fresh]:
                self.apply("DELETED", kind, self.objects[kind][key])
            for obj in fresh.values():
                self.apply("MODIFIED", kind, obj)

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

    def _entries(self, kind: str, key: str, obj: Obj) -> Iterator[tuple[dict[Any, set[str]], Any]]:
        if kind == "Pod":
            for ip in pod_ips(obj):
                yield self.pods_by_ip, ip
            component = ((obj.get("metadata") or {}).get("labels") or {}).get("component")
            if component:
                yield self.pods_by_component, component
        elif kind == "Node":
            for ip in node_addresses(obj):
                yield self.nodes_by_address, ip
        elif kind == "Service":
            for ip in service_cluster_ips(obj):
                yield self.services_by_cluster_ip, ip
            for ip in service_external_ips(obj):
                yield self.services_by_external_ip, ip
            for ip in service_lb_ips(obj):
                yield self.services_by_lb_ip, ip
            for port in (obj.get("spec") or {}).get("ports") or []:
                if port.get("nodePort"):
                    yield self.services_by_node_port, (int(port["nodePort"]), port.get("protocol") or "TCP")
        elif kind == "NetworkPolicy":
            yield self.policies_by_namespace, (obj.get("metadata") or {}).get("namespace")

    def _index(self, kind: str, key: str, obj: Obj) -> None:
        for index, value in self._entries(kind, key, obj):
            index[value].add(key)
        g = self.graph
        if kind == "Pod":
            pod = self._vertex("pod", key)
            node = (obj.get("spec") or {}).get("nodeName")
            if node:
                g.add_edge(pod, self._vertex("node", node), rel="runs_on")
        elif kind == "Node":
            self._vertex("node", key)
        elif kind == "Service":
            self._vertex("service", key)
        elif kind == "EndpointSlice":
            self._index_slice(key, obj)

    def _vertex(self, kind: str, key: str) -> str:
        """The graph vertex of object `key` of `kind` ("pod:ns/name"), with both as attributes: readers
        take the object key from the vertex, never from its id. A vertex may come before its object
        (a slice naming a pod not seen yet)."""
        vid = f"{kind}:{key}"
        self.graph.add_node(vid, kind=kind, key=key)
        return vid

    def _keys(self, vertices: Iterable[str], kind: str) -> list[str]:
        nodes = self.graph.nodes
        return sorted(nodes[v]["key"] for v in vertices if nodes[v]["kind"] == kind)

    def _index_slice(self, key: str, obj: Obj) -> None:
        g = self.graph
        meta = obj.get("metadata") or {}
        sl = self._vertex("slice", key)
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            g.add_edge(self._vertex("service", f"{meta.get('namespace')}/{svc}"), sl, rel="owns")
        for ep in obj.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind") == "Pod" and ref.get("name"):
                g.add_edge(sl, self._vertex("pod", f"{ref.get('namespace') or meta.get('namespace')}/{ref['name']}"),
                           rel="endpoint")

    def _unindex(self, kind: str, key: str, obj: Obj) -> None:
        for index, value in self._entries(kind, key, obj):
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]
        gid = {"Pod": "pod", "Node": "node", "Service": "service", "EndpointSlice": "slice"}.get(kind)
        if gid is None:
            return
        node_id = f"{gid}:{key}"
        if not self.graph.has_node(node_id):
            return
        if kind == "EndpointSlice":
            self.graph.remove_node(node_id)
            return
        # Pods, nodes and Services may still be referenced by slices (or pods by their node):
        # keep the vertex while something points at it, drop only its own outgoing edges.
        if kind == "Pod":
            self.graph.remove_edges_from(list(self.graph.out_edges(node_id)))
        if self.graph.degree(node_id) == 0:
            self.graph.remove_node(node_id)

    # ------------------------------------------------------------ reading

    def get(self, kind: str, key: str | None) -> Obj | None:
        return self.objects[kind].get(key) if key else None

    def pods_at(self, ip: IPAddress) -> list[Obj]:
        return [self.objects["Pod"][k] for k in sorted(self.pods_by_ip.get(ip, ())) if k in self.objects["Pod"]]

    def nodes_at(self, ip: IPAddress) -> list[Obj]:
        return [self.objects["Node"][k] for k in sorted(self.nodes_by_address.get(ip, ()))]

    def _services(self, index: dict[Any, set[str]], value: Any) -> list[Obj]:
        return [self.objects["Service"][k] for k in sorted(index.get(value, ()))]

    def services_by_ip(self, ip: IPAddress) -> tuple[str, list[Obj]]:
        """The Services owning a destination address, and how: cluster_ip, external_ip, lb_ip."""
        for how, index in (("cluster_ip", self.services_by_cluster_ip), ("external_ip",
                           self.services_by_external_ip), ("lb_ip", self.services_by_lb_ip)):
            found = self._services(index, ip)
            if found:
                return how, found
        return "", []

    def services_with_node_port(self, port: int, protocol: str) -> list[Obj]:
        return self._services(self.services_by_node_port, (port, protocol))

    def slices_of(self, service_key: str) -> list[Obj]:
        sid = f"service:{service_key}"
        if not self.graph.has_node(sid):
            return []
        slices = self.objects["EndpointSlice"]
        return [slices[k] for k in self._keys(self.graph.successors(sid), "slice") if k in slices]

    def services_of_pod(self, pod_key: str) -> list[str]:
        """Services whose EndpointSlices list this pod (graph: service → slice → pod)."""
        pid = f"pod:{pod_key}"
        if not self.graph.has_node(pid):
            return []
        g = self.graph
        slices = [s for s in g.predecessors(pid) if g.nodes[s]["kind"] == "slice"]
        return sorted(set(self._keys((svc for s in slices for svc in g.predecessors(s)), "service")))

    def pods_on_node(self, node: str) -> list[str]:
        nid = f"node:{node}"
        if not self.graph.has_node(nid):
            return []
        return self._keys(self.graph.predecessors(nid), "pod")

    def policies_in(self, namespace: str) -> list[Obj]:
        return [self.objects["NetworkPolicy"][k] for k in sorted(self.policies_by_namespace.get(namespace, ()))]

    def counts(self) -> dict[str, int]:
        return {kind: len(objs) for kind, objs in self.objects.items()}
