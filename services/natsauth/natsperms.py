"""NATS subject permissions per netdiag identity, as nats-server `permissions` blocks.

The server enforces them (docs/security.md shows the configuration); tests/deploy/test_security.py
enumerates, against a real server, everything an agent identity can do and compares it with this grant.
"""

from __future__ import annotations

from typing import Any

from shared.bus import agent_inbox_prefix, node_bucket, node_collect_subject
from shared.live import node_drops_subject, node_probe_subject


def agent_permissions(node: str) -> dict[str, Any]:
    """What node `node`'s agent may do on NATS (a nats-server `permissions` block, docs/security.md):
    receive only its own collect (and live probe / drops) subjects and answer them, and put objects into its
    own node's blob bucket — nothing else: no diagnosis subject, no results, no other node's requests,
    replies or blobs, no stream management (no purge, no delete, no listing)."""
    return {
        "subscribe": {"allow": [node_collect_subject(node), node_probe_subject(node), node_drops_subject(node),
                                f"{agent_inbox_prefix(node)}.>"]},
        # Bus.put_node_blob: the chunks and metadata entry of a new object in its own bucket, no API call
        "publish": {"allow": [f"$O.{node_bucket(node)}.>"]},
        "allow_responses": True,  # may publish once on the reply subject of a request it received
    }
