"""iptables (both backends), nftables, ipsets and IPVS of the calling thread's namespace.

Read-only by construction: only the `-save`/`list` tools run, and only when the kernel
says there is something to read — legacy tables from /proc/thread-self/net/ip_tables_names,
nftables tables over netlink — so an empty pod namespace costs no child process and no
table is ever instantiated (python-iptables would create empty legacy tables).

Tables that iptables-nft owns (family ip/ip6, named filter/nat/mangle/raw/security) are
read through `iptables-nft-save` only and listed in `nft_tables_via_iptables`; `nft -j`
covers every other table. That avoids dumping a kube-proxy ruleset twice (its JSON form is
~3x the save text and takes longer than the rest of the node).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyroute2.ipset import IPSet
from pyroute2.nftables.main import NFTables

from services.collector.reader import commands, ipvs
from shared.netstack import IptablesState, NetfilterState

XTABLES = {"filter", "nat", "mangle", "raw", "security"}
NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
LEGACY_NAMES = {"ip": "/proc/thread-self/net/ip_tables_names", "ip6": "/proc/thread-self/net/ip6_tables_names"}
SAVE_TOOLS = {("ip", "legacy"): "iptables-legacy-save", ("ip", "nft"): "iptables-nft-save",
              ("ip6", "legacy"): "ip6tables-legacy-save", ("ip6", "nft"): "ip6tables-nft-save"}


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


def _nft_tables() -> list[tuple[str, str]]:
    with NFTables(nfgen_family=0) as nft:
        return [(NFPROTO.get(t["nfgen_family"], str(t["nfgen_family"])), t.get_attr("NFTA_TABLE_NAME"))
                for t in nft.get_tables()]


def _has_ipsets() -> bool:
    with IPSet() as ips:
        return any(msg.get_attr("IPSET_ATTR_SETNAME") for msg in ips.list())


def read_netfilter(errors: list[str]) -> NetfilterState:
    state = NetfilterState()
    try:
        nft_tables = _nft_tables()
    except Exception as exc:  # no nf_tables in the kernel: fall back to asking the tools
        errors.append(f"nftables tables: {exc}")
        nft_tables = None
    for family, field in (("ip", state.iptables), ("ip6", state.ip6tables)):
        backends = []
        if _legacy_tables(family):
            backends.append("legacy")
        if nft_tables is None or any(f == family and name in XTABLES for f, name in nft_tables):
            backends.append("nft")
        for backend in backends:
            tool = SAVE_TOOLS[(family, backend)]
            if not commands.available(tool):
                errors.append(f"{tool} not installed")
                continue
            try:
                save = commands.run([tool])
            except commands.CommandError as exc:
                errors.append(str(exc))
                continue
            field.append(IptablesState(backend=backend, save=save, has_rules=has_rules(save)))
    used = {s.backend for s in (*state.iptables, *state.ip6tables) if s.has_rules}
    state.mixed_backends = used == {"legacy", "nft"}
    state.nft_ruleset, state.nft_tables_via_iptables = _read_nft(nft_tables, errors)
    try:
        if _has_ipsets() and commands.available("ipset"):
            state.ipsets = commands.run(["ipset", "save"])
    except Exception as exc:  # ip_set missing from the kernel, or the tool failed
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
