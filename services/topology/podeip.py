"""A public address that is a pod's own EIP: ack-extend-network-controller's PodEIP (alibabacloud.com/v1beta1,
named after its pod, in its namespace) carries in its status the EIP address, the private IP it is bound to and
the ENI holding that IP. Only the cloud knows the address; the cluster knows it through these objects, so the
request to it has a path: outside → the cloud's 1:1 translation at the ENI → the pod's node → the pod."""

from __future__ import annotations

from services.topology.classify import Classification, pod_endpoint
from services.topology.model import ClusterModel, Obj, object_key, parse_ip, pod_ips
from shared.schemas import IPAddress
from shared.topology import EndpointKind


def pod_eip_target(model: ClusterModel, address: IPAddress) -> tuple[Classification, IPAddress] | None:
    """The pod whose PodEIP names `address` (its status.eipAddress) and the private address the EIP serves, or
    None when no PodEIP names it (the cloud may still know it: the simulator says the owner is unknown). A
    PodEIP whose pod is gone, or bound to an address the pod no longer has, names no path either."""
    for eip in model.pod_eips_at(address):
        pod = model.get("Pod", object_key(eip))
        private = parse_ip((eip.get("status") or {}).get("privateIPAddress"))
        if pod is None or private is None or private not in pod_ips(pod):
            continue
        found = pod_endpoint(model, private, pod)
        found.endpoint = found.endpoint.model_copy(update={
            "address": address, "kind": EndpointKind.POD_EIP,
            "description": f"EIP {address} of {found.endpoint.description} ({_bound(eip, private)})"})
        return found, private
    return None


def _bound(eip: Obj, private: IPAddress) -> str:
    spec, status = eip.get("spec") or {}, eip.get("status") or {}
    what = f"PodEIP {object_key(eip)}" + (f", {spec['allocationID']}" if spec.get("allocationID") else "")
    eni = status.get("networkInterfaceID")
    return f"{what}: bound to {private}" + (f" on {eni}" if eni else "")
