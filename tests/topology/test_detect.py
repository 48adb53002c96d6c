"""Detection: CNI and policy enforcement, kube-proxy mode, CIDRs — unknowns become assumptions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.topology.detect import Detector, detect
from services.topology.model import ClusterModel, trim
from services.topology.sources.snapshot import load_snapshot
from tests.topology.conftest import BASIC


def _ds(name: str, ns: str = "kube-system", image: str = "", args: list[str] | None = None) -> dict[str, Any]:
    container = {"name": name, "image": image or f"registry.example.com/{name}:v1", "args": args or []}
    return {"kind": "DaemonSet", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"containers": [container]}}}}


def _cm(name: str, data: dict[str, str], ns: str = "kube-system") -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def _model(*objs: dict[str, Any]) -> ClusterModel:
    model = ClusterModel()
    for obj in objs:
        model.apply("ADDED", obj["kind"], trim(obj["kind"], obj))
    return model


def _netconf(backend: str | None) -> dict[str, str]:
    conf: dict[str, Any] = {"Network": "10.244.0.0/16"}
    if backend:
        conf["Backend"] = {"Type": backend}
    return {"net-conf.json": json.dumps(conf)}


CNI_CASES = [
    ("flannel-host-gw", [_ds("kube-flannel-ds", "kube-flannel"), _cm("kube-flannel-cfg", _netconf("host-gw"))],
     "flannel-host-gw", False),
    ("flannel-vxlan", [_ds("kube-flannel-ds", "kube-flannel"), _cm("kube-flannel-cfg", _netconf("vxlan"))],
     "flannel-vxlan", False),
    ("flannel+kube-router", [_ds("kube-flannel-ds"), _cm("kube-flannel-cfg", _netconf("vxlan")), _ds("kube-router")],
     "flannel-vxlan", True),
    ("canal", [_ds("canal"), _cm("canal-config", _netconf("vxlan"))], "flannel-vxlan", True),
    ("calico", [_ds("calico-node")], "calico", True),
    ("cilium", [_ds("cilium"), _cm("cilium-config", {"enable-policy": "default"})], "cilium", True),
    ("cilium-policy-never", [_ds("cilium"), _cm("cilium-config", {"enable-policy": "never"})], "cilium", False),
    ("terway-policy-on", [_ds("terway-eniip"), _cm("eni-config", {"disable_network_policy": "false"})], "terway", True),
    ("terway-policy-off", [_ds("terway-eniip"), _cm("eni-config", {"disable_network_policy": "true"})],
     "terway", False),
    # Terway documents no NetworkPolicy support for pods on exclusive ENIs, whatever eni-config says
    ("terway-eni", [_ds("terway-eni"), _cm("eni-config", {"disable_network_policy": "false"})], "terway", False),
    ("unknown", [_ds("some-vendor-agent")], "unknown", None),
    ("nothing", [], "unknown", None),
]


@pytest.mark.parametrize(("objs", "cni", "enforces"), [c[1:] for c in CNI_CASES], ids=[c[0] for c in CNI_CASES])
def test_cni_detection(objs: list[dict[str, Any]], cni: str, enforces: bool | None) -> None:
    found = detect(_model(*objs))
    assert (found.info.cni, found.info.enforces_network_policy) == (cni, enforces)
    if cni == "unknown":
        assert any("CNI could not be detected" in a.text and a.could_change_outcome for a in found.assumptions)


@pytest.mark.parametrize("netconf", [{"net-conf.json": "{not json"}, {}, {"net-conf.json": "{}"}])
def test_broken_flannel_config_is_an_assumption_not_a_crash(netconf: dict[str, str]) -> None:
    found = detect(_model(_ds("kube-flannel-ds"), _cm("kube-flannel-cfg", netconf)))
    assert found.info.cni.startswith("flannel-")
    assert any("flannel" in a.text for a in found.assumptions)


@pytest.mark.parametrize(("objs", "mode"), [
    ([_cm("kube-proxy", {"config.conf": "mode: \"\"\n"})], "iptables"),
    ([_cm("kube-proxy", {"config.conf": "kind: KubeProxyConfiguration\nmode: ipvs\n"})], "ipvs"),
    ([_cm("kube-proxy", {"config.conf": "mode: nftables\n"})], "nftables"),
    ([_ds("kube-proxy", args=["--proxy-mode=ipvs", "--v=2"])], "ipvs"),
    ([_ds("kube-proxy", args=["--v=2"])], "iptables"),
    ([_ds("cilium"), _cm("cilium-config", {"kube-proxy-replacement": "true"})], "cilium-ebpf"),
    ([], "unknown"),
])
def test_kube_proxy_mode(objs: list[dict[str, Any]], mode: str) -> None:
    found = detect(_model(*objs))
    assert found.info.kube_proxy_mode == mode
    assert (mode == "unknown") == any("kube-proxy mode unknown" in a.text for a in found.assumptions)


def test_basic_snapshot_detection() -> None:
    info = detect(load_snapshot(BASIC).model).info
    assert info.cni == "flannel-host-gw" and info.enforces_network_policy is False
    assert info.kube_proxy_mode == "iptables"
    assert info.pod_cidrs == ["10.244.1.0/24", "10.244.2.0/23"]  # the union: 2 and 3 are one /23
    assert info.service_cidrs == ["10.96.0.0/12"]  # from the kube-apiserver static pod's flags
    assert [str(ip) for ip in info.cluster_dns] == ["10.96.0.10"]


def test_snapshot_without_system_objects_degrades(tmp_path: Path) -> None:
    shutil.copytree(BASIC, tmp_path, dirs_exist_ok=True)
    (tmp_path / "kubernetes" / "system.yaml").unlink()
    pods = json.loads((tmp_path / "kubernetes" / "pods.json").read_text())
    pods["items"] = [p for p in pods["items"] if "kube-apiserver" not in p["metadata"]["name"]]
    (tmp_path / "kubernetes" / "pods.json").write_text(json.dumps(pods))
    found = detect(load_snapshot(tmp_path).model)
    assert (found.info.cni, found.info.enforces_network_policy, found.info.kube_proxy_mode) == (
        "unknown", None, "unknown")
    assert found.info.service_cidrs == ["10.96.0.0/25"]  # inferred from ClusterIPs, stated
    texts = " | ".join(a.text for a in found.assumptions)
    assert "CNI could not be detected" in texts and "inferred from the ClusterIPs" in texts


def test_detector_caches_until_inputs_change() -> None:
    model = _model(_ds("calico-node"))
    detector = Detector(model)
    first = detector.detect()
    assert detector.detect() is first
    model.apply("ADDED", "Pod", trim("Pod", {"metadata": {"name": "p", "namespace": "x"}}))
    assert detector.detect() is first  # pods do not change detection
    model.apply("DELETED", "DaemonSet", _ds("calico-node"))
    assert detector.detect().info.cni == "unknown"


def _pool(name: str, cidr: str, ipip: str = "Never", vxlan: str = "Never", nat: bool = True) -> dict[str, Any]:
    return {"kind": "IPPool", "apiVersion": "crd.projectcalico.org/v1", "metadata": {"name": name},
            "spec": {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan, "natOutgoing": nat, "blockSize": 26}}


@pytest.mark.parametrize(("pools", "mode"), [
    ([_pool("default-ipv4-ippool", "10.244.0.0/16")], "bgp"),
    ([_pool("default-ipv4-ippool", "10.244.0.0/16", vxlan="Always", nat=False)], "vxlan"),
    ([_pool("a", "10.244.0.0/16", ipip="CrossSubnet"), _pool("b", "10.245.0.0/16")], "mixed"),
])
def test_calico_ippools_are_read(pools: list[dict[str, Any]], mode: str) -> None:
    found = detect(_model(_ds("calico-node"), *pools))
    assert (found.info.cni, found.info.cni_mode) == ("calico", mode)
    read = found.info.cni_config["ippools"]
    assert [(p["cidr"], p["natOutgoing"]) for p in read] == [(p["spec"]["cidr"], p["spec"]["natOutgoing"])
                                                             for p in pools]
    assert not any("IPPool" in a.text for a in found.assumptions)


def test_calico_without_readable_pools_is_an_assumption() -> None:
    model = _model(_ds("calico-node"))
    model.set_unreadable("IPPool", None, "forbidden")
    found = detect(model)
    assert found.info.cni_mode == "bgp"
    assert any("IPPools are not readable (forbidden)" in a.text for a in found.assumptions)
    # without Calico a missing IPPool API is no news: no assumption at all
    other = _model(_ds("kube-flannel-ds"), _cm("kube-flannel-cfg", _netconf("host-gw")))
    other.set_unreadable("IPPool", None, "not found")
    assert not any("IPPool" in a.text for a in detect(other).assumptions)


ENI_CONF = {"version": "1", "vswitches": {"cn-hangzhou-h": ["vsw-pod1"]}, "security_groups": ["sg-eni1"],
            "service_cidr": "10.96.0.0/16"}


@pytest.mark.parametrize(("data", "mode", "unmodelled"), [
    ({"eni_conf": json.dumps(ENI_CONF), "10-terway.conf": json.dumps({"eniip_virtual_type": "Veth"})},
     "eniip-veth", False),
    ({"eni_conf": json.dumps(ENI_CONF), "10-terway.conf": json.dumps({"eniip_virtual_type": "IPVlan"})},
     "eniip-ipvlan", True),
    ({"eni_conf": json.dumps({**ENI_CONF, "security_groups": None, "security_group": "sg-eni1"})},
     "eniip-veth", False),
])
def test_terway_eni_config_is_read(data: dict[str, str], mode: str, unmodelled: bool) -> None:
    found = detect(_model(_ds("terway-eniip"), _cm("eni-config", data)))
    assert (found.info.cni, found.info.cni_mode) == ("terway", mode)
    assert found.info.cni_config["vswitches"] == {"cn-hangzhou-h": ["vsw-pod1"]}
    assert found.info.cni_config["security_groups"] == ["sg-eni1"]
    assert unmodelled == any("not modelled" in a.text for a in found.assumptions)


def test_terway_unreadable_eni_config_is_an_assumption() -> None:
    found = detect(_model(_ds("terway-eniip")))
    assert found.info.cni_mode == "eniip-veth"
    assert any("without a readable kube-system/eni-config" in a.text for a in found.assumptions)
    broken = detect(_model(_ds("terway-eniip"), _cm("eni-config", {"eni_conf": "{nope"})))
    assert any("eni_conf is not valid JSON" in a.text for a in broken.assumptions)


def _felix(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"kind": "FelixConfiguration", "apiVersion": "crd.projectcalico.org/v1", "metadata": {"name": name},
            "spec": spec}


def _calico_node(env: dict[str, str]) -> dict[str, Any]:
    ds = _ds("calico-node")
    ds["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return ds


def test_felix_configuration_is_read_with_felix_precedence() -> None:
    found = detect(_model(_calico_node({"FELIX_DEFAULTENDPOINTTOHOSTACTION": "ACCEPT"}),
                          _pool("default-ipv4-ippool", "10.244.0.0/16"),
                          _felix(defaultEndpointToHostAction="Drop", iptablesMarkMask=0xFF000000,
                                 chainInsertMode="Append", vxlanEnabled=False, logSeverityScreen="Info")))
    felix = found.info.cni_config["felix"]
    assert felix["settings"]["defaultEndpointToHostAction"] == "ACCEPT"  # the environment wins
    assert felix["source"]["defaultEndpointToHostAction"] == "env FELIX_DEFAULTENDPOINTTOHOSTACTION"
    assert (felix["settings"]["iptablesMarkMask"], felix["settings"]["chainInsertMode"]) == ("0xff000000", "Append")
    assert felix["source"]["iptablesFilterDenyAction"] == "felix default"
    assert not any("felix" in a.text.lower() for a in found.assumptions)  # all read, nothing unmodelled


def test_felix_settings_outside_the_iptables_chains_are_declared() -> None:
    found = detect(_model(_calico_node({}), _pool("p", "10.244.0.0/16"),
                          _felix(bpfEnabled=True, iptablesMarkMask=0xF0000, someFutureKnob="x"),
                          _felix("node.node-2", wireguardEnabled=True)))
    texts = {a.text: a.could_change_outcome for a in found.assumptions}
    assert any("bpfEnabled is on" in t and could for t, could in texts.items())
    assert any("wireguardEnabled is on (FelixConfiguration node.node-2)" in t and could for t, could in texts.items())
    assert any("fewer than the 5 mark bits" in t for t in texts)
    assert any("not interpreted: someFutureKnob" in t and not could for t, could in texts.items())
    assert found.info.cni_config["felix"]["node_configs"] == ["node.node-2"]


def test_felix_configuration_absent_is_stated_for_terway_policy() -> None:
    model = _model(_ds("terway-eniip"), _cm("eni-config", {"eni_conf": json.dumps(ENI_CONF),
                                                           "disable_network_policy": "false"}))
    model.set_unreadable("FelixConfiguration", None, "not found")
    found = detect(model)
    assert any("FelixConfiguration default is not readable (not found)" in a.text for a in found.assumptions)
    assert found.info.cni_config["felix"]["settings"]["defaultEndpointToHostAction"] == "Drop"


def test_felix_mark_mask_holding_kube_proxys_masquerade_bit_is_said() -> None:
    proxy = _cm("kube-proxy", {"config.conf": "mode: iptables\niptables:\n  masqueradeBit: 14\n"})
    clash = detect(_model(_calico_node({}), _pool("p", "10.244.0.0/16"), proxy, _felix(iptablesMarkMask=0xFC00)))
    assert any("includes kube-proxy's masquerade bit 0x4000" in a.text and a.could_change_outcome
               for a in clash.assumptions)
    fine = detect(_model(_calico_node({}), _pool("p", "10.244.0.0/16"), proxy, _felix()))
    assert not any("masquerade bit" in a.text for a in fine.assumptions)
