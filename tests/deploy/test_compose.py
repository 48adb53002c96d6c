"""docker-compose.yml stays valid without a Docker engine: its YAML, its references, and every
command it runs exists in this repository (a module with a __main__, a file it names)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"topology", "collector", "cloud", "simulator", "gateway"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_part_of_the_system_is_a_service() -> None:
    services = compose()["services"]
    assert set(services) == {"nats", *STAGES, "cloudemu"}
    assert "-js" in services["nats"]["command"]  # JetStream
    assert services["gateway"]["ports"] == ["127.0.0.1:8080:8080"]


def test_every_command_is_a_runnable_module_and_its_files_exist() -> None:
    for name, svc in compose()["services"].items():
        if name == "nats":
            continue
        command = svc["command"]
        assert command[:2] == ["python", "-m"], name
        module = command[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{name}: no module {module}"
        for arg in command[3:]:
            if "/" in arg:
                assert (ROOT / arg).exists(), f"{name}: {arg} does not exist"


def test_services_share_nats_and_depend_on_what_they_call() -> None:
    services = compose()["services"]
    for name in STAGES:
        env = services[name]["environment"]
        assert env["NETDIAG_NATS_URL"] == "nats://nats:4222", name
        assert "nats" in services[name]["depends_on"], name
        assert services[name]["read_only"] is True, name
    cloud = services["cloud"]["environment"]
    emulator = services["cloudemu"]["command"]
    assert cloud["NETDIAG_CLOUD_ENDPOINT"] == f"http://cloudemu:{emulator[emulator.index('--port') + 1]}"
    assert "cloudemu" in services["cloud"]["depends_on"]


def test_build_targets_exist_in_the_dockerfile() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, name
    default = (ROOT / "tests/topology/fixtures/basic")
    assert default.is_dir()  # the default snapshot the try-out mounts


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(froms) >= 2 and all("slim" in f or f in {"runtime"} for f in froms)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert froms[-1] == "runtime"  # the default target is the product image, without lab/
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
