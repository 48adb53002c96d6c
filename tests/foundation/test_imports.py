"""The product's import graph, read statically: no cycles, and the layering the design states.

Every `import` and `from … import` in every module under services/ and shared/ counts, wherever it
sits: at the top, inside a function (a local import that dodges a cycle is still the cycle) or under
`if TYPE_CHECKING:` (a cycle the type checker needs is still a knot a reader must untie). An edge
goes to the named module, or to the submodule when `from package import name` names one. The
implicit import of a module's parent packages is not an edge: Python initialises a package before
its submodules, and an `__init__` that re-exports its submodules is the usual façade.

Layering (the design's rules): a service package (services/<stage>/) imports only itself and
`shared`; `shared` imports no service; nothing in the product imports `lab`. The modules directly
under services/ (cli, stack, …) are the composition root and may import every service.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from tests.foundation.helpers import parse_source

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("services", "shared")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(module, line) for every import statement of one module, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(parse_source(path)):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level-1 packages
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else base, node.lineno))
    return out


def graph() -> dict[str, dict[str, int]]:
    """module → {imported product module: first line}."""
    known = modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        targets = edges.setdefault(name, {})
        for target, line in imported(name, path, known):
            if target in known and target != name:
                targets.setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as one cycle
    through it, so the message names the modules to untie."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_in(sorted(component), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _cycle_in(component: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """One closed path through a strongly connected component, from its first module back to it."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return [*paths[v], start]
            if w in members and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component


def describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    return " → ".join(f"{a} (line {edges[a][b]})" for a, b in itertools.pairwise(cycle)) + \
        f" → {cycle[-1]}"


def test_no_import_cycle_in_the_product() -> None:
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges) for c in found)


def test_the_cycle_finder_names_a_cycle() -> None:
    """The detector itself: a planted three-module knot is found and named in order."""
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], edges) == "a (line 1) → b (line 2) → c (line 3) → a"


def test_imports_read_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x.y import Z\n"
                   "def f():\n    import x.w\n    from . import v\n")
    known = {"x.y": src, "x.w": src, "pkg.v": src}
    assert [m for m, _ in imported("pkg.m", src, known)] == ["typing", "x.y", "x.w", "pkg.v"]


def _service(name: str) -> str | None:
    """The service package a module belongs to (None: shared, or the composition root)."""
    parts = name.split(".")
    if parts[0] != "services" or len(parts) < 2 or not (ROOT / "services" / parts[1]).is_dir():
        return None
    return parts[1]


@pytest.mark.parametrize("rule", ["services import no other service", "shared imports no service",
                                  "the product never imports lab"])
def test_layering(rule: str) -> None:
    known = modules()
    bad = []
    for name, path in known.items():
        for target, line in imported(name, path, known):
            top = target.split(".")[0]
            if rule == "the product never imports lab":
                broken = top == "lab"
            elif rule == "shared imports no service":
                broken = name.split(".")[0] == "shared" and top == "services"
            else:
                own = _service(name)
                broken = own is not None and top == "services" and _service(target) != own
            if broken:
                bad.append(f"{name} (line {line}) imports {target}")
    assert not bad, f"{rule}:\n" + "\n".join(bad)
