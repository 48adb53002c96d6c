"""The one way netdiag connects to the Kubernetes API (the topology stage's live source, the gateway's
TokenReview, `kubectl netdiag`): the official client, configured from a kubeconfig when given, else the
in-cluster service account (whose rotating token the client re-reads), else ~/.kube/config."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config


def api_client(kubeconfig: Path | str | None = None) -> client.ApiClient:
    """A kubeconfig when given; else the in-cluster service account; else ~/.kube/config."""
    if kubeconfig:
        return config.new_client_from_config(config_file=str(kubeconfig))
    try:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    except config.ConfigException:
        return config.new_client_from_config()
