"""What a topology event carries of the cluster: the objects this request's simulation reads, each in its
event form, holding only the fields a later stage reads (docs/topology.md, "What a topology event carries").

The model's objects are shared and read-only: an event form is a new small dict whose values (label sets,
port lists, addresses) are the model's own, never copied and never mutated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.topology.model import ClusterModel, Obj
from shared.topology import ClusterObjects, isolated_directions

_CONTAINER_LISTS = ("initContainers", "containers")


def _part(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _pick(part: Mapping[str, Any], keys: Iterable[str]) -> Obj:
    return {k: part[k] for k in keys if k in part}


def event_pod(pod: Obj) -> Obj:
    """A pod as the simulator, the collector and NetworkPolicy read it: name, namespace, labels (matched by
    selectors and quoted in explanations), node, hostNetwork, addresses, phase and the declared container ports
    (named ports resolve on the destination pod). Readiness is the topology stage's own finding."""
    meta, spec, status = _part(pod, "metadata"), _part(pod, "spec"), _part(pod, "status")
    kept_spec = _pick(spec, ("nodeName", "hostNetwork"))
    for key in _CONTAINER_LISTS:
        ported = [{"name": c.get("name"), "ports": c["ports"]}
                  for c in spec.get(key) or () if isinstance(c, Mapping) and c.get("ports")]
        if ported:
            kept_spec[key] = ported
    return {"metadata": _pick(meta, ("name", "namespace", "labels")), "spec": kept_spec,
            "status": _pick(status, ("phase", "podIP", "podIPs"))}


def event_namespace(namespace: Obj) -> Obj:
    """A namespace's name and labels: what namespaceSelectors match and explanations quote."""
    return {"metadata": _pick(_part(namespace, "metadata"), ("name", "labels"))}


def event_policy(policy: Obj) -> Obj:
    """A NetworkPolicy's name, namespace and whole spec (the simulator compiles all of it)."""
    return {"metadata": _pick(_part(policy, "metadata"), ("name", "namespace")), "spec": policy.get("spec")}


def event_node(node: Obj) -> Obj:
    """A node's name and labels (the cloud provider reads its region label), pod CIDRs, providerID (its
    cloud instance) and addresses: what the walk and the cloud stage read."""
    meta, spec, status = _part(node, "metadata"), _part(node, "spec"), _part(node, "status")
    return {"metadata": _pick(meta, ("name", "labels")), "spec": _pick(spec, ("podCIDR", "podCIDRs", "providerID")),
            "status": _pick(status, ("addresses",))}


# A LoadBalancer diagnosis carries every node: their event forms are kept by node object (the model replaces an
# object when it changes, so an entry is current while it holds that very object), at most this many
_NODE_FORMS_MAX = 100_000
_node_forms: dict[int, tuple[Obj, Obj]] = {}


def _node_form(node: Obj) -> Obj:
    hit = _node_forms.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    if len(_node_forms) >= _NODE_FORMS_MAX:
        _node_forms.clear()
    form = event_node(node)
    _node_forms[id(node)] = (node, form)  # holding the node keeps its id from being reused
    return form


def _isolates(policy: Obj, direction: str) -> bool:
    """Whether `policy` isolates the pods it selects for `direction`. A policy the API would reject is carried all
    the same: the simulator says it ignored it, instead of it vanishing here."""
    try:
        return direction in isolated_directions(_part(policy, "spec"))
    except TypeError:
        return True


def event_objects(model: ClusterModel, *, sender: str | None, receivers: Iterable[str | None],
                  service: str | None, nodes: Iterable[str]) -> ClusterObjects:
    """The objects of one request, in event form. `sender` is the source pod (its egress is evaluated),
    `receivers` the pods a packet may be delivered to (the destination pod or the Service's endpoints: their
    ingress is evaluated); each end is the other's peer, so every one of their namespaces travels (a pod whose
    namespace is missing is stated as such). A policy travels when it selects the sender and isolates egress, or
    a receiver and isolates ingress: any other decides nothing for this request."""
    receiving = sorted({key for key in receivers if key})
    keys = sorted({*receiving, *([sender] if sender else [])})
    pods = {key: pod for key in keys if (pod := model.get("Pod", key)) is not None}
    # the model finds the policies selecting a pod (podSelector, its namespace); the direction is the event's
    policies = {key: policy for key, policy in model.policies_selecting(
        [pods[k] for k in receiving if k in pods]).items() if _isolates(policy, "Ingress")}
    if sender in pods:
        policies.update((key, policy) for key, policy in model.policies_selecting([pods[sender]]).items()
                        if _isolates(policy, "Egress"))
    namespaces = sorted({key.split("/", 1)[0] for key in keys})
    svc = model.get("Service", service)
    # new dicts over the model's values: nothing is validated (it would only copy them) nor mutated
    return ClusterObjects.model_construct(
        pods=[event_pod(p) for p in pods.values()],
        namespaces=[event_namespace(n) for n in (model.get("Namespace", ns) for ns in namespaces) if n is not None],
        nodes=[_node_form(n) for n in (model.get("Node", name) for name in nodes) if n is not None],
        services=[svc] if svc is not None else [],
        networkpolicies=[event_policy(policies[k]) for k in sorted(policies)],
    )
