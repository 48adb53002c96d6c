"""Shared pieces of the lab tests: the full embedded stack on a lab, a diagnosis through its REST API,
the lab's own probe, and a compact reading of a result for failure messages (the hops each path
walked with their status, the step that decided it, the findings), the way kube-proxy's flow tests
print the rules a packet matched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from lab.dataplane import Lab
from lab.faults import ProbeSpec
from services.stack import EmbeddedStack
from shared.config import Settings

PROBE_TIMEOUT_S = 1.0
REACHED = {"connected", "reply"}


@asynccontextmanager
async def lab_stack(lab: Lab) -> AsyncIterator[EmbeddedStack]:
    """Every service embedded, against the lab's Kubernetes API, one node agent per lab node."""
    api = await asyncio.to_thread(lab.start_api)
    agents = {name: node.netns for name, node in lab.state.nodes.items()}
    settings = Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0)
    async with EmbeddedStack(settings, agents=agents) as stack:
        yield stack


async def diagnose(stack: EmbeddedStack, lab: Lab, spec: ProbeSpec, timeout: float = 20.0,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"src": lab.address(src_ref(lab, spec.src)), "dst": lab.address(spec.dst),
                            "port": spec.port, "protocol": spec.protocol}
    if options:
        body["options"] = options
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/api/v1/diagnoses", json=body) as resp:
            doc = await resp.json()
            assert resp.status == 202, doc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with session.get(f"{stack.url}/api/v1/diagnoses/{doc['id']}") as resp:
                got = await resp.json()
            if got.get("status") in ("completed", "failed"):
                assert got["status"] == "completed", got
                return got["result"]
            await asyncio.sleep(0.05)
    raise AssertionError(f"diagnosis {doc['id']} did not complete in {timeout}s")


async def probe(lab: Lab, spec: ProbeSpec) -> str:
    """The kernel's answer: the lab's real probe from the source namespace."""
    got = await asyncio.to_thread(lab.probe, spec.src, spec.dst, spec.port, spec.protocol, PROBE_TIMEOUT_S)
    return got.outcome


def src_ref(lab: Lab, src: str) -> str:
    if src in lab.state.nodes:
        return f"node:{src}"
    if src in ("ext", "inet"):
        return src
    return f"pod:{src}"


def probe_id(spec: ProbeSpec) -> str:
    """A probe as a pytest id: `web/client->svc:shop/api:80/tcp`."""
    return f"{spec.src}->{spec.dst}:{spec.port}/{spec.protocol}"


def expected_verdict(outcome: str) -> str:
    return "REACHABLE" if outcome in REACHED else "UNREACHABLE"


def errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in result["findings"] if f["severity"] == "error"]


def first_abnormal(result: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """(first error hop id, cause) of every forward path that does not deliver."""
    out = []
    for path in result["paths"]:
        if path["direction"] != "forward" or path["final"] in ("DELIVER", "FORWARD"):
            continue
        hop = next((h["id"] for h in path["hops"] if h["status"] == "error"), None)
        out.append((hop, path["cause"]))
    return out


def revisits(result: dict[str, Any]) -> list[str]:
    """Hops a forward path lists again although the packet never came back there. A place may reappear
    only as a hairpin: the path's last hop, entered by a packet addressed to where the path started (a
    pod reaching itself through its own Service). A drop decided for an earlier hop (a source pod's
    egress policy enforced on its node) belongs to that hop, not to a second copy of it."""
    out = []
    for path in result["paths"]:
        if path["direction"] != "forward":
            continue
        hops = path["hops"]
        sent = [s["packet_in"] for h in hops for s in h["steps"] if s["packet_in"]]
        for i, hop in enumerate(hops):
            if all(h["id"] != hop["id"] for h in hops[:i]):
                continue
            entered = next((s["packet_in"]["dst"] for s in hop["steps"] if s["packet_in"]), None)
            if i != len(hops) - 1 or not sent or entered != sent[0]["src"]:
                out.append(f"{path['id']}: {hop['id']} again at hop {i} of {[h['id'] for h in hops]}")
    return out


def deciding_step(path: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(hop id, step) that decided the path's end: the first step that dropped or aborted it, else the
    last one that delivered it or sent it out of the modelled world."""
    steps = [(h["id"], s) for h in path["hops"] for s in h["steps"] if s["action"] == path["final"]]
    if not steps:
        return None
    return steps[0] if path["final"] in ("DROP", "ABORT") else steps[-1]


def explain(result: dict[str, Any]) -> str:
    """A result in a few lines: the verdict, each path as its hops with their status, the step that
    decided it (and every step at the hop where it went wrong), the findings and the assumptions that
    could change the outcome."""
    lines = [f"verdict {result['verdict']}: {result['summary']}"]
    for p in result["paths"]:
        hops = " > ".join(f"{h['id']}[{h['status']}]" for h in p["hops"])
        cause = f" ({p['cause']})" if p["cause"] else ""
        lines.append(f"  {p['direction']} {p['id']} {p['final']}{cause}: {hops}")
        decided = deciding_step(p)
        if decided:
            hop, step = decided
            lines.append(f"    decided at {hop}: {step['kind']} {step['action']}: {step['detail']}")
        wrong = next((h for h in p["hops"] if h["status"] in ("error", "unknown")), None)
        if wrong and p["direction"] == "forward":
            lines += [f"    {wrong['id']} {s['kind']} {s['action']}: {s['detail']}" for s in wrong["steps"]]
    lines += [f"  finding {f['code']} {f['severity']} @{f['hop']}: {f['message']}" for f in result["findings"]]
    lines += [f"  assumption ({a['stage']}): {a['text']}" for a in result["assumptions"]
              if a["could_change_outcome"]]
    return "\n".join(lines)


def report(spec: ProbeSpec, kernel: object, result: dict[str, Any]) -> str:
    """The failure message of a differential check: what the kernel did, then what the diagnosis said."""
    return f"{probe_id(spec)}: the kernel says {kernel}\n{explain(result)}"
