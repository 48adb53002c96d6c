"""Snapshot source: `<dir>/kubernetes/*.yaml|*.yml|*.json` into a ClusterModel.

Accepts single objects, `List`s (`kubectl get -A -o yaml|json` output as is), typed lists
whose items carry no `kind` (`PodList` from the API) and multi-document YAML. Kinds the
diagnosis does not use (Deployments, Events …) are counted and skipped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.topology.model import KINDS, ClusterModel, Obj, trim

SNAPSHOT_VERSION = 1
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SnapshotError(ValueError):
    """A snapshot directory or file that cannot be read; the message names the file."""


@dataclass
class SnapshotLoad:
    model: ClusterModel
    directory: Path
    files: int = 0
    loaded: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def iter_documents(path: Path) -> Iterator[Any]:
    try:
        if path.suffix == ".json":
            with path.open("rb") as fh:
                yield json.load(fh)
        else:
            with path.open("rb") as fh:
                yield from yaml.load_all(fh, Loader=_Loader)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SnapshotError(f"{path}: cannot parse: {exc}") from exc


def iter_objects(doc: Any, list_kind: str | None = None) -> Iterator[Obj]:
    """Flatten Lists; an item without `kind` takes it from its typed list (PodList → Pod)."""
    if not isinstance(doc, dict):
        return
    kind = doc.get("kind") or list_kind
    if isinstance(doc.get("items"), list) and (kind is None or kind.endswith("List")):
        item_kind = kind[:-4] if kind and kind != "List" else None
        for item in doc["items"]:
            yield from iter_objects(item, item_kind or None)
        return
    if kind:
        yield doc if doc.get("kind") else {**doc, "kind": kind}


def check_version(directory: Path) -> None:
    meta = directory / "snapshot.json"
    if not meta.exists():
        return  # hand-assembled snapshots may omit it: version 1
    try:
        version = json.loads(meta.read_text()).get("version", SNAPSHOT_VERSION)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{meta}: cannot parse: {exc}") from exc
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"{meta}: snapshot layout version {version} is not supported (this netdiag reads "
                            f"version {SNAPSHOT_VERSION}; see docs/snapshot.md)")


def kubernetes_files(directory: Path) -> list[Path]:
    check_version(directory)
    root = directory / "kubernetes"
    if not root.is_dir():
        raise SnapshotError(f"{directory}: not a snapshot (no kubernetes/ directory; see docs/snapshot.md)")
    return sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())


def load_snapshot(directory: str | Path, model: ClusterModel | None = None) -> SnapshotLoad:
    started = time.perf_counter()
    directory = Path(directory)
    result = SnapshotLoad(model=model or ClusterModel(), directory=directory)
    for path in kubernetes_files(directory):
        result.files += 1
        for doc in iter_documents(path):
            for obj in iter_objects(doc):
                kind = obj["kind"]
                if kind not in KINDS:
                    result.skipped[kind] += 1
                    continue
                if not (obj.get("metadata") or {}).get("name"):
                    raise SnapshotError(f"{path}: a {kind} without metadata.name")
                result.model.apply("ADDED", kind, trim(kind, obj))
                result.loaded[kind] += 1
    result.seconds = time.perf_counter() - started
    return result
