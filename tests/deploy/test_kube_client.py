"""The Kubernetes client netdiag builds (shared/kube.py): a connection pool wide enough for every watch the live
source keeps open at once, so urllib3 neither discards connections nor warns about it."""

from __future__ import annotations

from pathlib import Path

from services.topology.model import KINDS
from shared.kube import POOL_SIZE, api_client


def test_the_pool_holds_a_connection_per_watched_kind(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        "clusters: [{name: lab, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: lab, user: {token: t}}]\n"
        "contexts: [{name: lab, context: {cluster: lab, user: lab}}]\n")
    api = api_client(kubeconfig)
    assert api.configuration.host == "http://127.0.0.1:1"
    assert api.configuration.connection_pool_maxsize == POOL_SIZE > len(KINDS) + 4
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == POOL_SIZE
