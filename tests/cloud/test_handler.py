"""The cloud stage on a real nats-server: none provider, the Alibaba provider against the
emulator (inventory stored in the object store), and snapshot mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator
from services.cloud.handler import CloudStage
from shared.bus import Bus
from shared.cloud import CloudInventory, dump_inventory, empty_inventory
from shared.config import Settings
from shared.schemas import BlobRef, DiagnosisRequest, StageEnvelope, new_id, now
from shared.topology import CandidatePath, ClusterObjects, Endpoint, EndpointKind, TopologyReport
from tests.cloud.conftest import NODES, healthy


def envelope() -> StageEnvelope:
    topology = TopologyReport(
        source="live",
        src=Endpoint(address="172.16.0.5", kind=EndpointKind.POD, pod="default/a", node="node-1"),
        dst=Endpoint(address="172.16.1.7", kind=EndpointKind.POD, pod="default/b", node="node-2"),
        paths=[CandidatePath(id="p0", src_node="node-1", dst_node="node-2", dst_address="172.16.1.7")],
        nodes_to_collect=["node-1", "node-2"], objects=ClusterObjects(nodes=NODES))
    return StageEnvelope(id=new_id(), created_at=now(), topology=topology.model_dump(mode="json"),
                         request=DiagnosisRequest(src="172.16.0.5", dst="172.16.1.7", port=8080, protocol="tcp"))


@pytest.fixture
async def bus(nats_url: str):
    b = await Bus.connect(nats_url, name="cloud-test", settings=Settings(nats_url=nats_url))
    try:
        yield b
    finally:
        await b.close()


async def test_none_provider_states_the_cloud_is_not_modelled(bus: Bus, nats_url: str) -> None:
    out = await CloudStage(bus, Settings(nats_url=nats_url)).handle(envelope())
    assert isinstance(out.cloud, dict) and out.cloud["modelled"] is False
    # an explicit "none" is the operator's statement (bare metal, the lab), not a gap in the data
    assert any("cloud layer not modelled" in a.text and not a.could_change_outcome for a in out.assumptions)


async def test_alibaba_provider_stores_the_inventory(bus: Bus, nats_url: str, emulator: CloudEmulator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    emulator.set_state(healthy())
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", DEFAULT_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", DEFAULT_KEY_SECRET)
    settings = Settings(nats_url=nats_url, cloud_provider="alibaba", cloud_region="cn-hangzhou",
                        cloud_endpoint=f"http://{emulator.endpoint}")
    env = envelope()
    out = await CloudStage(bus, settings).handle(env)
    assert isinstance(out.cloud, BlobRef)
    inventory = CloudInventory.model_validate_json(await bus.get_blob(out.cloud))
    assert inventory.nodes == {"node-1": "i-node1", "node-2": "i-node2"}
    assert DEFAULT_KEY_SECRET not in out.model_dump_json()
    # re-handled after a crash: a new object (blob names are never reused, so no reader races a replacement)
    again = await CloudStage(bus, settings).handle(env)
    assert isinstance(again.cloud, BlobRef) and again.cloud.name != out.cloud.name
    assert CloudInventory.model_validate_json(await bus.get_blob(again.cloud)).nodes == inventory.nodes


async def test_unreadable_cloud_is_a_finding_not_a_crash(bus: Bus, nats_url: str, emulator: CloudEmulator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", DEFAULT_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong")
    settings = Settings(nats_url=nats_url, cloud_provider="alibaba", cloud_endpoint=f"http://{emulator.endpoint}")
    out = await CloudStage(bus, settings).handle(envelope())
    assert [f.code for f in out.findings] == ["DATA_MISSING"]
    assert "wrong" not in out.model_dump_json()
    assert isinstance(out.cloud, dict) and not out.cloud["modelled"]


async def test_snapshot_mode_reads_the_cloud_directory(bus: Bus, nats_url: str, collect, tmp_path: Path) -> None:
    dump_inventory(collect(healthy()), tmp_path / "cloud")
    out = await CloudStage(bus, Settings(nats_url=nats_url, snapshot=tmp_path)).handle(envelope())
    assert isinstance(out.cloud, BlobRef)
    assert CloudInventory.model_validate_json(await bus.get_blob(out.cloud)).instances
    bare = tmp_path / "bare"
    bare.mkdir()
    out = await CloudStage(bus, Settings(nats_url=nats_url, snapshot=bare)).handle(envelope())
    assert out.cloud["modelled"] is False and out.cloud["statements"] == empty_inventory(
        "snapshot", f"no cloud inventory in {bare / 'cloud'}").statements


@pytest.mark.parametrize("content", ["{not json", '{"provider": 7}', "\x00\x01binary"])
async def test_a_malformed_snapshot_inventory_degrades_like_a_corrupt_node_dump(
        bus: Bus, nats_url: str, tmp_path: Path, content: str) -> None:
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "inventory.json").write_text(content)
    out = await CloudStage(bus, Settings(nats_url=nats_url, snapshot=tmp_path)).handle(envelope())
    (missing,) = out.findings
    assert missing.code == "DATA_MISSING" and "inventory.json" in missing.message
    assert isinstance(out.cloud, dict) and out.cloud["modelled"] is False
    assert any(a.stage == "cloud" and a.could_change_outcome for a in out.assumptions)
