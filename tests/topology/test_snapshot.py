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


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_an_object_with_a_field_of_the_wrong_shape_is_named(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "kubernetes").mkdir()
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
              "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
              "endpoints": ["10.244.1.5"]}
    text = json.dumps({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "items": [slice_]})
    (tmp_path / "kubernetes" / f"slices.{suffix}").write_text(text)  # JSON is YAML too
    with pytest.raises(SnapshotError, match=r"slices\.(json|yaml): EndpointSlice shop/web-abc has a field of the"):
        load_snapshot(tmp_path)


def test_unknown_layout_version_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "snapshot.json").write_text('{"version": 99}')
    with pytest.raises(SnapshotError, match="version 99 is not supported"):
        load_snapshot(tmp_path)


def _bad_snapshot(tmp_path: Path) -> Path:
    """The shop example plus a junk YAML file, a Deployment and a pod whose podIP is not an IP."""
    import shutil

    root = tmp_path / "shop"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "snapshots" / "shop", root)
    k8s = root / "kubernetes"
    (k8s / "junk.yaml").write_text("just some words\n---\n- 1\n- 2\n---\n")
    (k8s / "extra.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: shop}\nspec: {nodeName: node-1}\n"
        "status: {phase: Running, podIP: not-an-ip}\n")
    return root


def test_bad_objects_are_counted_and_named_not_dropped(tmp_path: Path) -> None:
    from services.topology.sources.snapshot import load_notes

    load = load_snapshot(_bad_snapshot(tmp_path))
    assert load.skipped["Deployment"] == 1
    assert load.problems == [  # files in name order
        "pod shop/broken: status.podIP 'not-an-ip' is not an IP address",
        "kubernetes/junk.yaml document 1 is not a Kubernetes object (no kind): 'just some words'",
        "kubernetes/junk.yaml document 2 is not a Kubernetes object (no kind): [1, 2]",
    ]
    skipped, unusable = load_notes(load)
    assert skipped == "snapshot: 1 object(s) of kinds the diagnosis does not read were skipped (Deployment 1)"
    assert unusable.startswith("snapshot: 3 unusable object(s) or field(s) left out: pod shop/broken")


async def test_every_diagnosis_and_the_cluster_summary_state_them(tmp_path: Path) -> None:
    """Through the embedded stack: the result's assumptions and GET /api/v1/cluster carry the notes."""
    import asyncio

    import aiohttp

    from services.stack import EmbeddedStack
    from shared.config import Settings
    from tests.foundation.helpers import get_json, run_to_end

    async with EmbeddedStack(Settings(snapshot=_bad_snapshot(tmp_path))) as stack, aiohttp.ClientSession() as http:
        doc = await run_to_end(http, stack.url, {"src": "10.244.1.2", "dst": "10.244.2.3", "port": 5432,
                                                 "protocol": "tcp"}, timeout=30)
        for _ in range(100):  # the summary is published shortly after the model loads
            async with http.get(f"{stack.url}/api/v1/cluster") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        summary = await get_json(http, f"{stack.url}/api/v1/cluster")
    texts = [a["text"] for a in doc["result"]["assumptions"]]
    assert any("were skipped (Deployment 1)" in t for t in texts), texts
    assert any("pod shop/broken: status.podIP 'not-an-ip' is not an IP address" in t for t in texts), texts
    assert len(summary["notes"]) == 2 and "Deployment 1" in summary["notes"][0]
