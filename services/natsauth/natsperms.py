"""NATS subject permissions per netdiag identity, as nats-server `permissions` blocks.

The server enforces them (docs/security.md shows the configuration); tests/deploy/test_security.py
runs a real agent under them and shows what is refused.
"""

from __future__ import annotations

from typing import Any

from shared.bus import BLOBS_BUCKET, RESULTS_BUCKET, STREAM, agent_inbox_prefix, node_collect_subject
from shared.live import node_drops_subject, node_probe_subject


def agent_permissions(node: str) -> dict[str, Any]:
    """What node `node`'s agent may do on NATS (a nats-server `permissions` block, docs/security.md):
    receive only its own collect (and live probe / drops) subjects and answer them, write its dump into the
    blob object store — and nothing else: no diagnosis subject, no results bucket, no other node's requests or
    replies."""
    js = "$JS.API"
    return {
        "subscribe": {"allow": [node_collect_subject(node), node_probe_subject(node), node_drops_subject(node),
                                f"{agent_inbox_prefix(node)}.>"]},
        "publish": {"allow": [
            f"{js}.INFO",
            # Bus.ensure(): look the stream and buckets up (creating them is for the stages)
            f"{js}.STREAM.INFO.{STREAM}", f"{js}.STREAM.INFO.KV_{RESULTS_BUCKET}",
            f"{js}.STREAM.INFO.OBJ_{BLOBS_BUCKET}",
            # object store put: chunks and metadata, replacing an older dump of the same name
            f"$O.{BLOBS_BUCKET}.>", f"{js}.STREAM.PURGE.OBJ_{BLOBS_BUCKET}",
            f"{js}.STREAM.MSG.GET.OBJ_{BLOBS_BUCKET}", f"{js}.DIRECT.GET.OBJ_{BLOBS_BUCKET}.>",
        ]},
        "allow_responses": True,  # may publish once on the reply subject of a request it received
    }
