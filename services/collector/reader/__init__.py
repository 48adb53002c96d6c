"""Read one node's network state — its host namespace and every pod namespace on it — into
a `shared.netstack.NodeDump`. Read-only: nothing here changes kernel state.

Pod namespaces are discovered generically (docs/node-dump.md): every network namespace
reachable through /proc/*/ns/net and /var/run/netns whose veths all lead into this node's
host namespace (the pod side of a CNI veth pair) is a pod namespace. A namespace with veths
into a third namespace (another node on a lab underlay) or holding a bridge (a switch) is not. Pods are named by
matching the namespace's addresses against the pod IPs the caller passes.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from services.collector.reader import bpf, netfilter, netns, procfs, rtnl, sockets, tc
from services.collector.reader.facts import read_facts
from services.collector.reader.netns import NetnsRef
from shared.netstack import NetnsDump, NodeDump, NodeFacts

HOST_ID = "host"
HOST_KEY = "host"


def _read_rest(dump: NetnsDump, rt: rtnl.RtnlState) -> NetnsDump:
    """Everything but rtnetlink about one namespace; runs inside it."""
    parts: list[tuple[str, Callable[[], object]]] = [
        ("sysctls", lambda: procfs.read_sysctls([link.name for link in rt.links])),
        ("netfilter", lambda: netfilter.read_netfilter(dump.errors)),
        ("sockets", sockets.read_sockets),
        ("counters", procfs.read_counters),
        ("tc", lambda: tc.read_tc({link.index: link.name for link in rt.links})),
    ]
    for name, read in parts:
        try:
            setattr(dump, name, read())
        except Exception as exc:  # one unreadable part must not cost the rest of the namespace
            dump.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if dump.xdp:
        try:
            for prog in dump.xdp:
                prog.name, prog.constant = bpf.program(prog.prog_id)
        except Exception as exc:  # the attachment is known; only what the program does is not
            dump.errors.append(f"xdp: programs not described: {type(exc).__name__}: {exc}")
    return dump


def _new_dump(ns_id: str, ref: NetnsRef, rt: rtnl.RtnlState) -> NetnsDump:
    return NetnsDump(id=ns_id, inode=ref.inode, names=ref.names, links=rt.links, routes=rt.routes,
                     rules=rt.rules, neighbors=rt.neighbors, fdb=rt.fdb, xdp=rt.xdp)


def _read_pod(ref: NetnsRef, lookups: dict[str, str]) -> tuple[NetnsDump, rtnl.RtnlState] | None:
    """A pod namespace in full; None when it turns out not to be a pod of this node."""
    rt = rtnl.read_rtnl(lookups)
    if not _is_pod_of(rt):
        return None
    return _read_rest(_new_dump(ref.id, ref, rt), rt), rt


def _is_pod_of(rt: rtnl.RtnlState) -> bool:
    """Every veth leads into the host (or stays local), at least one does, and it holds no
    bridge (a lab's underlay switch namespace does)."""
    host_nsid = rt.nsids.get(HOST_KEY, -1)
    peers = set(rt.peer_nsids.values())
    return host_nsid >= 0 and peers == {host_nsid} and not any(link.kind == "bridge" for link in rt.links)


def _link_peers(host: NetnsDump, host_rt: rtnl.RtnlState, pods: list[tuple[NetnsDump, rtnl.RtnlState]],
                inode_by_key: dict[str, int]) -> None:
    """Fill peer_netns / peer_name / peer_missing across the namespaces of this dump."""
    by_id = {host.id: host, **{p.id: p for p, _ in pods}}
    id_by_nsid = {nsid: f"netns:{inode_by_key[key]}" for key, nsid in host_rt.nsids.items() if nsid >= 0}
    for ns, rt in [(host, host_rt), *pods]:
        pod_side = ns is not host
        for link in ns.links:
            if link.kind != "veth" or link.peer_index is None:
                continue
            nsid = rt.peer_nsids.get(link.index)
            if nsid is None:
                link.peer_netns = ns.id
            elif pod_side:
                link.peer_netns = HOST_ID if nsid == rt.nsids.get(HOST_KEY) else None
            else:
                link.peer_netns = id_by_nsid.get(nsid)
            peer_ns = by_id.get(link.peer_netns or "")
            if peer_ns is not None:
                peer = next((x for x in peer_ns.links if x.index == link.peer_index), None)
                link.peer_name = peer.name if peer else None
                link.peer_missing = peer is None


def _name_pods(pods: list[NetnsDump], pod_ips: dict[str, str]) -> None:
    wanted = {ipaddress.ip_address(ip): pod for ip, pod in pod_ips.items()}
    for ns in pods:
        for link in ns.links:
            for cidr in link.addresses:
                pod = wanted.get(ipaddress.ip_interface(cidr).ip)
                if pod and ns.pod is None:
                    ns.pod = pod


def warm_host_nft_cache(netns_name: str | None = None) -> bool:
    """Read the host namespace's nft rules into the cache unless cached (True: tools ran)."""
    return netns.run_in(netns.host_ref(netns_name), netfilter.warm_nft_cache)


def collect_node(node: str, netns_name: str | None = None, pod_ips: dict[str, str] | None = None,
                 workers: int = 4) -> NodeDump:
    """Dump `node`. netns_name: the named netns that is this node's host namespace (the lab);
    default the caller's own. pod_ips: pod IP → 'namespace/name', to name pod namespaces."""
    started = time.perf_counter()
    collected_at = datetime.now(UTC)
    host_ref = netns.host_ref(netns_name)
    candidates = netns.discover(host_ref.inode)
    lookups = {str(c.inode): c.path for c in candidates}
    # the host's links tell which namespaces to visit; its netfilter (a tool run that can take
    # a second) is then read alongside the pods rather than before them
    host_rt = netns.run_in(host_ref, lambda: rtnl.read_rtnl(lookups))
    host = _new_dump(HOST_ID, host_ref, host_rt)
    peer_nsids = set(host_rt.peer_nsids.values())
    linked = [c for c in candidates if host_rt.nsids.get(str(c.inode), -1) in peer_nsids]
    pod_lookups = {HOST_KEY: host_ref.path}
    # facts may run version commands (kubelet --version): they overlap the reads too
    tasks: list[tuple[NetnsRef, Callable[[], object]]] = [(host_ref, lambda: _read_rest(host, host_rt)),
                                                         (host_ref, read_facts), (host_ref, bpf.cgroup_programs)]
    tasks += [(ref, functools.partial(_read_pod, ref, pod_lookups)) for ref in linked]
    host_result, facts, cgroup_bpf, *pod_results = netns.run_many(tasks, workers=workers)
    if isinstance(host_result, BaseException):
        raise host_result
    errors: list[str] = []
    pods: list[tuple[NetnsDump, rtnl.RtnlState]] = []
    for ref, result in zip(linked, pod_results, strict=True):
        if isinstance(result, BaseException):
            errors.append(f"netns {ref.id} ({ref.path}): {type(result).__name__}: {result}")
        elif result is not None:
            pods.append(cast("tuple[NetnsDump, rtnl.RtnlState]", result))  # _read_pod's value (run_many: object)
    _link_peers(host, host_rt, pods, {str(c.inode): c.inode for c in candidates})
    pod_dumps = [p for p, _ in pods]
    _name_pods(pod_dumps, pod_ips or {})
    dump = NodeDump(node=node, collected_at=collected_at, host=host, pods=pod_dumps, errors=errors)
    if isinstance(cgroup_bpf, BaseException):  # stays null: "not read", which the walk declares
        errors.append(f"cgroup_bpf: {type(cgroup_bpf).__name__}: {cgroup_bpf}")
    else:
        dump.cgroup_bpf = cgroup_bpf  # type: ignore[assignment]
    if isinstance(facts, NodeFacts):
        dump.facts = facts
    else:  # facts are informative only
        errors.append(f"facts: {facts}")
    dump.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    return dump


def node_namespaces(netns_name: str | None = None) -> list[tuple[str, NetnsRef, set[str]]]:
    """(id, ref, addresses) of this node's host namespace and each of its pod namespaces — the same
    discovery as a collection, links and addresses only (what a live probe and its tracer need)."""
    host_ref = netns.host_ref(netns_name)
    candidates = netns.discover(host_ref.inode)
    host_rt = netns.run_in(host_ref, lambda: rtnl.read_rtnl({str(c.inode): c.path for c in candidates}))
    peer_nsids = set(host_rt.peer_nsids.values())
    linked = [c for c in candidates if host_rt.nsids.get(str(c.inode), -1) in peer_nsids]
    lookups = {HOST_KEY: host_ref.path}
    results = netns.run_many([(ref, functools.partial(rtnl.read_rtnl, lookups)) for ref in linked])
    out = [(HOST_ID, host_ref, _addresses(host_rt))]
    for ref, rt in zip(linked, results, strict=True):
        if isinstance(rt, rtnl.RtnlState) and _is_pod_of(rt):
            out.append((ref.id, ref, _addresses(rt)))
    return out


def _addresses(rt: rtnl.RtnlState) -> set[str]:
    return {str(ipaddress.ip_interface(a).ip) for link in rt.links for a in link.addresses}
