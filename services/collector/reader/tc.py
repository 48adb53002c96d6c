"""tc (traffic control) of the calling thread's namespace: every qdisc over rtnetlink
(RTM_GETQDISC, one dump), and the filters of the qdiscs that can hold them through `tc -j filter
show` (its JSON names actions, u32 keys and BPF programs the way the kernel reports them).

A namespace with only the default qdiscs (a pod's `noqueue` veth) costs one netlink dump and no
child process. Layouts: linux/rtnetlink.h (struct tcmsg), linux/pkt_sched.h (tc_htb_glob).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from services.collector.reader import netlink as nl
from services.collector.reader.commands import run
from shared.netstack import TcAction, TcFilter, TcQdisc, TcState

RTM_GETQDISC = 38
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_HTB_INIT = 2
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_HTB_GLOB = struct.Struct("=IIIII")  # version, rate2quantum, defcls, debug, direct_pkts
# qdiscs with a filter block of their own at the root handle (sch_api: cl_ops->tcf_block)
CLASSFUL = frozenset({"htb", "hfsc", "drr", "prio", "qfq", "ets", "cbq", "multiq", "atm", "dsmark"})


def handle(value: int) -> str:
    """iproute2's print form: major hex, colon, minor hex unless 0."""
    major, minor = value >> 16, value & 0xFFFF
    return f"{major:x}:" + (f"{minor:x}" if minor else "")


def _qdisc(body: bytes, names: dict[int, str]) -> TcQdisc:
    _, ifindex, hdl, parent, _ = _TCMSG.unpack_from(body)
    a = nl.attrs(body, _TCMSG.size)
    kind = nl.text(a.get(TCA_KIND)) or "?"
    where = "root" if parent == TC_H_ROOT else "ingress" if parent == TC_H_INGRESS else handle(parent)
    options: dict[str, Any] = {}
    if kind == "htb" and TCA_OPTIONS in a:
        glob = nl.attrs(a[TCA_OPTIONS]).get(TCA_HTB_INIT)
        if glob and len(glob) >= _HTB_GLOB.size:
            options["default"] = f"{hdl >> 16:x}:{_HTB_GLOB.unpack_from(glob)[2]:x}"
    return TcQdisc(dev=names.get(ifindex, str(ifindex)), kind=kind, handle=handle(hdl), parent=where,
                   options=options)


def read_qdiscs(names: dict[int, str]) -> list[TcQdisc]:
    with nl.Netlink(nl.NETLINK_ROUTE) as sock:
        return [_qdisc(body, names) for _, body in sock.request(RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, 0, 0,
                                                                                           0, 0))]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """tc's JSON repeats keys (u32 `match`, police `control_action`): keep every value, in order."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*(prev if isinstance(prev, list) and key in _REPEATED else [prev]), value]
        else:
            out[key] = [value] if key in _REPEATED else value
    return out


_REPEATED = frozenset({"match", "control_action"})


def _action(raw: dict[str, Any]) -> TcAction:
    control = [c.get("type", "?") if isinstance(c, dict) else str(c) for c in raw.get("control_action", [])]
    rest = {k: v for k, v in raw.items() if k not in ("kind", "control_action", "order")}
    return TcAction(kind=str(raw.get("kind", "?")), control=control, options=rest)


def parse_filters(text: str, dev: str, parent: str) -> list[TcFilter]:
    """`tc -j filter show dev DEV PARENT` → the filters that classify (u32's hash-table headers, the
    entries without a key, are structure only)."""
    out = []
    for entry in json.loads(text or "[]", object_pairs_hook=_pairs):
        options = entry.get("options")
        if not isinstance(options, dict):
            continue  # the per-priority header line
        kind = str(entry.get("kind", "?"))
        if kind == "u32" and "match" not in options and "flowid" not in options and "actions" not in options \
                and "link" not in options:
            continue  # a hash table ("ht divisor"), not a rule
        prog = options.get("prog")
        out.append(TcFilter(
            dev=dev, parent=parent, kind=kind, protocol=str(entry.get("protocol", "all")),
            pref=int(entry.get("pref", 0)), chain=int(entry.get("chain", 0)),
            handle=str(options.get("fh") or options.get("handle") or "") or None,
            classid=options.get("flowid") or options.get("classid"),
            keys=[m for m in options.get("match", []) if isinstance(m, dict)],
            link=options.get("link"),
            actions=[_action(a) for a in options.get("actions", []) if isinstance(a, dict)],
            bpf={"id": prog.get("id"), "name": prog.get("name") or options.get("bpf_name"),
                 "direct_action": bool(options.get("direct-action"))} if isinstance(prog, dict) else None,
            options={k: v for k, v in options.items() if k not in ("match", "actions", "prog")}))
    return out


def _filter_parents(qdiscs: list[TcQdisc]) -> list[tuple[str, str]]:
    """(device, tc parent argument) of every filter block: clsact/ingress directions and classful roots."""
    out = []
    for q in qdiscs:
        if q.kind == "clsact":
            out += [(q.dev, "ingress"), (q.dev, "egress")]
        elif q.kind == "ingress":
            out.append((q.dev, "ingress"))
        elif q.kind in CLASSFUL:
            out.append((q.dev, q.handle))
    return out


def read_tc(names: dict[int, str]) -> TcState:
    state = TcState(qdiscs=read_qdiscs(names))
    for dev, parent in _filter_parents(state.qdiscs):
        argv = ["tc", "-j", "filter", "show", "dev", dev] + ([parent] if parent in ("ingress", "egress") else
                                                             ["parent", parent])
        state.filters += parse_filters(run(argv), dev, parent)
    return state
