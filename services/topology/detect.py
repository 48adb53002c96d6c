"""Cluster detection: CNI (and whether it enforces NetworkPolicy), kube-proxy mode, CIDRs, DNS.

Everything is read from objects (DaemonSets, ConfigMaps, Nodes, Services, the
kube-apiserver static pod); what cannot be determined becomes an Assumption and a
conservative default, never an exception (KubeSkoop aborts here: its issues #313, #322).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import collapse_addresses, ip_network
from typing import Any

import yaml

from services.topology.model import ClusterModel, Obj, service_cluster_ips
from shared.schemas import Assumption
from shared.topology import ClusterInfo

STAGE = "topology"
POLICY_AGENTS = ("kube-router", "calico-node", "canal", "cilium", "antrea-agent", "weave-net")
DNS_SERVICE_KEYS = ("kube-system/kube-dns", "kube-system/coredns")
_SERVICE_RANGE_FLAG = re.compile(r"--service-cluster-ip-range=(\S+)")
_PROXY_MODE_FLAG = re.compile(r"--proxy-mode=(\S*)")


@dataclass
class Detection:
    info: ClusterInfo
    assumptions: list[Assumption] = field(default_factory=list)


def _assume(out: Detection, text: str, could_change: bool = True) -> None:
    out.assumptions.append(Assumption(stage=STAGE, text=text, could_change_outcome=could_change))


def _images(ds: Obj) -> str:
    containers = ((((ds.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
    return " ".join(f"{c.get('name', '')} {c.get('image', '')}" for c in containers)


def _container_args(ds: Obj) -> str:
    containers = ((((ds.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
    return " ".join(" ".join(map(str, (c.get("command") or []) + (c.get("args") or []))) for c in containers)


def _daemonset(model: ClusterModel, *needles: str) -> Obj | None:
    """A DaemonSet whose name (or a container image) names one of `needles`."""
    for key, ds in sorted(model.objects["DaemonSet"].items()):
        name = key.split("/", 1)[-1]
        if any(n == name or name.startswith(n + "-") or f"/{n}:" in _images(ds) for n in needles):
            return ds
    return None


def _config_data(model: ClusterModel, *names: str) -> dict[str, str] | None:
    for key, cm in sorted(model.objects["ConfigMap"].items()):
        if key.split("/", 1)[-1] in names:
            return {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
    return None


def _flannel_backend(data: dict[str, str] | None, out: Detection) -> str:
    if data is None or "net-conf.json" not in data:
        _assume(out, "flannel found but its net-conf.json is not available: backend assumed vxlan")
        return "vxlan"
    try:
        backend = (json.loads(data["net-conf.json"]).get("Backend") or {}).get("Type")
    except ValueError as exc:
        _assume(out, f"flannel net-conf.json is not valid JSON ({exc}): backend assumed vxlan")
        return "vxlan"
    if not backend:
        _assume(out, "flannel net-conf.json sets no Backend.Type: flannel's default udp backend assumed")
        return "udp"
    return str(backend).lower()


TERWAY_DATAPATHS = {"veth": "veth", "ipvlan": "ipvlan", "datapathv2": "datapathv2"}


def _terway_config(ds: Obj, data: dict[str, str] | None, out: Detection) -> None:
    """Terway's mode (the DaemonSet's daemon mode, the CNI's eniip_virtual_type) and its eni_conf: the pod
    vSwitches per zone and the security groups its ENIs get (which may differ from the nodes')."""
    info = out.info
    exclusive = "ENIOnly" in _container_args(ds) or (ds.get("metadata") or {}).get("name") == "terway-eni"
    if data is None:
        info.cni_mode = "eni" if exclusive else "eniip-veth"
        _assume(out, f"terway found without a readable kube-system/eni-config: mode assumed {info.cni_mode}, pod "
                "vSwitches and ENI security groups unknown")
        return
    conf: dict[str, Any] = {}
    try:
        conf = json.loads(data.get("eni_conf") or "{}")
    except ValueError as exc:
        _assume(out, f"terway eni-config eni_conf is not valid JSON ({exc}): pod vSwitches and ENI security "
                "groups unknown")
    virtual = "veth"
    for key, text in data.items():
        if key.endswith(".conf") or key.endswith(".conflist"):
            try:
                virtual = str(json.loads(text).get("eniip_virtual_type") or virtual).lower()
            except (ValueError, AttributeError):
                _assume(out, f"terway eni-config {key} is not a JSON object: the veth datapath is assumed")
    info.cni_mode = "eni" if exclusive else f"eniip-{TERWAY_DATAPATHS.get(virtual, virtual)}"
    groups = conf.get("security_groups") or ([conf["security_group"]] if conf.get("security_group") else [])
    info.cni_config = {"vswitches": conf.get("vswitches") or {}, "security_groups": groups,
                       "service_cidr": conf.get("service_cidr")}
    if info.cni_mode not in ("eniip-veth", "eni"):
        _assume(out, f"terway {info.cni_mode}: only the veth datapath (policy routing to the ENI) and exclusive "
                "ENIs are simulated; IPVLAN/eBPF redirects are not modelled")


def _calico_pools(model: ClusterModel, out: Detection) -> None:
    """Calico's IPPools (encapsulation, natOutgoing, CIDRs): the pod network and how it leaves the node."""
    info = out.info
    reason = model.unreadable.get(("IPPool", None))
    pools = [p for p in model.objects["IPPool"].values() if not (p.get("spec") or {}).get("disabled")]
    if reason is not None or not pools:
        info.cni_mode = "bgp"
        _assume(out, f"calico found but its IPPools are {'not readable (' + reason + ')' if reason else 'absent'}:"
                " BGP without encapsulation and natOutgoing assumed")
        return
    summary = []
    for pool in pools:
        spec = pool.get("spec") or {}
        ipip, vxlan = spec.get("ipipMode") or "Never", spec.get("vxlanMode") or "Never"
        encap = "vxlan" if vxlan != "Never" else "ipip" if ipip != "Never" else "none"
        summary.append({"name": (pool.get("metadata") or {}).get("name"), "cidr": spec.get("cidr"),
                        "encapsulation": encap, "natOutgoing": bool(spec.get("natOutgoing")),
                        "blockSize": spec.get("blockSize")})
    encaps = {str(p["encapsulation"]) for p in summary}
    only = next(iter(encaps)) if len(encaps) == 1 else "mixed"
    info.cni_mode = "bgp" if only == "none" else only
    info.cni_config = {"ippools": summary}  # the walk follows whatever the nodes hold; this says what to expect


# FelixConfiguration fields that shape felix's iptables rules: the walk follows the collected rules they produce
# (value when nothing sets them: felix's config_params.go defaults)
FELIX_RULE_SETTINGS: dict[str, Any] = {
    "chainInsertMode": "Insert", "defaultEndpointToHostAction": "Drop", "iptablesMarkMask": 0xFFFF0000,
    "iptablesFilterAllowAction": "Accept", "iptablesFilterDenyAction": "Drop", "ipipEnabled": None,
    "vxlanEnabled": None, "vxlanPort": 4789, "vxlanVNI": 4096, "interfacePrefix": "cali", "iptablesBackend": "Auto",
}
# fields that move packets out of the iptables chains the walk reads: declared when on
FELIX_UNMODELLED = {
    "bpfEnabled": "felix's eBPF dataplane (tc programs replace its iptables chains and kube-proxy) is not simulated",
    "nftablesMode": "felix's nftables dataplane is read as plain nftables: its drops are not mapped to policies",
    "wireguardEnabled": "WireGuard encryption between nodes (wireguard.cali) is not simulated",
}
FELIX_INERT = frozenset({  # logging, reporting, health and metrics: no effect on a packet
    "logSeverityScreen", "logSeverityFile", "logSeveritySys", "logFilePath", "logPrefix", "reportingInterval",
    "reportingTTL", "healthEnabled", "healthHost", "healthPort", "prometheusMetricsEnabled",
    "prometheusMetricsPort", "prometheusGoMetricsEnabled", "prometheusProcessMetricsEnabled", "bpfLogLevel",
    "usageReportingEnabled", "floatingIPs", "xdpEnabled", "debugMemoryProfilePath",
})
_FELIX_ENV_ALIASES = {"ipipEnabled": "IPINIPENABLED"}  # felix's parameter is IpInIpEnabled


def _env(ds: Obj) -> dict[str, str]:
    containers = ((((ds.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
    return {str(e.get("name")): str(e.get("value")) for c in containers for e in c.get("env") or []
            if e.get("name") and "value" in e}


def _on(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "enabled", "1")


def _felix_config(model: ClusterModel, ds: Obj, out: Detection) -> None:
    """felix's effective settings (its environment over FelixConfiguration `default` over its defaults): the
    policy chains the walk reads follow from them; what leaves those chains (eBPF, nftables, WireGuard) is said."""
    reason = model.unreadable.get(("FelixConfiguration", None))
    configs = {str((c.get("metadata") or {}).get("name")): c.get("spec") or {}
               for c in model.objects["FelixConfiguration"].values()}
    spec = configs.get("default")
    if reason is not None or spec is None:
        _assume(out, f"FelixConfiguration default is {'not readable (' + reason + ')' if reason else 'absent'}: "
                "felix's defaults and its environment assumed (the walk follows the collected rules)",
                could_change=False)
    env = _env(ds)
    effective: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key in (*FELIX_RULE_SETTINGS, *FELIX_UNMODELLED):
        env_name = "FELIX_" + _FELIX_ENV_ALIASES.get(key, key.upper())
        if env_name in env:
            effective[key], source[key] = env[env_name], f"env {env_name}"
        elif spec is not None and key in spec:
            effective[key], source[key] = spec[key], "FelixConfiguration default"
        elif key in FELIX_RULE_SETTINGS:
            effective[key], source[key] = FELIX_RULE_SETTINGS[key], "felix default"
    mask = effective.get("iptablesMarkMask")
    try:
        bits = bin(int(str(mask), 0) & 0xFFFFFFFF).count("1")
        effective["iptablesMarkMask"] = hex(int(str(mask), 0))
    except ValueError:
        bits = 0
    if bits < 5:
        _assume(out, f"felix iptablesMarkMask {mask!r} leaves fewer than the 5 mark bits felix allocates: felix "
                "does not start with it, its policy chains may be stale")
    for key, why in FELIX_UNMODELLED.items():
        on = [name for name, cfg in configs.items() if _on(cfg.get(key))]
        if _on(effective.get(key)) or on:
            where = f" ({source.get(key) or ', '.join('FelixConfiguration ' + n for n in on)})"
            _assume(out, f"felix {key} is on{where}: {why}")
    known = {*FELIX_RULE_SETTINGS, *FELIX_UNMODELLED, *FELIX_INERT}
    unread = sorted({k for cfg in configs.values() for k in cfg if k not in known})
    if unread:
        _assume(out, f"FelixConfiguration fields not interpreted: {', '.join(unread)} (the walk follows the "
                "iptables rules felix programs with them)", could_change=False)
    per_node = sorted(n for n in configs if n.startswith("node."))
    out.info.cni_config["felix"] = {"settings": effective, "source": source,
                                    **({"node_configs": per_node} if per_node else {})}


def _felix_marks_vs_kube_proxy(model: ClusterModel, out: Detection) -> None:
    """felix clears its mark bits in cali-FORWARD/INPUT/OUTPUT: a mask holding kube-proxy's masquerade bit
    (KubeProxyConfiguration iptables.masqueradeBit, 14) erases kube-proxy's mark before its POSTROUTING reads it."""
    settings = (out.info.cni_config.get("felix") or {}).get("settings") or {}
    try:
        mask = int(str(settings.get("iptablesMarkMask")), 0)
    except ValueError:
        return
    bit = 14
    conf = (_config_data(model, "kube-proxy") or {}).get("config.conf")
    if conf:
        try:
            bit = int(((yaml.safe_load(conf) or {}).get("iptables") or {}).get("masqueradeBit", 14) or 14)
        except (yaml.YAMLError, ValueError, AttributeError):
            return
    used = [1 << i for i in range(32) if mask >> i & 1][:5]  # accept, pass, drop, scratch-0, scratch-1
    if 1 << bit in used:
        _assume(out, f"felix iptablesMarkMask {hex(mask)} includes kube-proxy's masquerade bit {hex(1 << bit)}: "
                "felix clears it, so kube-proxy may not masquerade what it marked (the walk follows the marks)")


def _detect_cni(model: ClusterModel, out: Detection) -> None:
    info = out.info
    terway = _daemonset(model, "terway", "terway-eniip", "terway-eni", "terway-eniip-v2")
    calico = _daemonset(model, "calico-node")
    cilium = _daemonset(model, "cilium")
    canal = _daemonset(model, "canal")
    flannel = _daemonset(model, "kube-flannel-ds", "kube-flannel", "flannel")
    agent = next((ds for ds in (_daemonset(model, a) for a in POLICY_AGENTS) if ds is not None), None)
    if terway is not None:
        info.cni = "terway"
        data = _config_data(model, "eni-config")
        _terway_config(terway, data, out)
        flag = (data or {}).get("disable_network_policy")
        if info.cni_mode == "eni":  # Terway documents no NetworkPolicy support for pods on exclusive ENIs
            info.enforces_network_policy = False
        elif flag is None:
            info.enforces_network_policy = True
            _assume(out, "terway found without eni-config disable_network_policy: policies assumed enforced")
        else:
            info.enforces_network_policy = flag.strip().lower() != "true"
        if info.enforces_network_policy:  # Terway's policy container is felix in policy-only mode
            _felix_config(model, terway, out)
    elif cilium is not None:
        info.cni = "cilium"
        mode = (_config_data(model, "cilium-config") or {}).get("enable-policy", "default")
        info.enforces_network_policy = mode != "never"
    elif calico is not None and canal is None and flannel is None:
        info.cni = "calico"
        info.enforces_network_policy = True
        _calico_pools(model, out)
        _felix_config(model, calico, out)
    elif flannel is not None or canal is not None:
        data = _config_data(model, "kube-flannel-cfg", "canal-config", "flannel-cfg")
        info.cni = f"flannel-{_flannel_backend(data, out)}"
        info.enforces_network_policy = (canal is not None or calico is not None) or agent is not None
    else:
        info.cni = "unknown"
        info.enforces_network_policy = None
        _assume(out, "the CNI could not be detected (no known CNI DaemonSet): NetworkPolicies are assumed "
                "to be enforced")


def _detect_kube_proxy(model: ClusterModel, out: Detection) -> None:
    data = _config_data(model, "kube-proxy")
    if data and "config.conf" in data:
        try:
            conf = yaml.safe_load(data["config.conf"]) or {}
            out.info.kube_proxy_mode = str(conf.get("mode") or "iptables")  # "" is iptables
            return
        except yaml.YAMLError as exc:
            _assume(out, f"kube-proxy config.conf cannot be parsed ({exc})")
    ds = _daemonset(model, "kube-proxy")
    if ds is not None:
        match = _PROXY_MODE_FLAG.search(_container_args(ds))
        out.info.kube_proxy_mode = (match.group(1) if match else "") or "iptables"
        return
    cilium_cfg = _config_data(model, "cilium-config") or {}
    if cilium_cfg.get("kube-proxy-replacement") in ("true", "strict"):
        out.info.kube_proxy_mode = "cilium-ebpf"
        return
    out.info.kube_proxy_mode = "unknown"
    _assume(out, "kube-proxy mode unknown (no kube-proxy ConfigMap or DaemonSet): the Service dataplane is "
            "read from the collected rules only")


def _supernet(addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> list[str]:
    """Smallest prefix per family covering all addresses (a lower bound of the service CIDR)."""
    nets = []
    for version in (4, 6):
        ips = sorted(int(a) for a in addresses if a.version == version)
        if not ips:
            continue
        bits = 32 if version == 4 else 128
        prefix = bits - (ips[0] ^ ips[-1]).bit_length()
        cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        nets.append(str(cls((ips[0], prefix), strict=False)))
    return nets


def _detect_node_addresses(model: ClusterModel, out: Detection) -> None:
    """Every node's addresses: a route through a node off the path must be told from one to nowhere."""
    for node in model.objects["Node"].values():
        name = (node.get("metadata") or {}).get("name")
        addresses = [a.get("address") for a in (node.get("status") or {}).get("addresses") or []
                     if a.get("type") in ("InternalIP", "ExternalIP")]
        valid = [a for a in addresses if isinstance(a, str) and _is_ip(a)]
        if name and valid:
            out.info.node_addresses[name] = [ipaddress.ip_address(a) for a in valid]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _union(cidrs: set[str]) -> list[str]:
    """The pod network as the fewest CIDRs covering exactly the nodes' podCIDRs (5,000 adjacent /24s are a few
    supernets: every topology event carries this). A podCIDR that is no network is left out, as the walk would."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for cidr in cidrs:
        try:
            net = ip_network(cidr, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return [str(n) for n in collapse_addresses(v4)] + [str(n) for n in collapse_addresses(v6)]


def _detect_cidrs(model: ClusterModel, out: Detection) -> None:
    info = out.info
    pod_cidrs: set[str] = set()
    for node in model.objects["Node"].values():
        spec = node.get("spec") or {}
        pod_cidrs.update(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    info.pod_cidrs = _union(pod_cidrs)
    if not pod_cidrs:
        _assume(out, "nodes carry no podCIDR (CNI-managed IPAM): pod addresses are known only from pods",
                could_change=False)
    for key in model.pods_by_component.keys_of("kube-apiserver"):
        pod = model.objects["Pod"].get(key) or {}
        for container in (pod.get("spec") or {}).get("containers") or []:
            match = _SERVICE_RANGE_FLAG.search(" ".join(map(str, (container.get("command") or [])
                                                            + (container.get("args") or []))))
            if match:
                info.service_cidrs = match.group(1).split(",")
                return
    cluster_ips = [ip for svc in model.objects["Service"].values() for ip in service_cluster_ips(svc)]
    info.service_cidrs = _supernet(cluster_ips)
    if cluster_ips:
        _assume(out, f"service CIDR inferred from the ClusterIPs in use: {', '.join(info.service_cidrs)}",
                could_change=False)
    else:
        _assume(out, "service CIDR unknown (no ClusterIPs, no kube-apiserver flags)", could_change=False)


def _detect_dns(model: ClusterModel, out: Detection) -> None:
    for key in DNS_SERVICE_KEYS:
        svc = model.get("Service", key)
        if svc is not None:
            out.info.cluster_dns = service_cluster_ips(svc)
            return
    for svc in model.objects["Service"].values():
        labels = (svc.get("metadata") or {}).get("labels") or {}
        if (svc.get("metadata") or {}).get("namespace") == "kube-system" and labels.get("k8s-app") in (
                "kube-dns", "coredns"):
            out.info.cluster_dns = service_cluster_ips(svc)
            return
    _assume(out, "no cluster DNS Service found in kube-system", could_change=False)


def _detect_unreadable(model: ClusterModel, out: Detection) -> None:
    for (kind, namespace), reason in sorted(model.unreadable.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        if kind in ("IPPool", "FelixConfiguration"):  # absent without Calico: Calico's detection states it
            continue
        if kind == "PodEIP" and reason == "not found":  # no ack-extend-network-controller: no pod has an EIP
            continue
        where = f" in {namespace}" if namespace else ""
        _assume(out, f"cannot read {kind}s{where}: {reason} — CNI detection may be incomplete")


class Detector:
    """Caches the detection until one of the kinds it reads changes (a diagnosis re-uses it)."""

    _KINDS = ("Node", "Service", "DaemonSet", "ConfigMap", "IPPool", "FelixConfiguration")

    def __init__(self, model: ClusterModel) -> None:
        self.model = model
        self._stamp: tuple[int, ...] | None = None
        self._cached: Detection | None = None

    def detect(self) -> Detection:
        with self.model.lock:
            stamp = (*(self.model.generation[k] for k in self._KINDS),
                     len(self.model.pods_by_component.keys_of("kube-apiserver")))
            if self._cached is None or stamp != self._stamp:
                self._cached, self._stamp = detect(self.model), stamp
            return self._cached


def detect(model: ClusterModel) -> Detection:
    out = Detection(ClusterInfo())
    with model.lock:
        _detect_unreadable(model, out)
        _detect_cni(model, out)
        _detect_kube_proxy(model, out)
        _felix_marks_vs_kube_proxy(model, out)
        _detect_cidrs(model, out)
        _detect_node_addresses(model, out)
        _detect_dns(model, out)
    return out

