"""Render the Helm chart offline with the real Helm engine (helm-python-sdk: Helm's Go SDK)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from shared.natsserver import nats_server_binary

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "netdiag"
RELEASE, NAMESPACE = "nd", "netdiag"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def nats_conf(values: dict[str, Any] | None = None) -> str:
    """The chart's rendered nats.conf."""
    return next(o for o in render(values) if o["kind"] == "ConfigMap")["data"]["nats.conf"]


@contextlib.contextmanager
def chart_nats_server(values: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """A nats-server started from the chart's rendered nats.conf (use one replica: the cluster routes
    need the StatefulSet's DNS names), moved onto loopback and `tmp_path`; `env` gives what the
    StatefulSet's environment would (passwords). Yields the client URL."""
    conf = nats_conf(values)
    for old, new in (("listen: 0.0.0.0:4222", "listen: 127.0.0.1:-1"), ("http: 0.0.0.0:8222", "http: 127.0.0.1:-1"),
                     ("store_dir: /data", f"store_dir: {tmp_path / 'js'}"),
                     ("/var/run/nats/nats.pid", str(tmp_path / "nats.pid"))):
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp_path / "nats.conf").write_text(conf)
    proc = subprocess.Popen([nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "--ports_file_dir",
                             str(tmp_path)], env={**os.environ, "POD_NAME": "nats-0", **env},
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "nats.log", "wb"))  # noqa: SIM115
    try:
        ports = tmp_path / f"nats-server_{proc.pid}.ports"
        for _ in range(500):
            if ports.exists() and ports.read_text().strip():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(tmp_path / 'nats.log').read_text()[-2000:]}")
            time.sleep(0.01)
        yield json.loads(ports.read_text())["nats"][0]
    finally:
        proc.terminate()
        proc.wait(5)
