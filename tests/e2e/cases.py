"""The snapshots and requests the end-to-end tests diagnose (shared by the stack and CLI tests)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POLICY = Path(__file__).parent / "fixtures" / "policy"  # calico: policies enforced; kubernetes/ only
BASIC = ROOT / "tests" / "topology" / "fixtures" / "basic"  # flannel alone: policies not enforced
SHOP = ROOT / "examples" / "snapshots" / "shop"  # captured from the lab: kubernetes/ + nodes/ + cloud/

Case = tuple[str, str, int, str]

POLICY_CASES: dict[str, Case] = {
    "ingress_deny": ("10.244.1.10", "10.244.2.12", 8200, "tcp"),  # web/frontend → secure/vault-0 (deny-all ns)
    "namespace_deny": ("10.244.1.13", "10.244.2.10", 8080, "tcp"),  # default/debug → prod/api: only ns team=web
    "egress_deny": ("10.244.1.11", "10.244.2.10", 8080, "tcp"),  # web/sandbox may only talk to DNS
    "allow_via_service": ("10.244.1.10", "10.96.0.20", 80, "tcp"),  # prod/api, targetPort "http" → 8080
    "no_endpoints": ("10.244.1.10", "10.96.0.50", 80, "tcp"),  # prod/reports selects nothing
    "not_running": ("10.244.1.10", "10.244.2.11", 8080, "tcp"),  # web/batch-worker stuck in its init container
    "not_ready": ("10.244.1.10", "10.244.1.12", 8080, "tcp"),  # prod/api-…-d3e4f fails its readiness probe
    "unknown_address": ("10.244.1.10", "10.244.3.77", 80, "tcp"),
    "dns": ("10.244.1.11", "10.96.0.10", 53, "udp"),  # two CoreDNS pods; sandbox's egress allows DNS
    "one_endpoint_denied": ("10.244.1.10", "10.96.0.60", 9200, "tcp"),  # search-1 lacks exposure=public
}
BASIC_CASES: dict[str, Case] = {
    "cni_not_enforcing": ("10.244.1.20", "10.244.2.40", 8443, "tcp"),  # prod default-deny, flannel only
    "dns": ("10.244.1.20", "10.96.0.10", 53, "udp"),
    "named_target_port": ("10.244.1.20", "10.96.0.50", 80, "tcp"),  # web: targetPort http → 8080
    "no_endpoints": ("10.244.1.20", "10.96.0.70", 80, "tcp"),
}
SHOP_CASES: dict[str, Case] = {
    "service": ("10.244.1.2", "10.96.0.100", 80, "tcp"),  # web/client → shop/api (two endpoints)
    "policy_deny": ("10.244.1.2", "10.244.2.3", 5432, "tcp"),  # web/client → shop/db: only app=api allowed
    "policy_allow": ("10.244.1.3", "10.244.2.3", 5432, "tcp"),  # shop/api-1 → shop/db
    "dns": ("10.244.1.2", "10.96.0.10", 53, "udp"),
}
