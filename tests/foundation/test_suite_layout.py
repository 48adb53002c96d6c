"""The suite's own layout: test modules are leaves. What several of them share lives in a `helpers.py`
(or another non-test module) of their area, so running, moving or renaming one test module never
changes what another one collects or imports."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.foundation.helpers import parse_source

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(tree: ast.Module, package: str) -> list[str]:
    """Dotted names of every module an import statement names, `from x import y` giving both x and x.y
    (y may be a submodule), relative imports resolved against `package`."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append(base)
            out += [f"{base}.{alias.name}" for alias in node.names]
    return out


def is_test_module(dotted: str) -> bool:
    return dotted.startswith("tests.") and dotted.rsplit(".", 1)[-1].startswith("test_")


def test_no_test_module_imports_another_test_module() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        package = ".".join(("tests", *path.relative_to(TESTS).parent.parts))
        for name in imported_modules(parse_source(path), package):
            if is_test_module(name):
                offenders.append(f"{path.relative_to(TESTS.parent)} imports {name}")
    assert not offenders, "move what they share into the area's helpers.py:\n" + "\n".join(offenders)


def test_the_check_sees_every_spelling_of_such_an_import() -> None:
    source = ("from tests.ui.test_ui import submit\nimport tests.e2e.test_cli\nfrom tests.lab import test_live\n"
              "from .test_walk import Case\nfrom . import test_walk_ipvs\nfrom tests.ui.helpers import submit\n")
    found = [n for n in imported_modules(ast.parse(source), "tests.simulator.dataplane") if is_test_module(n)]
    assert found == ["tests.ui.test_ui", "tests.e2e.test_cli", "tests.lab.test_live",
                     "tests.simulator.dataplane.test_walk", "tests.simulator.dataplane.test_walk_ipvs"]
