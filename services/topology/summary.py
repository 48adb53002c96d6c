"""Build the cluster summary (shared/cluster.py) from the cluster model.

The model's stores are copied under its lock (a shallow copy: objects are replaced, never
mutated, by `apply()`), the summary is built outside it, so the watch threads and diagnoses
wait only for the copy.
"""

from __future__ import annotations

from services.topology.model import (
    ClusterModel,
    Obj,
    is_host_network,
    object_key,
    parse_ip,
    pod_ips,
    pod_phase,
    service_cluster_ips,
    service_external_ips,
    service_lb_ips,
)
from shared.cluster import (
    MAX_ITEMS,
    ClusterSummary,
    NodeAddressSummary,
    NodeSummary,
    PodSummary,
    ServicePortSummary,
    ServiceSummary,
    SummaryCounts,
)
from shared.schemas import IPAddress, now

# room for the KV message's headers within the server's max_payload
PAYLOAD_HEADROOM = 4096


def model_stamp(model: ClusterModel) -> int:
    """Grows with every applied event: a changed stamp means the summary may have changed."""
    return sum(model.generation.values())


def _condition(obj: Obj, kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def pod_summary(pod: Obj) -> PodSummary:
    meta = pod.get("metadata") or {}
    return PodSummary(
        namespace=meta.get("namespace") or "", name=meta.get("name") or "", ips=pod_ips(pod),
        node=(pod.get("spec") or {}).get("nodeName"), phase=pod_phase(pod), ready=_condition(pod, "Ready"),
        host_network=is_host_network(pod),
    )


def service_summary(svc: Obj) -> ServiceSummary:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    return ServiceSummary(
        namespace=meta.get("namespace") or "", name=meta.get("name") or "", type=spec.get("type") or "ClusterIP",
        cluster_ips=service_cluster_ips(svc), external_ips=service_external_ips(svc), lb_ips=service_lb_ips(svc),
        ports=[ServicePortSummary(name=p.get("name"), port=int(p["port"]), protocol=p.get("protocol") or "TCP",
                                  node_port=p.get("nodePort"), target_port=p.get("targetPort"))
               for p in spec.get("ports") or [] if p.get("port")],
    )


def node_summary(node: Obj) -> NodeSummary:
    addresses = [NodeAddressSummary(type=a.get("type") or "", address=ip)
                 for a in (node.get("status") or {}).get("addresses") or []
                 if (ip := parse_ip(a.get("address"))) is not None]
    return NodeSummary(name=(node.get("metadata") or {}).get("name") or "", addresses=addresses,
                       ready=_condition(node, "Ready"))


def _has_ip(pod: Obj) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("podIP") or status.get("podIPs"))


def build_summary(model: ClusterModel, source: str, dns: list[IPAddress], limit: int = MAX_ITEMS,
                  notes: list[str] | None = None) -> ClusterSummary:
    """At most `limit` entries per list, in namespace/name order; pods without an IP are left out
    (nothing can be sent to or from them)."""
    with model.lock:
        pods, services, nodes = (list(model.objects[kind].values()) for kind in ("Pod", "Service", "Node"))
    pods = [p for p in pods if _has_ip(p)]
    return ClusterSummary(
        source=source, generated_at=now(), dns=dns,
        pods=[pod_summary(p) for p in sorted(pods, key=object_key)[:limit]],
        services=[service_summary(s) for s in sorted(services, key=object_key)[:limit]],
        nodes=[node_summary(n) for n in sorted(nodes, key=object_key)[:limit]],
        counts=SummaryCounts(pods=len(pods), services=len(services), nodes=len(nodes)),
        truncated=max(len(pods), len(services), len(nodes)) > limit, notes=list(notes or []),
    )


def summary_within(model: ClusterModel, source: str, dns: list[IPAddress], max_bytes: int,
                   notes: list[str] | None = None) -> ClusterSummary:
    """The fullest summary whose JSON fits `max_bytes`: built once, then its lists are cut in
    proportion to the excess (the size is about linear in the cap) until it fits."""
    budget = max_bytes - PAYLOAD_HEADROOM
    summary = build_summary(model, source, dns, notes=notes)
    limit = MAX_ITEMS
    while limit and (size := len(summary.model_dump_json())) > budget:
        limit = min(limit - 1, int(limit * budget / size * 0.95))
        c = summary.counts
        summary = summary.model_copy(update={
            "pods": summary.pods[:limit], "services": summary.services[:limit], "nodes": summary.nodes[:limit],
            "truncated": max(c.pods, c.services, c.nodes) > limit})
    return summary
