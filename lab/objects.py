"""Kubernetes API objects for a lab: resolved scenario → the JSON dicts a real apiserver would serve.

Shapes follow `kubectl get -o json` output of a kubeadm/ACK cluster running flannel and kube-proxy in
iptables mode, complete enough for the `kubernetes` client's strict models. Endpoint objects are derived
from Service and Pod *dicts* (`endpoint_objects`), so the lab API re-runs the same controller logic when
the lab mutates pods, exactly like the EndpointSlice controller would.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from lab.scenario import ResolvedNode, ResolvedPod, ResolvedScenario, ResolvedService, Scenario

Obj = dict[str, Any]

KUBERNETES_VERSION = "v1.31.1-aliyun.1"
REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-h"
KERNEL_VERSION = "5.10.134-16.3.al8.x86_64"
OS_IMAGE = "Alibaba Cloud Linux 3.2104 U10 (OpenAnolis Edition)"
CONTAINER_RUNTIME = "containerd://1.6.36"
FLANNEL_VXLAN_VNI = 1  # flannel's defaults; the dataplane builds the same
FLANNEL_VXLAN_PORT = 8472
MAX_ENDPOINTS_PER_SLICE = 100  # the EndpointSlice controller's default


@dataclass(frozen=True)
class Resource:
    """One REST resource: how it is addressed and discovered."""

    kind: str
    plural: str
    group: str  # "" = core
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "namespaces", "", "v1", False, ("ns",)),
    Resource("Node", "nodes", "", "v1", False, ("no",)),
    Resource("Pod", "pods", "", "v1", True, ("po",)),
    Resource("Service", "services", "", "v1", True, ("svc",)),
    Resource("Endpoints", "endpoints", "", "v1", True, ("ep",)),
    Resource("ConfigMap", "configmaps", "", "v1", True, ("cm",)),
    Resource("EndpointSlice", "endpointslices", "discovery.k8s.io", "v1", True),
    Resource("NetworkPolicy", "networkpolicies", "networking.k8s.io", "v1", True, ("netpol",)),
    Resource("DaemonSet", "daemonsets", "apps", "v1", True, ("ds",)),
    # Calico's own configuration (the CRDs calico-node reads in the Kubernetes datastore mode)
    Resource("IPPool", "ippools", "crd.projectcalico.org", "v1", False),
    Resource("FelixConfiguration", "felixconfigurations", "crd.projectcalico.org", "v1", False),
    # ack-extend-network-controller's pod EIPs (Terway labs whose pods have an `eip`)
    Resource("PodEIP", "podeips", "alibabacloud.com", "v1beta1", True),
)
RESOURCE_BY_KIND = {r.kind: r for r in RESOURCES}


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def object_uid(scenario: str, kind: str, namespace: str, name: str) -> str:
    """Deterministic uid, so references (targetRef, ownerReferences) agree across rebuilds."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"netdiag-lab/{scenario}/{kind}/{namespace}/{name}"))


def instance_id(scenario: str, node: str) -> str:
    """The ECS instance id a cloud emulator should give this node (shape of `i-bp1…`, 20 chars)."""
    return "i-bp1" + _digest(scenario, "instance", node)[:17]


def cloud_id(prefix: str, *parts: str) -> str:
    """A cloud object id of the lab's emulated cloud (deterministic per scenario and owner)."""
    return f"{prefix}-bp1{hashlib.sha256('/'.join(parts).encode()).hexdigest()[:16]}"


def pod_eni_id(rs: ResolvedScenario, pod: ResolvedPod) -> str:
    """The Terway ENI holding a pod's address: the pod's own (terway-eni), its node's shared one (terway-eniip)."""
    return cloud_id("eni", rs.scenario.name, pod.spec.key if rs.scenario.cni == "terway-eni" else pod.spec.node)


def provider_id(scenario: str, node: str) -> str:
    """ACK's node providerID: `<region>.<instance id>`."""
    return f"{REGION}.{instance_id(scenario, node)}"


def _meta(scenario: str, kind: str, name: str, namespace: str | None, created: str, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta |= {
        "uid": object_uid(scenario, kind, namespace or "", name),
        "resourceVersion": "1",
        "creationTimestamp": created,
    }
    return meta | {k: v for k, v in extra.items() if v}


def _obj(kind: str, metadata: Obj, **body: Any) -> Obj:
    return {"apiVersion": RESOURCE_BY_KIND[kind].api_version, "kind": kind, "metadata": metadata, **body}


# ------------------------------------------------------------------ namespaces and nodes


def namespace_object(scenario: str, name: str, labels: dict[str, str], created: str) -> Obj:
    meta = _meta(scenario, "Namespace", name, None, created,
                 labels={**labels, "kubernetes.io/metadata.name": name})
    return _obj("Namespace", meta, spec={"finalizers": ["kubernetes"]}, status={"phase": "Active"})


def _node_conditions(ready: bool, created: str) -> list[Obj]:
    def cond(type_: str, status: bool, reason: str, message: str) -> Obj:
        return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message,
                "lastHeartbeatTime": created, "lastTransitionTime": created}

    return [
        cond("NetworkUnavailable", False, "FlannelIsUp", "Flannel is running on this node"),
        cond("MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", True, "KubeletReady", "kubelet is posting ready status")
        if ready else
        {**cond("Ready", False, "NodeStatusUnknown", "Kubelet stopped posting node status."), "status": "Unknown"},
    ]


def node_ready_patch(node: Obj, ready: bool) -> Obj:
    """The node with its Ready condition (and the node controller's taints) set as a kubelet/controller would."""
    node = json.loads(json.dumps(node))
    created = node["metadata"]["creationTimestamp"]
    node["status"]["conditions"] = _node_conditions(ready, created)
    unreachable = "node.kubernetes.io/unreachable"
    taints = [t for t in node["spec"].get("taints", []) if t["key"] != unreachable]
    if not ready:
        taints += [{"key": unreachable, "effect": "NoSchedule"},
                   {"key": unreachable, "effect": "NoExecute", "timeAdded": created}]
    if taints:
        node["spec"]["taints"] = taints
    else:
        node["spec"].pop("taints", None)
    return node


def _cni_annotations(sc: Scenario, node: ResolvedNode) -> dict[str, str]:
    if sc.terway_mode:
        return {}
    if sc.cni == "calico":  # calico-node's autodetected BGP address (and VXLAN tunnel address)
        prefixlen = ipaddress.ip_network(sc.underlay_cidr).prefixlen
        out = {"projectcalico.org/IPv4Address": f"{node.ip}/{prefixlen}"}
        if sc.calico.vxlan_mode != "Never":
            out["projectcalico.org/IPv4VXLANTunnelAddr"] = str(ipaddress.ip_network(node.pod_cidr).network_address)
        return out
    backend_data = {"VNI": FLANNEL_VXLAN_VNI, "VtepMAC": node.vtep_mac} if sc.cni == "vxlan" else None
    return {
        "flannel.alpha.coreos.com/backend-type": sc.cni,
        "flannel.alpha.coreos.com/backend-data": json.dumps(backend_data) if backend_data else "null",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": node.ip,
    }


def node_object(sc: Scenario, node: ResolvedNode, created: str) -> Obj:
    meta = _meta(
        sc.name, "Node", node.name, None, created,
        labels={
            "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": node.name,
            "node.kubernetes.io/instance-type": "ecs.g7.large",
            "topology.kubernetes.io/region": REGION, "topology.kubernetes.io/zone": ZONE,
        },
        annotations={**_cni_annotations(sc, node), "node.alpha.kubernetes.io/ttl": "0"},
    )
    resources = {"cpu": "2", "ephemeral-storage": "123722704Ki", "hugepages-2Mi": "0",
                 "memory": "7853256Ki", "pods": "64"}
    obj = _obj(
        "Node", meta,
        # Terway nodes have no pod CIDR: pods take ENI secondary IPs from the pod vSwitch
        spec={"providerID": provider_id(sc.name, node.name)} if sc.terway_mode else
        {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr], "providerID": provider_id(sc.name, node.name)},
        status={
            "addresses": [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}],
            "allocatable": resources, "capacity": resources,
            "conditions": [],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64", "bootID": str(uuid.UUID(_digest(sc.name, "boot", node.name)[:32])),
                "containerRuntimeVersion": CONTAINER_RUNTIME, "kernelVersion": KERNEL_VERSION,
                "kubeProxyVersion": KUBERNETES_VERSION, "kubeletVersion": KUBERNETES_VERSION,
                "machineID": _digest(sc.name, "machine", node.name)[:32], "operatingSystem": "linux",
                "osImage": OS_IMAGE, "systemUUID": str(uuid.UUID(_digest(sc.name, "system", node.name)[:32])),
            },
        },
    )
    return node_ready_patch(obj, node.ready)


# ------------------------------------------------------------------ pods


def _condition(type_: str, status: bool, created: str, reason: str | None = None,
               message: str | None = None) -> Obj:
    cond: Obj = {"type": type_, "status": "True" if status else "False", "lastProbeTime": None,
                 "lastTransitionTime": created}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def pod_status_patch(pod: Obj, phase: str, container_ready: dict[str, bool]) -> Obj:
    """The pod with phase, conditions and containerStatuses as the kubelet reports them."""
    pod = json.loads(json.dumps(pod))
    created = pod["metadata"]["creationTimestamp"]
    status = pod["status"]
    running = phase == "Running"
    terminal = phase in ("Succeeded", "Failed")
    statuses = []
    for c in pod["spec"]["containers"]:
        ready = running and container_ready.get(c["name"], True)
        if running:
            state: Obj = {"running": {"startedAt": created}}
        elif terminal:
            code = 0 if phase == "Succeeded" else 1
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": created, "finishedAt": created,
                                    "containerID": _container_id(pod, c["name"])}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        cs: Obj = {"name": c["name"], "image": c["image"], "imageID": _image_id(c["image"]),
                   "ready": ready, "restartCount": 0, "started": running, "state": state}
        if running or terminal:
            cs["containerID"] = _container_id(pod, c["name"])
        statuses.append(cs)
    unready = [cs["name"] for cs in statuses if not cs["ready"]]
    all_ready = not unready
    reason: str | None
    message: str | None
    if terminal:
        reason, message = "PodCompleted", None
    else:
        reason = None if all_ready else "ContainersNotReady"
        message = None if all_ready else f"containers with unready status: [{' '.join(unready)}]"
    status["phase"] = phase
    status["conditions"] = [
        _condition("PodReadyToStartContainers", not terminal and phase != "Pending", created),
        _condition("Initialized", True, created),
        _condition("Ready", all_ready, created, reason, message),
        _condition("ContainersReady", all_ready, created, reason, message),
        _condition("PodScheduled", True, created),
    ]
    status["containerStatuses"] = statuses
    return pod


def _image_id(image: str) -> str:
    return f"{image.rsplit(':', 1)[0]}@sha256:{_digest('image', image)}"


def _container_id(pod: Obj, container: str) -> str:
    return "containerd://" + _digest(pod["metadata"]["uid"], container)


def pod_object(sc: Scenario, rp: ResolvedPod, node_ip: str, created: str) -> Obj:
    p = rp.spec
    meta = _meta(sc.name, "Pod", p.name, p.namespace, created, labels=dict(p.labels))
    containers = []
    for c in p.containers:
        image = "registry-cn-hangzhou.ack.aliyuncs.com/acs/coredns:v1.11.3.2-f57ea7ed6-aliyun" \
            if p.role == "dns" else f"registry.k8s.io/e2e-test-images/agnhost:2.53-{c.name}"
        container: Obj = {
            "name": c.name, "image": image, "imagePullPolicy": "IfNotPresent", "resources": {},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        }
        if c.ports:
            container["ports"] = [
                {**({"name": cp.name} if cp.name else {}), "containerPort": cp.container_port,
                 # the apiserver defaults hostPort to containerPort for hostNetwork pods
                 **({"hostPort": cp.container_port} if p.host_network else {}), "protocol": cp.protocol}
                for cp in c.ports
            ]
        containers.append(container)
    spec: Obj = {
        "containers": containers,
        "dnsPolicy": "ClusterFirstWithHostNet" if p.host_network else "ClusterFirst",
        "enableServiceLinks": True, "nodeName": p.node, "preemptionPolicy": "PreemptLowerPriority",
        "priority": 2000000000 if p.role == "dns" else 0, "restartPolicy": "Always",
        "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccount": "default",
        "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
        "tolerations": [
            {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300} for k in ("not-ready", "unreachable")
        ],
    }
    if p.role == "dns":
        spec["priorityClassName"] = "system-cluster-critical"
    if p.host_network:
        spec["hostNetwork"] = True
    status: Obj = {
        "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
        "podIP": rp.ip, "podIPs": [{"ip": rp.ip}],
        "qosClass": "BestEffort", "startTime": created,
    }
    pod = _obj("Pod", meta, spec=spec, status=status)
    return pod_status_patch(pod, p.phase, {c.name: c.ready for c in p.containers})


# ------------------------------------------------------------------ services and endpoints


def service_object(sc: Scenario, rs: ResolvedService, created: str) -> Obj:
    s = rs.spec
    labels = {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
              "kubernetes.io/name": "CoreDNS"} if s.key == "kube-system/kube-dns" else {}
    ports = []
    for rp in rs.ports:
        sp = rp.spec
        target = sp.target_port if sp.target_port is not None else sp.port
        port: Obj = {**({"name": sp.name} if sp.name else {}), "port": sp.port, "protocol": sp.protocol,
                     "targetPort": int(target) if str(target).isdigit() else target}
        if rp.node_port is not None:
            port["nodePort"] = rp.node_port
        ports.append(port)
    cluster_ip = rs.cluster_ip or "None"
    spec: Obj = {
        "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": ports, "sessionAffinity": "None", "type": s.type,
    }
    if s.selector:
        spec["selector"] = dict(s.selector)
    if s.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = s.external_traffic_policy
    if s.type == "LoadBalancer":
        spec["allocateLoadBalancerNodePorts"] = True
        if rs.load_balancer_ip:
            spec["loadBalancerIP"] = rs.load_balancer_ip
        if s.load_balancer_source_ranges:
            spec["loadBalancerSourceRanges"] = list(s.load_balancer_source_ranges)
    if s.external_ips:
        spec["externalIPs"] = list(s.external_ips)
    ingress = [{"ip": rs.load_balancer_ip, "ipMode": "VIP"}] if s.type == "LoadBalancer" and rs.load_balancer_ip \
        else []
    meta = _meta(sc.name, "Service", s.name, s.namespace, created, labels=labels)
    return _obj("Service", meta, spec=spec, status={"loadBalancer": {"ingress": ingress} if ingress else {}})


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_is_ready(pod: Obj) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _resolve_target_port(pod: Obj, port: Obj) -> int | None:
    """findPort() of the endpoints controller: a number, or a named container port of the same protocol."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for c in pod["spec"]["containers"]:
        for cp in c.get("ports", []):
            if cp.get("name") == target and cp.get("protocol", "TCP") == port.get("protocol", "TCP"):
                return cp["containerPort"]
    return None


def _slice_name(service: str, key: str) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # k8s' rand.String alphabet
    digest = int(_digest(key), 16)
    suffix = ""
    for _ in range(5):
        digest, i = divmod(digest, len(alphabet))
        suffix += alphabet[i]
    return f"{service}-{suffix}"


def endpoint_objects(service: Obj, pods: list[Obj]) -> list[Obj]:
    """The EndpointSlices and the Endpoints object the controllers keep for a selector Service.

    Follows the upstream controllers: pods in the Service's namespace matching its selector, with a podIP,
    not in a terminal phase; endpoints grouped by their resolved port set; a ready/serving/terminating
    condition per endpoint; v1 Endpoints lists ready addresses and notReadyAddresses and leaves out
    terminating pods. Services without a selector get none (their endpoints are user-managed).
    """
    selector = service["spec"].get("selector")
    if not selector:
        return []
    meta = service["metadata"]
    ns, name = meta["namespace"], meta["name"]
    created = meta["creationTimestamp"]
    selected = sorted(
        (p for p in pods
         if p["metadata"].get("namespace") == ns and _selects(selector, p["metadata"].get("labels", {}))
         and p.get("status", {}).get("podIP") and p["status"].get("phase") not in ("Succeeded", "Failed")),
        key=lambda p: p["metadata"]["name"],
    )
    groups: dict[tuple[tuple[str, int, str], ...], list[Obj]] = {}
    for pod in selected:
        resolved = []
        for sp in service["spec"].get("ports", []):
            number = _resolve_target_port(pod, sp)
            if number is not None:
                resolved.append((sp.get("name", ""), number, sp.get("protocol", "TCP")))
        groups.setdefault(tuple(resolved), []).append(pod)
    owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta["uid"],
             "blockOwnerDeletion": True, "controller": True}
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
              "kubernetes.io/service-name": name, **meta.get("labels", {})}
    if service["spec"].get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    chunks = [(ports, members[i:i + MAX_ENDPOINTS_PER_SLICE])
              for ports, members in groups.items() for i in range(0, len(members), MAX_ENDPOINTS_PER_SLICE)]
    if not chunks:
        chunks = [((), [])]  # the controller keeps one placeholder slice for a Service without endpoints
    scenario_hint = meta["uid"]
    slices = []
    for index, (ports, members) in enumerate(chunks):
        slice_name = _slice_name(name, f"{scenario_hint}/{index}")
        slice_meta = {
            "name": slice_name, "generateName": f"{name}-", "namespace": ns,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scenario_hint}/slice/{index}")),
            "resourceVersion": "1", "creationTimestamp": created, "generation": 1, "labels": labels,
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": created},
            "ownerReferences": [owner],
        }
        endpoints = []
        for pod in members:
            ready = pod_is_ready(pod)
            terminating = "deletionTimestamp" in pod["metadata"]
            endpoints.append({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready and not terminating, "serving": ready, "terminating": terminating},
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                              "uid": pod["metadata"]["uid"]},
                "zone": ZONE,
            })
        body: Obj = {"addressType": "IPv4", "endpoints": endpoints}
        if members:
            body["ports"] = [{"name": pname, "port": number, "protocol": proto} for pname, number, proto in ports]
        slices.append(_obj("EndpointSlice", slice_meta, **body))

    subsets = []
    for ports, members in groups.items():
        live = [p for p in members if "deletionTimestamp" not in p["metadata"]]
        addresses = [{"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"],
                      "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"],
                                    "uid": p["metadata"]["uid"]}} for p in live]
        subset: Obj = {}
        if ready_addresses := [a for a, p in zip(addresses, live, strict=True) if pod_is_ready(p)]:
            subset["addresses"] = ready_addresses
        if not_ready := [a for a, p in zip(addresses, live, strict=True) if not pod_is_ready(p)]:
            subset["notReadyAddresses"] = not_ready
        if subset and ports:
            subset["ports"] = [{**({"name": pn} if pn else {}), "port": number, "protocol": proto}
                               for pn, number, proto in ports]
            subsets.append(subset)
    ep_meta = {"name": name, "namespace": ns, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{meta['uid']}/endpoints")),
               "resourceVersion": "1", "creationTimestamp": created,
               "labels": {k: v for k, v in labels.items() if not k.startswith("endpointslice.")},
               "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": created}}
    endpoints_obj = _obj("Endpoints", ep_meta, **({"subsets": subsets} if subsets else {}))
    return [*slices, endpoints_obj]


# ------------------------------------------------------------------ network policies


def network_policy_object(sc: Scenario, policy: Obj, created: str) -> Obj:
    """A scenario NetworkPolicy with the defaults the apiserver fills in."""
    policy = json.loads(json.dumps(policy))
    meta = policy.get("metadata", {})
    ns = meta.get("namespace", "default")
    spec = policy.setdefault("spec", {})
    spec.setdefault("podSelector", {})
    if "policyTypes" not in spec:
        spec["policyTypes"] = ["Ingress", *(["Egress"] if "egress" in spec else [])]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
    extra = {k: v for k, v in meta.items() if k not in ("name", "namespace")}
    full_meta = _meta(sc.name, "NetworkPolicy", meta["name"], ns, created, generation=1) | extra
    return _obj("NetworkPolicy", full_meta, spec=spec)


# ------------------------------------------------------------------ cluster add-ons (detection inputs)


def _configmap(sc: Scenario, name: str, data: dict[str, str], labels: dict[str, str], created: str) -> Obj:
    return _obj("ConfigMap", _meta(sc.name, "ConfigMap", name, "kube-system", created, labels=labels), data=data)


def _daemonset(sc: Scenario, name: str, labels: dict[str, str], containers: list[Obj], nodes: list[ResolvedNode],
               created: str) -> Obj:
    meta = _meta(sc.name, "DaemonSet", name, "kube-system", created, labels=labels, generation=1,
                 annotations={"deprecated.daemonset.template.generation": "1"})
    spec = {
        "revisionHistoryLimit": 10,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [{"imagePullPolicy": "IfNotPresent", "resources": {},
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File", **c} for c in containers],
                "dnsPolicy": "ClusterFirst", "hostNetwork": True, "priorityClassName": "system-node-critical",
                "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {},
                "serviceAccount": name, "serviceAccountName": name, "terminationGracePeriodSeconds": 30,
                "tolerations": [{"operator": "Exists"}],
            },
        },
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
    }
    ready = sum(n.ready for n in nodes)
    status = {"currentNumberScheduled": len(nodes), "desiredNumberScheduled": len(nodes),
              "numberAvailable": ready, "numberMisscheduled": 0, "numberReady": ready,
              "observedGeneration": 1, "updatedNumberScheduled": len(nodes)}
    if ready < len(nodes):
        status["numberUnavailable"] = len(nodes) - ready
    return _obj("DaemonSet", meta, spec=spec, status=status)


def addon_objects(rs: ResolvedScenario, created: str) -> list[Obj]:
    """kube-proxy and flannel (plus kube-router as the policy agent when policies are enforced)."""
    sc = rs.scenario
    proxy_config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "bindAddress": "0.0.0.0", "clusterCIDR": sc.cluster_cidr, "mode": sc.kube_proxy_mode,
        "iptables": {"masqueradeAll": False, "masqueradeBit": 14, "minSyncPeriod": "1s", "syncPeriod": "30s"},
        "ipvs": {"scheduler": "", "strictARP": False},
        "conntrack": {"maxPerCore": 32768, "min": 131072},
        "metricsBindAddress": "127.0.0.1:10249", "nodePortAddresses": None,
    }
    proxy_kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default", "cluster": {
            "certificate-authority": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "server": "https://kubernetes.default.svc"}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "namespace": "default",
                                                     "user": "default"}}],
        "current-context": "default",
        "users": [{"name": "default", "user": {
            "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}],
    }
    backend: Obj = {"Type": sc.cni}
    if sc.cni == "vxlan":
        backend |= {"VNI": FLANNEL_VXLAN_VNI, "Port": FLANNEL_VXLAN_PORT}
    net_conf = {"Network": sc.cluster_cidr, "EnableNFTables": False, "Backend": backend}
    cni_conf = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    corefile = (".:53 {\n    errors\n    health\n    ready\n"
                "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n"
                "       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }\n"
                "    prometheus :9153\n    forward . /etc/resolv.conf\n    cache 30\n    loop\n"
                "    reload\n    loadbalance\n}\n")
    objs = [
        _configmap(sc, "kube-proxy", {
            "config.conf": yaml.safe_dump(proxy_config, sort_keys=False),
            "kubeconfig.conf": yaml.safe_dump(proxy_kubeconfig, sort_keys=False),
        }, {"app": "kube-proxy"}, created),
        _daemonset(sc, "kube-proxy", {"k8s-app": "kube-proxy"}, [{
            "name": "kube-proxy", "image": f"registry.k8s.io/kube-proxy:{KUBERNETES_VERSION.split('-')[0]}",
            "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf",
                        "--hostname-override=$(NODE_NAME)"],
        }], rs.nodes, created),
    ]
    if sc.cni == "calico":
        objs += calico_objects(rs, created)
    elif sc.terway_mode:
        objs += terway_objects(rs, created)
    else:
        objs += [
            _configmap(sc, "kube-flannel-cfg", {
                "cni-conf.json": json.dumps(cni_conf, indent=2),
                "net-conf.json": json.dumps(net_conf, indent=2),
            }, {"app": "flannel", "tier": "node"}, created),
            _daemonset(sc, "kube-flannel-ds", {"app": "flannel", "tier": "node"}, [{
                "name": "kube-flannel", "image": "docker.io/flannel/flannel:v0.26.1",
                "command": ["/opt/bin/flanneld"], "args": ["--ip-masq", "--kube-subnet-mgr"],
            }], rs.nodes, created),
        ]
    if sc.dns:
        objs.append(_configmap(sc, "coredns", {"Corefile": corefile}, {}, created))
    if sc.network_policy and sc.cni not in ("calico", "terway-eniip", "terway-eni"):
        # flannel itself enforces no NetworkPolicy; the lab's enforcement stands for a policy-only agent
        objs.append(_daemonset(sc, "kube-router", {"k8s-app": "kube-router"}, [{
            "name": "kube-router", "image": "docker.io/cloudnativelabs/kube-router:v2.2.1",
            "args": ["--run-router=false", "--run-firewall=true", "--run-service-proxy=false"],
        }], rs.nodes, created))
    return objs


def calico_objects(rs: ResolvedScenario, created: str) -> list[Obj]:
    """calico.yaml's calico-config and calico-node (manifest v3.32, BIRD backend, no encapsulation), the default
    IPPool calico-node creates from CALICO_IPV4POOL_* (Kubernetes datastore: a crd.projectcalico.org object) and
    the FelixConfiguration `default`. felix enforces NetworkPolicies itself: lab/felix.py renders its v3.32
    chains."""
    sc = rs.scenario
    vxlan = sc.calico.vxlan_mode
    cni_conf = {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [
        {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "nodename": "__KUBERNETES_NODE_NAME__",
         "mtu": "__CNI_MTU__", "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
         "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]}
    env = [{"name": k, "value": v} for k, v in (
        ("DATASTORE_TYPE", "kubernetes"), ("CALICO_NETWORKING_BACKEND", "bird" if vxlan == "Never" else "vxlan"),
        ("CLUSTER_TYPE", "k8s,bgp" if vxlan == "Never" else "k8s"),
        ("IP", "autodetect"), ("CALICO_IPV4POOL_CIDR", sc.cluster_cidr),
        ("CALICO_IPV4POOL_BLOCK_SIZE", str(sc.calico.block_size)), ("CALICO_IPV4POOL_IPIP", "Never"),
        ("CALICO_IPV4POOL_VXLAN", sc.calico.vxlan_mode),
        ("CALICO_IPV4POOL_NAT_OUTGOING", str(sc.calico.nat_outgoing).lower()),
        ("FELIX_IPTABLESBACKEND", "NFT" if sc.iptables_backend == "nft" else "Legacy"),
        ("FELIX_DEFAULTENDPOINTTOHOSTACTION", sc.felix.default_endpoint_to_host_action))]
    meta = _meta(sc.name, "IPPool", "default-ipv4-ippool", None, created, generation=1)
    pool = _obj("IPPool", meta, spec={
        "allowedUses": ["Workload", "Tunnel"], "blockSize": sc.calico.block_size, "cidr": sc.cluster_cidr,
        "ipipMode": "Never", "natOutgoing": sc.calico.nat_outgoing, "nodeSelector": "all()",
        "vxlanMode": sc.calico.vxlan_mode})
    return [
        _configmap(sc, "calico-config", {
            "calico_backend": "bird" if vxlan == "Never" else "vxlan",
            "cni_network_config": json.dumps(cni_conf, indent=2),
            "typha_service_name": "none", "veth_mtu": "0",
        }, {}, created),
        _daemonset(sc, "calico-node", {"k8s-app": "calico-node"}, [{
            "name": "calico-node", "image": "docker.io/calico/node:v3.32.1", "env": env,
        }], rs.nodes, created),
        pool,
        felix_configuration(rs, created),
    ]


def felix_configuration(rs: ResolvedScenario, created: str) -> Obj:
    """The cluster-wide FelixConfiguration `default` (crd.projectcalico.org/v1, Kubernetes datastore) with
    the settings lab/felix.py renders: felix reads it in calico-node and in Terway's policy container."""
    sc = rs.scenario
    vxlan = sc.cni == "calico" and sc.calico.vxlan_mode != "Never"
    meta = _meta(sc.name, "FelixConfiguration", "default", None, created, generation=1)
    return _obj("FelixConfiguration", meta, spec={
        "bpfEnabled": False, "bpfLogLevel": "", "floatingIPs": "Disabled", "logSeverityScreen": "Info",
        "reportingInterval": "0s", "ipipEnabled": False, "vxlanEnabled": vxlan,
        **({"vxlanVNI": 4096, "vxlanPort": 4789} if vxlan else {}),
        "chainInsertMode": sc.felix.chain_insert_mode.capitalize(),
        "defaultEndpointToHostAction": sc.felix.default_endpoint_to_host_action.capitalize(),
        "iptablesMarkMask": int(sc.felix.iptables_mark_mask, 0)})


def terway_objects(rs: ResolvedScenario, created: str) -> list[Obj]:
    """ACK's Terway add-on: kube-system/eni-config (its eni_conf JSON: the pod vSwitch per zone, the ENIs'
    security groups, the service CIDR) and the DaemonSet — terway-eniip (daemon mode ENIMultiIP; NetworkPolicies
    enforced by felix in policy-only mode, disable_network_policy false: lab/felix.py renders its chains from the
    FelixConfiguration served here too) or terway-eni (daemon mode ENIOnly, exclusive ENIs; Terway enforces no
    NetworkPolicy on them: disable_network_policy true)."""
    sc = rs.scenario
    exclusive = sc.cni == "terway-eni"
    eni_conf = {
        "version": "1", "max_pool_size": 5, "min_pool_size": 0,
        "vswitches": {ZONE: [sc.terway.pod_vswitch_id]}, "security_groups": [sc.terway.security_group_id],
        "service_cidr": sc.service_cidr, "vswitch_selection_policy": "ordered", "ip_stack": "ipv4",
    }
    cni_conf = {"cniVersion": "0.4.0", "name": "terway", "type": "terway",
                "eniip_virtual_type": "Veth"}
    return [
        _configmap(sc, "eni-config", {
            "eni_conf": json.dumps(eni_conf, indent=2), "10-terway.conf": json.dumps(cni_conf, indent=2),
            "disable_network_policy": str(exclusive or not sc.network_policy).lower(),
            "in_cluster_loadbalance": "false",
        }, {}, created),
        _daemonset(sc, sc.cni, {"app": sc.cni}, [
            {"name": "terway", "image": "registry-cn-hangzhou-vpc.ack.aliyuncs.com/acs/terway:v1.9.0",
             "command": ["/usr/bin/terwayd", "-log-level", "info", "-daemon-mode",
                         "ENIOnly" if exclusive else "ENIMultiIP"]},
            {"name": "policy", "image": "registry-cn-hangzhou-vpc.ack.aliyuncs.com/acs/terway:v1.9.0",
             "command": ["/bin/policyinit.sh"]},
        ], rs.nodes, created),
        felix_configuration(rs, created),
        *(pod_eip_object(rs, p, created) for p in rs.pods if p.spec.eip),
    ]


def pod_eip_object(rs: ResolvedScenario, pod: ResolvedPod, created: str) -> Obj:
    """ack-extend-network-controller's PodEIP (alibabacloud.com/v1beta1, named after the pod, in its namespace): a
    static EIP (spec.allocationID) whose status is the address, the pod IP it is bound to and the ENI holding it
    (CRD pkg/apis/crds/alibabacloud.com_podeips.yaml of AliyunContainerService/terway)."""
    sc = rs.scenario
    meta = _meta(sc.name, "PodEIP", pod.spec.name, pod.spec.namespace, created, generation=1)
    return _obj("PodEIP", meta, spec={
        "allocationID": cloud_id("eip", sc.name, pod.spec.key),
        "allocationType": {"type": "Static", "releaseStrategy": "Follow"},
    }, status={"eipAddress": pod.spec.eip, "privateIPAddress": pod.ip, "networkInterfaceID": pod_eni_id(rs, pod),
               "podLastSeen": created})


# ------------------------------------------------------------------ everything


def scenario_objects(rs: ResolvedScenario, now: datetime | None = None) -> list[Obj]:
    """Every object the lab API serves for a resolved scenario, in creation order."""
    created = timestamp(now or datetime.now(UTC))
    sc = rs.scenario
    node_ip = {n.name: n.ip for n in rs.nodes}
    namespaces = [namespace_object(sc.name, ns.name, ns.labels, created) for ns in rs.namespaces]
    nodes = [node_object(sc, n, created) for n in rs.nodes]
    pods = [pod_object(sc, p, node_ip[p.spec.node], created) for p in rs.pods]
    services = [service_object(sc, s, created) for s in rs.services]
    endpoints = [o for svc in services for o in endpoint_objects(svc, pods)]
    policies = [network_policy_object(sc, p, created) for p in sc.network_policies]
    return [*namespaces, *nodes, *addon_objects(rs, created), *pods, *services, *endpoints, *policies]
