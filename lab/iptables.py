"""An iptables ruleset being generated: chains and rules per table, rendered as `iptables-restore` input.

kube-proxy, the NetworkPolicy agent and flannel's masquerade each contribute to one Ruleset per node, so a
node is programmed with a single `iptables-restore` call, in the order the real agents would leave it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
RESTORE = {"nft": "iptables-nft-restore", "legacy": "iptables-legacy-restore"}
CLI = {"nft": "iptables-nft", "legacy": "iptables-legacy"}
SAVE = {"nft": "iptables-nft-save", "legacy": "iptables-legacy-save"}


def chain_hash(prefix: str, *parts: str) -> str:
    """kube-proxy's chain naming: prefix + first 16 chars of base32(sha256(parts joined))."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


@dataclass
class Ruleset:
    chains: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in BUILTIN})
    rules: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in BUILTIN})

    def chain(self, table: str, name: str) -> str:
        if name not in BUILTIN[table] and name not in self.chains[table]:
            self.chains[table].append(name)
        return name

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chain(table, chain)
        self.rules[table].append(f"-A {chain} {rule}")

    def extend(self, other: Ruleset) -> None:
        for table in BUILTIN:
            for name in other.chains[table]:
                self.chain(table, name)
            self.rules[table].extend(other.rules[table])

    def render(self) -> str:
        out: list[str] = []
        for table, builtins in BUILTIN.items():
            out.append(f"*{table}")
            out.extend(f":{name} ACCEPT [0:0]" for name in builtins)
            out.extend(f":{name} - [0:0]" for name in self.chains[table])
            out.extend(self.rules[table])
            out.append("COMMIT")
        return "\n".join(out) + "\n"
