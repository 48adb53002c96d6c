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

from services.topology.decode import DecodeError, decode_list
from services.topology.model import KINDS, ClusterModel, Obj, bulk_build, trim, unusable_addresses

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
    skipped: Counter[str] = field(default_factory=Counter)  # kinds the diagnosis does not read
    problems: list[str] = field(default_factory=list)  # documents that are no object, addresses that are no IP
    seconds: float = 0.0
    file_seconds: dict[str, float] = field(default_factory=dict)  # where the load's time went


def iter_documents(path: Path) -> Iterator[Any]:
    try:
        if path.suffix == ".json":
            # a list's items are decoded one at a time as the load takes them (services.topology.decode)
            head, items = decode_list(path.read_bytes())
            if head is None:
                yield from items
            else:
                yield {**head, "items": items}
        else:
            with path.open("rb") as fh:
                yield from yaml.load_all(fh, Loader=_Loader)
    except (OSError, ValueError, DecodeError, yaml.YAMLError) as exc:
        raise SnapshotError(f"{path}: cannot parse: {exc}") from exc


def iter_objects(doc: Any, list_kind: str | None = None, junk: list[str] | None = None,
                 where: str = "document") -> Iterator[Obj]:
    """Flatten Lists; an item without `kind` takes it from its typed list (PodList → Pod). What is no
    Kubernetes object at all is described in `junk` (when given) instead of vanishing."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    kind = kind or list_kind or ("List" if isinstance(doc, dict) and isinstance(doc.get("items"), list | Iterator)
                                 else None)
    if not isinstance(doc, dict) or not isinstance(kind, str) or not kind:
        if junk is not None:
            junk.append(f"{where} is not a Kubernetes object (no kind): {_shorten(doc)}")
        return
    if isinstance(doc.get("items"), list | Iterator) and kind.endswith("List"):
        item_kind = kind[:-4] if kind != "List" else None
        for n, item in enumerate(doc["items"]):
            own = item.get("kind") if isinstance(item, dict) else None
            if own and isinstance(own, str) and not own.endswith("List"):
                yield item  # the common case (an object that says its kind), without a generator per item
            else:
                yield from iter_objects(item, item_kind or None, junk, f"{where} item {n}")
        return
    yield doc if doc.get("kind") else {**doc, "kind": kind}


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    with bulk_build():
        _load_files(result)
    result.seconds = time.perf_counter() - started
    return result


def _load_files(result: SnapshotLoad) -> None:
    for path in kubernetes_files(result.directory):
        result.files += 1
        started = time.perf_counter()
        for n, doc in enumerate(iter_documents(path), 1):
            if doc is None:  # an empty YAML document (a trailing ---)
                continue
            for obj in iter_objects(doc, junk=result.problems, where=f"kubernetes/{path.name} document {n}"):
                kind = obj["kind"]
                if kind not in KINDS:
                    result.skipped[kind] += 1
                    continue
                if not (obj.get("metadata") or {}).get("name"):
                    raise SnapshotError(f"{path}: a {kind} without metadata.name")
                try:
                    result.problems += unusable_addresses(kind, obj)
                    result.model.apply("ADDED", kind, trim(kind, obj))
                except (AttributeError, TypeError) as exc:  # a field of the wrong shape (an endpoint that is a string)
                    raise SnapshotError(f"{path}: {kind} {obj['metadata'].get('namespace', '')}/"
                                        f"{obj['metadata']['name']} has a field of the wrong shape ({exc}); "
                                        "fix or remove the object") from exc
                result.loaded[kind] += 1
        result.file_seconds[path.name] = time.perf_counter() - started


def load_notes(load: SnapshotLoad) -> list[str]:
    """What the load left out, as the sentences every diagnosis states (docs/snapshot.md promises the counts)."""
    notes = []
    if load.skipped:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(load.skipped.items()))
        notes.append(f"snapshot: {sum(load.skipped.values())} object(s) of kinds the diagnosis does not read were "
                     f"skipped ({kinds})")
    if load.problems:
        shown = "; ".join(load.problems[:5]) + (f"; and {len(load.problems) - 5} more" if len(load.problems) > 5
                                                else "")
        notes.append(f"snapshot: {len(load.problems)} unusable object(s) or field(s) left out: {shown}")
    return notes
