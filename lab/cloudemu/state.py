"""Emulator state files: a compact JSON description of one region's cloud, using the
OpenAPI's own field names (flattened), rendered into full API responses by `api.py`.

A state file may extend another one and apply a JSON Patch (RFC 6902 add/replace/remove)
so each fault file is the healthy state plus the fault, nothing else:

    {"extends": "healthy.json", "patch": [{"op": "replace", "path": "/instances/0/Status",
                                           "value": "Stopped"}]}

Documented in docs/cloud.md; examples in examples/cloud/.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

COLLECTIONS = (
    "instances", "network_interfaces", "security_groups", "vpcs", "vswitches", "route_tables",
    "nat_gateways", "load_balancers", "vserver_groups", "acls", "prefix_lists", "port_lists", "network_acls",
    "eips", "ipv4_gateways", "master_slave_server_groups",
)


class StateError(ValueError):
    pass


def load_state(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if "extends" in data:
        base = load_state(path.parent / data["extends"])
        data = apply_patch(base, data.get("patch", []))
    return normalise(data)


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    unknown = set(data) - {"region", "patch", "extends", "description", *COLLECTIONS}
    if unknown:
        raise StateError(f"unknown state keys {sorted(unknown)}; expected {COLLECTIONS}")
    state = {"region": data.get("region", "cn-hangzhou"), "description": data.get("description", "")}
    for key in COLLECTIONS:
        items = data.get(key, [])
        if not isinstance(items, list):
            raise StateError(f"{key} must be a list")
        state[key] = items
    return state


def apply_patch(doc: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in patch:
        kind, path = op.get("op"), op.get("path", "")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        if not parts:
            raise StateError(f"patch path {path!r} must point inside the document")
        parent: Any = doc  # a dict or a list, depending on the path walked so far
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "remove":
                del parent[index]
            else:
                raise StateError(f"unsupported patch op {kind!r}")
        elif kind in ("add", "replace"):
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[last]
        else:
            raise StateError(f"unsupported patch op {kind!r}")
    return doc
