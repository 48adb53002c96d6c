"""Lab fixtures: real network-namespace labs with a unique name prefix per test run, always swept."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.dataplane import Lab
from lab.scenario import Scenario, resolve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lab"
RUN_ID = secrets.token_hex(2)
_counter = itertools.count()

MakeLab = Callable[..., Lab]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"make_lab", "make_module_lab"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def new_prefix() -> str:
    """t<run id><n>: unique per run, short, and never a prefix of another run's names."""
    return f"t{RUN_ID}{next(_counter):02d}"


def example(name: str) -> Path:
    return EXAMPLES / f"{name}.yaml"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests build network namespaces and must run as root (they are never skipped)")


def _lab_factory() -> Iterator[MakeLab]:
    require_root()
    prefixes: list[str] = []

    def make(scenario: str | Path) -> Lab:
        path = scenario if isinstance(scenario, Path) else example(scenario)
        prefix = new_prefix()
        prefixes.append(prefix)  # registered first, so a failed build is swept too
        return Lab.up(resolve(Scenario.load(path)), prefix=prefix, scenario_path=path)

    try:
        yield make
    finally:
        for prefix in prefixes:
            Lab.sweep(prefix)


@pytest.fixture
def make_lab() -> Iterator[MakeLab]:
    yield from _lab_factory()


@pytest.fixture(scope="module")
def make_module_lab() -> Iterator[MakeLab]:
    yield from _lab_factory()
