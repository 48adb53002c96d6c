"""Snapshot capture, Kubernetes part: the model's objects as `kubernetes/<kind>.json` Lists.

Objects are written as the model holds them (trimmed: no managedFields, no
last-applied annotation, pods without volumes/env/resources) — everything a diagnosis
reads, which the snapshot loader accepts back as is. `snapshot.json` records the layout
version and what was captured (docs/snapshot.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.topology.model import KINDS, ClusterModel
from services.topology.sources.live import LiveSource
from services.topology.sources.snapshot import SNAPSHOT_VERSION

META_FILE = "snapshot.json"


def capture_kubernetes(
    source: LiveSource | ClusterModel, out_dir: str | Path, *, sync_timeout_s: float = 30.0
) -> dict[str, int]:
    """Write every cached object; returns the count per kind. A live source must be synced."""
    if isinstance(source, LiveSource):
        if not source.wait_synced(sync_timeout_s):
            raise RuntimeError(f"Kubernetes API cache did not sync: {source.errors()}")
        model, origin = source.model, "live"
    else:
        model, origin = source, "model"
    root = Path(out_dir)
    (root / "kubernetes").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with model.lock:
        snapshot = {kind: [model.objects[kind][k] for k in sorted(model.objects[kind])] for kind in KINDS}
    for kind, items in snapshot.items():
        body = {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}
        (root / "kubernetes" / f"{kind.lower()}s.json").write_text(json.dumps(body, separators=(",", ":")))
        counts[kind] = len(items)
    meta_path = root / META_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"version": SNAPSHOT_VERSION, "created_at": meta.get("created_at") or datetime.now(UTC).isoformat(),
                 "kubernetes": {"source": origin, "counts": counts}})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return counts
