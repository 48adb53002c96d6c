"""`nft -j` rule expressions back to nft's own syntax, for the rule text a trace reports."""

from __future__ import annotations

import json
from typing import Any

VERDICTS = ("accept", "drop", "continue", "return")


def render_rule(exprs: list[dict[str, Any]], comment: str | None) -> str:
    text = " ".join(_stmt(e) for e in exprs)
    return f'{text} comment "{comment}"' if comment else text


def _stmt(expr: dict[str, Any]) -> str:
    kind, body = next(iter(expr.items()))
    if kind == "match":
        op = body.get("op", "==")
        left, right = _val(body["left"]), _val(body["right"])
        implicit = op == "in" or (op == "==" and not ({"&", "|", "^"} & set(body["left"]) if isinstance(
            body["left"], dict) else False))
        return f"{left} {right}" if implicit else f"{left} {op} {right}"
    if kind in VERDICTS:
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "reject":
        if not body:
            return "reject"
        if body.get("type") == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {body.get('type', 'icmp')} {body.get('expr', '')}".rstrip()
    if kind == "vmap":
        return f"{_val(body['key'])} vmap {_val(body['data'])}"
    if kind in ("dnat", "snat", "masquerade", "redirect"):
        body = body or {}
        parts = [kind]
        if "addr" in body or "port" in body:
            parts.append("to")
            target = _val(body["addr"]) if "addr" in body else ""
            if "port" in body:
                target += f":{_val(body['port'])}"
            parts.append(target)
        flags = body.get("flags")
        if flags:
            parts.append(", ".join(flags) if isinstance(flags, list) else flags)
        return " ".join(parts)
    if kind == "mangle":
        return f"{_val(body['key'])} set {_val(body['value'])}"
    if kind == "counter":
        return "counter"
    if kind == "log":
        return f'log prefix "{body["prefix"]}"' if body and body.get("prefix") else "log"
    if kind == "limit" and body:
        return f"limit rate {body.get('rate')}/{body.get('per', 'second')}"
    if kind == "notrack":
        return "notrack"
    return f"{kind} {json.dumps(body)}" if body is not None else kind


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "missing" if v is False else "exists"
    if isinstance(v, str | int):
        return str(v)
    if isinstance(v, list):
        return ",".join(_val(x) for x in v)
    if not isinstance(v, dict):
        return json.dumps(v)
    kind, body = next(iter(v.items()))
    if kind == "payload":
        return f"{body.get('protocol', 'raw')} {body.get('field', '')}".strip()
    if kind == "meta":
        return f"meta {body['key']}"
    if kind == "ct":
        return f"ct {body['dir']} {body['key']}" if body.get("dir") else f"ct {body['key']}"
    if kind == "fib":
        flags = body.get("flags", [])
        return f"fib {' . '.join(flags if isinstance(flags, list) else [flags])} {body['result']}"
    if kind == "numgen":
        off = f" offset {body['offset']}" if body.get("offset") else ""
        return f"numgen {body['mode']} mod {body['mod']}{off}"
    if kind in ("jhash", "symhash"):
        return f"{kind} {_val(body.get('expr', ''))} mod {body['mod']}".replace("  ", " ")
    if kind == "concat":
        return " . ".join(_val(p) for p in body)
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{_val(body[0])}-{_val(body[1])}"
    if kind == "set":
        return "{ " + ", ".join(_elem(e) for e in body) + " }" if isinstance(body, list) else _val(body)
    if kind == "map":
        return f"{_val(body['key'])} map {_val(body['data'])}"
    if kind in ("&", "|", "^", "<<", ">>"):
        return f"{_val(body[0])} {kind} {_val(body[1])}"
    if kind == "elem":
        return _val(body["val"])
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind in VERDICTS:
        return kind
    return json.dumps(v)


def _elem(e: Any) -> str:
    if isinstance(e, list) and len(e) == 2:
        return f"{_val(e[0])} : {_val(e[1])}"
    return _val(e)
