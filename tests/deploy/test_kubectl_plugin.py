"""`kubectl netdiag`: names resolved through a kubeconfig with the official client, against the
lab's Kubernetes API (in-process); then the normal CLI — here with no server: snapshot capture
through the API and node agents, then a local diagnosis of that snapshot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from lab.kubeapi import serve_scenario
from lab.scenario import ResolvedScenario, Scenario, resolve
from services import kubectl

BASIC = Path(__file__).resolve().parents[2] / "examples" / "lab" / "basic.yaml"


@pytest.fixture(scope="module")
def scenario() -> ResolvedScenario:
    return resolve(Scenario.load(BASIC))


@pytest.fixture(scope="module")
def kubeconfig(scenario: ResolvedScenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with serve_scenario(scenario) as api:
        yield api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        yield api


def addresses(api: client.ApiClient) -> tuple[str, str, str]:
    """The lab's pod/api-1 IP, svc/api ClusterIP and node-1 InternalIP, read from the API."""
    core = client.CoreV1Api(api)
    pod, svc = core.read_namespaced_pod("api-1", "shop"), core.read_namespaced_service("api", "shop")
    node = core.read_node("node-1")
    assert pod.status and pod.status.pod_ip and svc.spec and svc.spec.cluster_ip and node.status, (pod, svc, node)
    internal = next(a.address for a in node.status.addresses or [] if a.type == "InternalIP")
    return pod.status.pod_ip, svc.spec.cluster_ip, internal


def test_names_resolve_to_addresses(api: client.ApiClient) -> None:
    pod_ip, cluster_ip, internal = addresses(api)
    assert kubectl.resolve(api, "pod/api-1", "shop") == pod_ip
    assert kubectl.resolve(api, "svc/api", "shop") == kubectl.resolve(api, "service/api", "shop") == cluster_ip
    assert kubectl.resolve(api, "node/node-1", "ignored") == internal
    assert kubectl.resolve(api, "10.0.0.7", "shop") == "10.0.0.7"


@pytest.mark.parametrize(("ref", "message"), [
    ("pod/nope", "pod shop/nope: not found"),
    ("svc/nope", "service shop/nope: not found"),
    ("node/nope", "node nope: not found"),
    ("deploy/api", "expected pod/NAME"),
    ("pod/", "expected pod/NAME"),
])
def test_unknown_names_are_clear_errors(api: client.ApiClient, ref: str, message: str) -> None:
    with pytest.raises(kubectl.ResolveError, match=message):
        kubectl.resolve(api, ref, "shop")


def test_unresolvable_name_exits_with_usage_error(kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = kubectl.main(["diagnose", "--from", "pod/ghost", "-n", "shop", "--to", "svc/api", "--port", "80",
                         "--kubeconfig", str(kubeconfig)])
    assert code == 3 and "pod shop/ghost: not found" in capsys.readouterr().err


def test_diagnose_without_a_server_captures_then_diagnoses(kubeconfig: Path, api: client.ApiClient,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pod_ip, cluster_ip, _ = addresses(api)
    code = kubectl.main(["diagnose", "--from", "pod/api-1", "-n", "shop", "--to", "svc/api", "--port", "80",
                         "--kubeconfig", str(kubeconfig), "--agent", "node-1", "--agent", "node-2",
                         "--output", "json"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert report["request"]["src"] == pod_ip and report["request"]["dst"] == cluster_ip
    assert report["request"]["port"] == 80 and report["request"]["protocol"] == "tcp"
    assert report["status"] == "completed", report.get("error")
    assert code in (0, 1, 2)  # a verdict (the lab's dataplane is not built here, only its API)


def test_other_commands_go_to_the_netdiag_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kubectl.main(["diagnose", "--help"])
    assert exit_info.value.code == 0 and "--from" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        kubectl.main(["matrix", "--help"])
    assert "--snapshot" in capsys.readouterr().out
