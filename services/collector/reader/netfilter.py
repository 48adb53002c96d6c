"""iptables (both backends), nftables, ipsets and IPVS of the calling thread's namespace.

Read-only by construction: only the `-save`/`list` tools run, and only when the kernel
says there is something to read — legacy tables from /proc/thread-self/net/ip_tables_names,
nftables tables over netlink — so an empty pod namespace costs no child process and no
table is ever instantiated (python-iptables would create empty legacy tables).

Tables that iptables-nft owns (family ip/ip6, named filter/nat/mangle/raw/security) are
read through `iptables-nft-save` only and listed in `nft_tables_via_iptables`; `nft -j`
covers every other table. That avoids dumping a kube-proxy ruleset twice (its JSON form is
~3x the save text and takes longer than the rest of the node).

`iptables-nft-save` needs ~1.3 s for 5,000 kube-proxy Services, so what the nft tools print
is kept per namespace and reused while nftables' ruleset generation id (NFT_MSG_GETGEN; the
kernel bumps it on every committed ruleset change) is unchanged — see `NftCache`.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.collector.reader import commands, ipvs
from services.collector.reader import netlink as nl
from shared.netstack import IptablesState, NetfilterState

XTABLES = {"filter", "nat", "mangle", "raw", "security"}
NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
LEGACY_NAMES = {"ip": "/proc/thread-self/net/ip_tables_names", "ip6": "/proc/thread-self/net/ip6_tables_names"}
SAVE_TOOLS = {("ip", "legacy"): "iptables-legacy-save", ("ip", "nft"): "iptables-nft-save",
              ("ip6", "legacy"): "ip6tables-legacy-save", ("ip6", "nft"): "ip6tables-nft-save"}

# nfnetlink (linux/netfilter/nfnetlink.h, nf_tables.h, ipset/ip_set.h)
NFNL_SUBSYS_IPSET, NFNL_SUBSYS_NFTABLES = 6, 10
NFT_MSG_GETTABLE, NFT_MSG_GETGEN = 1, 16
NFTA_TABLE_NAME, NFTA_GEN_ID = 1, 1
IPSET_CMD_LIST, IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL = 7, 1, 6
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id


def has_rules(save: str) -> bool:
    """A rule, or a built-in chain whose policy is not ACCEPT, changes what packets see."""
    for line in save.splitlines():
        if line.startswith("-A "):
            return True
        if line.startswith(":") and len(parts := line.split()) > 1 and parts[1] not in ("ACCEPT", "-"):
            return True
    return False


def _legacy_tables(family: str) -> list[str]:
    try:
        return Path(LEGACY_NAMES[family]).read_text().split()
    except OSError:  # no legacy x_tables in this kernel
        return []


def _nfnl(sock: nl.Netlink, subsys: int, msg: int, family: int = 0, payload: bytes = b"",
          dump: bool = True) -> list[tuple[int, nl.Attrs]]:
    """(nfgen family, attributes) of each reply to one nfnetlink request."""
    request = (subsys << 8) | msg, _NFGENMSG.pack(family, 0, 0) + payload
    replies = sock.dump(*request) if dump else sock.request(*request, dump=False)
    return [(body[0], nl.attrs(body, _NFGENMSG.size)) for _, body in replies]


def nft_generation(sock: nl.Netlink) -> int | None:
    replies = _nfnl(sock, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, dump=False)
    return nl.be32(replies[0][1].get(NFTA_GEN_ID)) if replies else None


def _nft_tables(sock: nl.Netlink) -> list[tuple[str, str]]:
    return [(NFPROTO.get(family, str(family)), nl.text(a.get(NFTA_TABLE_NAME)) or "")
            for family, a in _nfnl(sock, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE)]


def _has_ipsets(sock: nl.Netlink) -> bool:
    protocol = struct.pack("=HHB3x", 5, IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
    replies = sock.request((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST,
                           _NFGENMSG.pack(socket.AF_INET, 0, 0) + protocol)
    return next(replies, None) is not None  # every reply describes a set


@dataclass
class NftRead:
    """What the nft-side tools printed for one namespace."""

    iptables: IptablesState | None = None
    ip6tables: IptablesState | None = None
    nft_ruleset: dict[str, Any] | None = None
    via_iptables: list[str] = field(default_factory=list)


class NftCache:
    """The latest NftRead per namespace (by netns cookie), valid for one version: the nft
    ruleset generation and the legacy table names.

    The generation id changes on every committed nftables change, including every
    iptables-nft-restore / iptables-nft -A; legacy table names are in the version because
    iptables-nft-save mentions legacy tables it sees. Counters are not part of the
    generation: cached save text shows the built-in chains' packet counters as they were at
    the read (nothing downstream uses them). One entry per namespace, so an old version is
    dropped as soon as a new one is read (a kube-proxy dump is MBs)."""

    def __init__(self, namespaces: int = 64, stripes: int = 16) -> None:
        self._entries: OrderedDict[int, tuple[tuple[object, ...], NftRead]] = OrderedDict()
        self._size = namespaces
        self._lock = threading.Lock()
        self._reading = tuple(threading.Lock() for _ in range(stripes))

    def reading(self, cookie: int) -> threading.Lock:
        """Held while a namespace's rules are read: a second reader of the same rules (the
        agent's read-ahead and a request) waits for the first instead of repeating it."""
        return self._reading[cookie % len(self._reading)]

    def get(self, cookie: int, version: tuple[object, ...]) -> NftRead | None:
        with self._lock:
            found = self._entries.get(cookie)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(cookie)
            return found[1]

    def put(self, cookie: int, version: tuple[object, ...], value: NftRead) -> None:
        with self._lock:
            self._entries[cookie] = (version, value)
            self._entries.move_to_end(cookie)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


NFT_CACHE = NftCache()


def _save(family: str, backend: str, errors: list[str]) -> IptablesState | None:
    tool = SAVE_TOOLS[(family, backend)]
    if not commands.available(tool):
        errors.append(f"{tool} not installed")
        return None
    try:
        save = commands.run([tool])
    except commands.CommandError as exc:
        errors.append(str(exc))
        return None
    return IptablesState(backend=backend, save=save, has_rules=has_rules(save))


def _read_nft_side(tables: list[tuple[str, str]] | None, errors: list[str]) -> NftRead:
    """tables None: nf_tables could not be listed, so ask the tools anyway."""
    read = NftRead()
    for family in ("ip", "ip6"):
        if tables is None or any(f == family and name in XTABLES for f, name in tables):
            setattr(read, f"{family}tables", _save(family, "nft", errors))
    read.nft_ruleset, read.via_iptables = _read_nft(tables, errors)
    return read


@dataclass
class _Probe:
    """What netlink and /proc tell about the namespace before any tool runs."""

    nft_tables: list[tuple[str, str]] | None
    legacy: dict[str, list[str]]
    ipsets: bool
    cookie: int | None
    version: tuple[object, ...] | None  # None: not worth caching, or no generation to key it


def _probe(errors: list[str]) -> _Probe:
    nft_tables: list[tuple[str, str]] | None = None
    generation = None
    with nl.Netlink(nl.NETLINK_NETFILTER) as sock:
        try:  # the generation first: a change made while the tools run then misses the cache next time
            generation = nft_generation(sock)
            nft_tables = _nft_tables(sock)
        except OSError as exc:  # no nf_tables in the kernel: fall back to asking the tools
            errors.append(f"nftables tables: {exc}")
        cookie = sock.netns_cookie()
        try:
            ipsets = _has_ipsets(sock)
        except OSError as exc:  # ip_set missing from the kernel
            errors.append(f"ipset: {exc}")
            ipsets = False
    legacy = {family: _legacy_tables(family) for family in ("ip", "ip6")}
    version = None
    if nft_tables and generation is not None:  # pods have no tables: nothing to keep
        version = (generation, *map(tuple, legacy.values()))
    return _Probe(nft_tables, legacy, ipsets, cookie, version)


def _nft_side(probe: _Probe, errors: list[str], cache: NftCache) -> tuple[NftRead, bool]:
    """The nft-side read, from the cache when it holds this version; (read, tools ran)."""
    if probe.cookie is None or probe.version is None:
        return _read_nft_side(probe.nft_tables, errors), True
    with cache.reading(probe.cookie):
        found = cache.get(probe.cookie, probe.version)
        if found is not None:
            return found, False
        failed = len(errors)
        found = _read_nft_side(probe.nft_tables, errors)
        if len(errors) == failed:  # never keep a partial read
            cache.put(probe.cookie, probe.version, found)
        return found, True


def warm_nft_cache(cache: NftCache = NFT_CACHE) -> bool:
    """Read the calling thread's namespace's nft side into the cache unless it is there
    already; True when the tools ran (the agent reads ahead with this)."""
    errors: list[str] = []
    probe = _probe(errors)
    return probe.cookie is not None and probe.version is not None and _nft_side(probe, errors, cache)[1]


def read_netfilter(errors: list[str], cache: NftCache = NFT_CACHE) -> NetfilterState:
    state = NetfilterState()
    probe = _probe(errors)
    for family, field_ in (("ip", state.iptables), ("ip6", state.ip6tables)):
        if probe.legacy[family] and (found := _save(family, "legacy", errors)):
            field_.append(found)
    nft, _ = _nft_side(probe, errors, cache)
    for field_, found in ((state.iptables, nft.iptables), (state.ip6tables, nft.ip6tables)):
        if found is not None:
            field_.append(found.model_copy())
    used = {s.backend for s in (*state.iptables, *state.ip6tables) if s.has_rules}
    state.mixed_backends = used == {"legacy", "nft"}
    state.nft_ruleset, state.nft_tables_via_iptables = nft.nft_ruleset, list(nft.via_iptables)
    try:
        if probe.ipsets and commands.available("ipset"):
            state.ipsets = commands.run(["ipset", "save"])
    except commands.CommandError as exc:
        errors.append(f"ipset: {exc}")
    try:
        state.ipvs = ipvs.read_ipvs()
    except (commands.CommandError, ValueError) as exc:
        errors.append(f"ipvs: {exc}")
    return state


def _read_nft(tables: list[tuple[str, str]] | None, errors: list[str]) -> tuple[dict[str, Any] | None, list[str]]:
    if tables == [] or not commands.available("nft"):
        return None, []
    try:
        if tables is None:
            return json.loads(commands.run(["nft", "-j", "list", "ruleset"])), []
        via_iptables = [f"{f} {n}" for f, n in tables if f in ("ip", "ip6") and n in XTABLES]
        own = [(f, n) for f, n in tables if f"{f} {n}" not in via_iptables]
        items: list[dict[str, Any]] = []
        for family, name in own:
            doc = json.loads(commands.run(["nft", "-j", "list", "table", family, name]))["nftables"]
            items.extend(doc if not items else [x for x in doc if "metainfo" not in x])
        return ({"nftables": items} if items else None), via_iptables
    except (commands.CommandError, ValueError, KeyError) as exc:
        errors.append(f"nft: {exc}")
        return None, []
