"""Snapshot loading: Lists, typed lists without item kinds, multi-document YAML, trimming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.topology.sources.snapshot import SnapshotError, load_snapshot
from tests.topology.conftest import BASIC


def test_basic_snapshot_loads_every_kind() -> None:
    load = load_snapshot(BASIC)
    assert load.loaded == {"Pod": 13, "Service": 13, "EndpointSlice": 13, "Namespace": 4, "NetworkPolicy": 3,
                           "Node": 3, "DaemonSet": 2, "ConfigMap": 2}
    assert load.skipped == {"Deployment": 1}
    # items of a PodList carry no kind: they take it from the list
    pod = load.model.get("Pod", "default/client")
    assert pod is not None and pod["kind"] == "Pod"


def test_objects_are_trimmed() -> None:
    model = load_snapshot(BASIC).model
    node = model.get("Node", "node-1")
    assert node is not None and "managedFields" not in node["metadata"]
    svc = model.get("Service", "default/web")
    assert svc is not None and "annotations" not in svc["metadata"]  # only last-applied was there
    pod = model.get("Pod", "default/web-7c9f8d6b5-abcde")
    assert pod is not None
    assert "volumes" not in pod["spec"] and "resources" not in pod["spec"]["containers"][0]
    assert pod["spec"]["containers"][0]["ports"][0]["name"] == "http"
    assert pod["metadata"]["labels"]["app"] == "web"


def test_single_objects_and_json_lists(tmp_path: Path) -> None:
    k8s = tmp_path / "kubernetes"
    k8s.mkdir()
    (k8s / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: solo\n")
    (k8s / "list.json").write_text(json.dumps({"kind": "ServiceList", "apiVersion": "v1", "items": [
        {"metadata": {"name": "a", "namespace": "solo"}, "spec": {"clusterIP": "10.0.0.1", "ports": []}}]}))
    (k8s / "notes.txt").write_text("ignored")
    model = load_snapshot(tmp_path).model
    assert model.counts()["Namespace"] == 1 and model.counts()["Service"] == 1


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no kubernetes/ directory"):
        load_snapshot(tmp_path)
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "bad.yaml").write_text("kind: Pod\nmetadata: [unclosed\n")
    with pytest.raises(SnapshotError, match=r"bad\.yaml"):
        load_snapshot(tmp_path)


def test_unknown_layout_version_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "snapshot.json").write_text('{"version": 99}')
    with pytest.raises(SnapshotError, match="version 99 is not supported"):
        load_snapshot(tmp_path)
