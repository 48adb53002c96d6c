"""Parse `iptables-save` / `ip6tables-save` text (legacy and nft backends print the same syntax).

Every table, chain, policy, counter and rule is kept. A rule whose match or target we do not model
is kept too, with an UnknownMatch / unknown target the tracer explores both ways — one odd rule never
discards a node's ruleset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from services.simulator.dataplane.netfilter.matches import (
    PROTO_NUMBERS,
    AddressMatch,
    FragmentMatch,
    InterfaceMatch,
    Option,
    ProtocolMatch,
    UnknownMatch,
    build_module,
    parse_network,
)
from services.simulator.dataplane.netfilter.model import (
    BUILTIN_CHAINS,
    Chain,
    CompiledRule,
    IPAddress,
    Match,
    MatchKind,
    Rule,
    Ruleset,
    Table,
    Target,
)
from services.simulator.dataplane.netfilter.targets import KNOWN_TARGETS

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s*")
_CORE = {"-p": "p", "--protocol": "p", "-s": "s", "--source": "s", "--src": "s", "-d": "d", "--destination": "d",
         "--dst": "d", "-i": "i", "--in-interface": "i", "-o": "o", "--out-interface": "o", "-f": "f",
         "--fragment": "f", "-j": "j", "--jump": "j", "-g": "g", "--goto": "g", "-m": "m", "--match": "m"}
_PORT_OPTS = {"dport", "sport", "destination-port", "source-port", "tcp-flags", "syn"}
_IMPLICIT = {"tcp", "udp", "sctp", "icmp", "icmpv6", "icmp6"}
_PORT_PROTOCOLS = ("tcp", "udp", "sctp")


class IptablesParseError(ValueError):
    pass


def tokenize(line: str) -> list[str]:
    if '"' not in line:
        return line.split()
    out = []
    for m in _TOKEN.finditer(line):
        bare = m.group(2)
        out.append(bare if bare is not None else m.group(1).replace('\\"', '"').replace("\\\\", "\\"))
    return out


def parse_iptables_save(text: str, family: int = 4, strict: bool = False) -> Ruleset:
    """Parse a whole save file. Raises IptablesParseError for text that is not a save file.

    `strict` (a file a user hands us, `netdiag trace iptables`) refuses what `iptables-restore`
    refuses, with its line number: a table left open at the end (a cut file: "COMMIT expected at
    line N"), a line outside a table or one that is no chain, rule or COMMIT, and empty input.
    Otherwise (dumps collected from a node) such lines are warnings and the rest is traced."""
    rs = Ruleset(family=family)
    table: Table | None = None
    seen_table = False
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[0] == "[":  # `iptables-save -c` prefixes [packets:bytes]
            m = _COUNTERS.match(line)
            line = line[m.end():] if m else line
        if line.startswith("*"):
            if table is not None:
                _problem(rs, strict, f"COMMIT expected at line {lineno} (table *{table.name} is still open)")
            table = rs.tables.setdefault(line[1:].strip(), Table(name=line[1:].strip()))
            seen_table = True
        elif line == "COMMIT":
            if table is None:
                _problem(rs, strict, f"line {lineno} failed: COMMIT outside a table")
            table = None
        elif table is None:
            _problem(rs, strict, f"line {lineno} failed: outside a table: {line[:80]}")
        elif line.startswith(":"):
            _parse_chain_line(table, line, rs, lineno)
        elif line.startswith("-A ") or line.startswith("-I "):
            _add_rule_line(table, line, rs)
        else:
            _problem(rs, strict, f"line {lineno} failed: not a chain, rule or COMMIT: {line[:80]}")
    if table is not None:  # iptables-restore applies nothing of a table it never saw committed
        _problem(rs, strict, f"COMMIT expected at line {lineno + 1} (the input ends inside table *{table.name}: "
                             "cut short?)")
    if not seen_table and (text.strip() or strict):
        raise IptablesParseError("not iptables-save output: no '*table' line" if text.strip()
                                 else "empty input: no '*table' line to trace")
    for t in rs.tables.values():
        for c in t.chains.values():
            c.lines = tuple(c.lines)  # a tuple of strings: the garbage collector stops tracking it
    return rs


def _problem(rs: Ruleset, strict: bool, message: str) -> None:
    if strict:
        raise IptablesParseError(message)
    rs.warnings.append(message)


def _parse_chain_line(table: Table, line: str, rs: Ruleset, lineno: int) -> None:
    parts = line[1:].split()
    name = parts[0]
    policy: str | None = parts[1] if len(parts) > 1 else "-"
    counters = (0, 0)
    if len(parts) > 2:
        c = _COUNTERS.match(parts[2])
        if c:
            counters = (int(c.group(1)), int(c.group(2)))
    if policy == "-":
        # kube-proxy's fakes print built-in chains with '-': the kernel default policy is ACCEPT
        policy = "ACCEPT" if name in BUILTIN_CHAINS else None
    chain = table.chains.get(name)
    if chain is None:
        table.chains[name] = _new_chain(table, name, policy, rs.family, counters)
    else:
        chain.policy, chain.counters = policy, counters


def _add_rule_line(table: Table, line: str, rs: Ruleset) -> None:
    chain_name = line.split(None, 2)[1]
    chain = table.chains.get(chain_name)
    if chain is None:
        chain = table.chains[chain_name] = _new_chain(table, chain_name, "ACCEPT" if chain_name in BUILTIN_CHAINS
                                                      else None, rs.family)
        rs.warnings.append(f"chain {table.name}/{chain_name} used before declared")
    # built into a Rule when a trace reaches it (Chain.rule)
    chain.lines.append(line)  # type: ignore[union-attr]  # a list until the parse ends (then a tuple)


def _new_chain(table: Table, name: str, policy: str | None, family: int, counters: tuple[int, int] = (0, 0)) -> Chain:
    return Chain(name=name, policy=policy, counters=counters, lines=[], table=table.name, family=family,
                 table_chains=table.chains)


def compile_rule(rule: Rule) -> CompiledRule:
    """Build the typed matches and target of one rule. Never raises: what cannot be parsed becomes an
    UnknownMatch, so the tracer explores both outcomes instead of losing the ruleset."""
    try:
        matches, target = _compile_tokens(tokenize(rule.text), rule.family)
    except (ValueError, IndexError) as exc:
        matches = [UnknownMatch(text=rule.text, module=f"unparsed ({exc})")]
        target = None
    unknown_target = target is not None and target.name not in (rule.table_chains or {}) and (
        target.name not in KNOWN_TARGETS)
    det = tuple(m for m in matches if m.kind <= MatchKind.ASSUMED)
    fork = tuple(m for m in matches if m.kind > MatchKind.ASSUMED)
    return CompiledRule(matches=tuple(matches), target=target, unknown_target=unknown_target, deterministic=det,
                        forking=fork)


Rule.compiler = compile_rule  # called as type(rule).compiler(rule): no binding


ScanEvent = tuple[str, str, bool, list[str]]  # (kind, name, negated, values)


def _scan(tokens: list[str]) -> Iterator[ScanEvent]:
    """The grammar of a rule's tokens after `-A CHAIN`, shared by the compiler and the dispatch key:
    ("core", p/s/d/i/o/f/m, !, [value]) until the target, ("target", j/g, !, [name]), then
    ("option", name, !, values) for every `--opt values…` (old `--opt ! value` syntax too), and
    ("junk", word, False, []) for a stray word."""
    negate = False
    in_target = False
    i, n = 2, len(tokens)
    while i < n:
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        core = _CORE.get(tok)
        if core is not None and not in_target:
            if core == "f":
                yield "core", core, negate, []
                i += 1
            else:
                val = tokens[i + 1]
                i += 2
                in_target = core in ("j", "g")
                yield ("target" if in_target else "core"), core, negate, [val]
            negate = False
            continue
        if tok.startswith("--") or (tok.startswith("-") and len(tok) == 2):
            vals = []
            i += 1
            while i < n and not tokens[i].startswith("-") and tokens[i] != "!":
                vals.append(tokens[i])
                i += 1
            if i < n and tokens[i] == "!" and i + 1 < n and not tokens[i + 1].startswith("-"):
                # old syntax: `--opt ! value`
                negate = True
                vals.append(tokens[i + 1])
                i += 2
            yield "option", tok.lstrip("-"), negate, vals
            negate = False
            continue
        yield "junk", tok, False, []
        i += 1


def _compile_tokens(tokens: list[str], family: int) -> tuple[list[Match], Target | None]:
    matches: list[Match] = []
    protocol: str | None = None
    modules: list[tuple[str, list[Option]]] = []  # in order; options attach to the latest that takes them
    target: Target | None = None
    for kind, name, negate, vals in _scan(tokens):
        if kind == "core":
            val = vals[0] if vals else ""
            if name == "p":
                protocol = PROTO_NUMBERS.get(val.lower(), val.lower())
                matches.append(ProtocolMatch(text=f"-p {val}", negated=negate, protocol=protocol))
            elif name in ("s", "d"):
                matches.append(AddressMatch(text=f"{'! ' if negate else ''}-{name} {val}", negated=negate,
                                            source=name == "s", network=parse_network(val)))
            elif name in ("i", "o"):
                matches.append(InterfaceMatch(text=f"{'! ' if negate else ''}-{name} {val}", negated=negate,
                                              inbound=name == "i", name=val))
            elif name == "f":
                matches.append(FragmentMatch(text="-f", negated=negate))
            else:  # -m
                modules.append((val, []))
        elif kind == "target":
            target = Target(name=vals[0], goto=name == "g")
        elif kind == "option":
            if target is not None:
                target.options.setdefault(name, []).extend(vals or [""])
            else:
                _attach_option(modules, protocol, (name, negate, vals))
        else:
            # a stray word (kube-proxy test fixtures contain junk like "svc2 line 1"): keep it visible
            modules.append(("<junk>", [(name, False, [])]))
    for module, opts in modules:
        text = "-m " + module + "".join(f" {'! ' if neg else ''}--{o} {' '.join(v)}".rstrip() for o, neg, v in opts)
        matches.extend(build_module(module, opts, text, protocol, family))
    if target is not None:
        target.text = f"{'-g' if target.goto else '-j'} {target.name}"
    return matches, target


DispatchKey = tuple[IPAddress | None, str | None, int | None]


def dispatch_key(line: str) -> DispatchKey | None:
    """(destination host, protocol, destination port) that every packet the rule `line` matches must
    carry, read from the text without compiling it (a node's 10,000-rule KUBE-SERVICES is indexed in a
    fraction of the compile time). None when the rule names neither a destination host nor a port, or
    its text does not read cleanly: such rules are scanned, and compiled when reached, as any other.

    Only a non-negated single-address `-d`, `-p PROTO` and a single `--dport N` of the tcp/udp/sctp module
    count: each is a condition the kernel ANDs with the rest of the rule, so a packet without it can
    never match, whatever the rest of the rule says."""
    dst: IPAddress | None = None
    proto = port = protocol = None
    modules: list[tuple[str, list[Option]]] = []
    try:
        for kind, name, negate, vals in _scan(tokenize(line)):
            if kind == "target":
                break
            if kind == "core" and name == "p":
                protocol = PROTO_NUMBERS.get(vals[0].lower(), vals[0].lower())
                proto = protocol if not negate and protocol != "all" else proto
            elif kind == "core" and name in ("s", "d"):
                net = parse_network(vals[0])  # unreadable: unkeyed, as the compiler forks on the whole rule
                if name == "d" and not negate and net.num_addresses == 1:
                    dst = net.network_address
            elif kind == "core" and name == "m":
                modules.append((vals[0], []))
            elif kind == "option":
                module = _attach_option(modules, protocol, (name, negate, vals))
                if name in ("dport", "destination-port") and not negate and module in _PORT_PROTOCOLS \
                        and len(vals) == 1 and vals[0].isdigit():
                    port, proto = int(vals[0]), module
    except (ValueError, IndexError):
        return None
    if port is None and dst is None:
        return None
    return (dst, proto, port)


def _attach_option(modules: list[tuple[str, list[Option]]], protocol: str | None, opt: Option) -> str:
    """Options follow their `-m`, but iptables-save interleaves core options (`-m tcp -p tcp -d X --dport N`).
    Returns the module `opt` went to."""
    for module, opts in reversed(modules):
        if _takes(module, opt[0]):
            opts.append(opt)
            return module
    # `-p tcp --dport 80` without `-m tcp`: iptables loads the protocol module implicitly
    module = protocol if protocol in _IMPLICIT else "<orphan>"
    modules.append((module, [opt]))
    return module


def _takes(module: str, option: str) -> bool:
    if module in _IMPLICIT:
        return option in _PORT_OPTS or option in ("icmp-type", "icmpv6-type")
    if module == "comment":
        return option == "comment"
    if module == "multiport":
        return option in ("dports", "sports", "ports", "destination-ports", "source-ports")
    return option not in _PORT_OPTS  # other modules' option sets are checked when the match is built
