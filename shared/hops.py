"""Hop ids: stable within a diagnosis, shared by every stage that attaches findings to hops."""

from __future__ import annotations


def pod_hop(pod_key: str) -> str:
    return f"pod:{pod_key}"


def node_hop(node: str) -> str:
    return f"node:{node}"


def service_hop(service_key: str) -> str:
    return f"service:{service_key}"


def external_hop(address: object) -> str:
    return f"external:{address}"
