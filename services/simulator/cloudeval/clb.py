"""CLB (classic load balancer) lookups: which load balancer serves a Service, its listener
for a port, the listener's access control, and every backend with its weight and health.

Layer-4 listeners (TCP/UDP) only, like the seed; any number of backends (the seed looked
at ten, KubeSkoop at the first one). Pages cited in docs/cloud.md:
* access control: a whitelist forwards only its entries, a blacklist drops its entries, and an
  ACL with no entries (either kind) forwards everything; a listener has up to three ACLs;
* SetBackendServers: a backend of weight 0 is forwarded no request;
* a primary/secondary server group sends to the primary while it is healthy, else the secondary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.simulator.cloudeval.index import IP, CloudIndex, contains
from shared.cloud import LB_ID_ANNOTATION, AccessControlList, Listener, LoadBalancer


@dataclass(frozen=True)
class BackendTarget:
    server_id: str
    type: str  # ecs (NodePort on a node) or eni (a pod address, Terway)
    ip: str | None
    port: int | None
    health: str  # normal, abnormal, unavailable, unknown
    node: str | None = None  # the Kubernetes node when the server is a node's instance
    weight: int = 100
    server_type: str | None = None  # Master / Slave in a primary/secondary server group

    @property
    def label(self) -> str:
        return f"{self.server_id}({self.ip or '?'})"


def find_load_balancer(index: CloudIndex, address: IP, service_object: dict[str, Any] | None = None,
                       load_balancer_ips: list[str] | None = None) -> tuple[LoadBalancer | None, str]:
    """By the cloud controller's id annotation first, then by the address the client used
    (the Service's ingress IP). Returns the LB and how it was found."""
    annotations = ((service_object or {}).get("metadata") or {}).get("annotations") or {}
    lb_id = annotations.get(LB_ID_ANNOTATION)
    if lb_id and lb_id in index.lbs:
        return index.lbs[lb_id], f"annotation {LB_ID_ANNOTATION}={lb_id}"
    wanted = {str(address), *(load_balancer_ips or [])}
    for lb in index.inv.load_balancers:
        if lb.address in wanted:
            return lb, f"address {lb.address}"
    return None, f"no load balancer with id {lb_id} or address in {sorted(wanted)}" if lb_id else \
        f"no load balancer with address in {sorted(wanted)}"


def listener_for(lb: LoadBalancer, port: int | None, protocol: str) -> Listener | None:
    return next((li for li in lb.listeners if li.port == port and li.protocol == protocol), None)


def listener_acl_ids(listener: Listener) -> list[str]:
    """Every ACL of the listener (AclIds), or the one AclId older inventories carry."""
    return list(dict.fromkeys([*listener.acl_ids, *([listener.acl_id] if listener.acl_id else [])]))


def acl_denies(listener: Listener, acls: list[AccessControlList], src: IP) -> bool:
    """The listener's access control over the union of its ACLs' entries; no entry at all
    means access control does not take effect (the listener forwards every request)."""
    entries = [cidr for acl in acls for cidr in acl.entries]
    if not entries:
        return False
    inside = any(contains(cidr, src) for cidr in entries)
    return not inside if listener.acl_type == "white" else inside


def backends(index: CloudIndex, lb: LoadBalancer, listener: Listener) -> list[BackendTarget]:
    """Every backend of the listener (its primary/secondary group, its vserver group, else the
    default server group) with the health the load balancer reports for it on this listener."""
    group = next((g for g in lb.master_slave_server_groups if g.id == listener.master_slave_server_group_id), None) \
        or next((g for g in lb.vserver_groups if g.id == listener.vserver_group_id), None)
    servers = group.backends if group is not None else lb.backends
    node_of = {instance: node for node, instance in index.inv.nodes.items()}
    out = []
    for server in servers:
        port = server.port if server.port is not None else listener.backend_port
        ip = server.server_ip or _primary_ip(index, server.server_id)
        health = next((h.status for h in listener.health
                       if h.server_id == server.server_id and (h.server_ip in (None, ip)) and h.port in (None, port)),
                      "unknown")
        owner = index.enis[server.server_id].instance_id if server.server_id in index.enis else server.server_id
        out.append(BackendTarget(server_id=server.server_id, type=server.type, ip=ip, port=port, health=health,
                                 node=node_of.get(owner or ""), weight=server.weight, server_type=server.server_type))
    return out


def _primary_ip(index: CloudIndex, server_id: str) -> str | None:
    instance = index.instances.get(server_id)
    if instance and instance.private_ips:
        return instance.private_ips[0]
    eni = index.enis.get(server_id)
    return eni.primary_ip if eni else None
