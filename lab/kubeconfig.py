"""A kubeconfig for the lab's Kubernetes API (plain HTTP on loopback, bearer token)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def kubeconfig_dict(url: str, token: str, name: str = "netdiag-lab") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": f"{name}-admin", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin", "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: str | Path, url: str, token: str, name: str = "netdiag-lab") -> Path:
    """Write a kubeconfig loadable by `kubernetes.config.load_kube_config(config_file=path)`; mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a credential
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(kubeconfig_dict(url, token, name), f, sort_keys=False)
    tmp.replace(path)
    return path
