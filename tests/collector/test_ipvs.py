"""IPVS readers on recorded dumps (this kernel has no IPVS): `ipvsadm-save -n` text as
kube-proxy's IPVS mode leaves it, and the same state as a netlink dump in JSON."""

from __future__ import annotations

import pytest

from services.collector.reader.ipvs import parse_ipvsadm_save, parse_netlink_dump

# recorded from a kube-proxy IPVS-mode node (ClusterIP kubernetes, kube-dns tcp+udp with
# ClientIP affinity, a NodePort on the node address, an fwmark service, an IPv6 service)
IPVSADM_SAVE = """\
-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.0.10:6443 -m -w 1
-A -t 10.96.0.10:53 -s rr -p 10800
-a -t 10.96.0.10:53 -r 10.244.0.2:53 -m -w 1
-a -t 10.96.0.10:53 -r 10.244.1.3:53 -m -w 1
-A -u 10.96.0.10:53 -s rr
-a -u 10.96.0.10:53 -r 10.244.0.2:53 -m -w 1
-A -t 192.168.0.11:30080 -s rr
-a -t 192.168.0.11:30080 -r 10.244.1.7:8080 -m -w 0
-A -f 100 -s wlc
-a -f 100 -r 10.244.1.7:0 -g -w 2
-A -t [fd00:10:96::a]:80 -s rr
-a -t [fd00:10:96::a]:80 -r [fd00:10:244::7]:8080 -m -w 1
"""

NETLINK_DUMP = [
    {"service": {"IPVS_SVC_ATTR_AF": 2, "IPVS_SVC_ATTR_PROTOCOL": 6, "IPVS_SVC_ATTR_ADDR": "10.96.0.10",
                 "IPVS_SVC_ATTR_PORT": 53, "IPVS_SVC_ATTR_SCHED_NAME": "rr", "IPVS_SVC_ATTR_TIMEOUT": 10800,
                 "IPVS_SVC_ATTR_FLAGS": {"flags": 1, "mask": 0xFFFFFFFF}},
     "dests": [{"IPVS_DEST_ATTR_ADDR": "10.244.0.2", "IPVS_DEST_ATTR_PORT": 53, "IPVS_DEST_ATTR_FWD_METHOD": 0,
                "IPVS_DEST_ATTR_WEIGHT": 1},
               {"IPVS_DEST_ATTR_ADDR": "10.244.1.3", "IPVS_DEST_ATTR_PORT": 53, "IPVS_DEST_ATTR_FWD_METHOD": 0,
                "IPVS_DEST_ATTR_WEIGHT": 1}]},
    {"service": {"af": 2, "protocol": 17, "addr": "10.96.0.10", "port": 53, "sched_name": "rr",
                 "flags": {"flags": 0, "mask": 0xFFFFFFFF}, "timeout": 0},
     "dests": [{"addr": "10.244.0.2", "port": 53, "fwd_method": 0, "weight": 1}]},
    {"service": {"af": 2, "fwmark": 100, "sched_name": "wlc"},
     "dests": [{"addr": "10.244.1.7", "port": 0, "fwd_method": 3, "weight": 2}]},
]


def test_ipvsadm_save() -> None:
    services = {(s["protocol"], s["address"], s["port"], s["fwmark"]): s for s in parse_ipvsadm_save(IPVSADM_SAVE)}
    assert len(services) == 6
    dns = services[("tcp", "10.96.0.10", 53, None)]
    assert dns["scheduler"] == "rr" and dns["persistent_s"] == 10800
    assert [(r["address"], r["port"], r["forward"], r["weight"]) for r in dns["reals"]] == [
        ("10.244.0.2", 53, "masq", 1), ("10.244.1.3", 53, "masq", 1)]
    assert services[("udp", "10.96.0.10", 53, None)]["persistent_s"] is None
    assert services[("tcp", "192.168.0.11", 30080, None)]["reals"][0]["weight"] == 0  # a drained backend
    fw = services[("fwmark", None, None, 100)]
    assert fw["reals"] == [{"address": "10.244.1.7", "port": 0, "forward": "route", "weight": 2}]
    v6 = services[("tcp", "fd00:10:96::a", 80, None)]
    assert v6["reals"][0]["address"] == "fd00:10:244::7" and v6["reals"][0]["port"] == 8080


def test_netlink_dump_matches_the_save_text() -> None:
    from_netlink = parse_netlink_dump(NETLINK_DUMP)
    from_save = parse_ipvsadm_save(IPVSADM_SAVE)
    key = lambda s: (s["protocol"], s["address"], s["port"], s["fwmark"])  # noqa: E731
    saved = {key(s): s for s in from_save}
    for entry in from_netlink:
        assert entry == saved[key(entry)], key(entry)


def test_real_server_without_service_is_rejected() -> None:
    with pytest.raises(ValueError, match="before its virtual server"):
        parse_ipvsadm_save("-a -t 10.96.0.1:443 -r 10.0.0.1:443 -m -w 1\n")
