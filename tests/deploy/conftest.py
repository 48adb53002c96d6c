"""Fixtures shared by the deploy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.kubeapi import LabKubeAPI


@pytest.fixture
def kube() -> Iterator[LabKubeAPI]:
    """The lab Kubernetes API (empty store), served from a thread for one test."""
    with LabKubeAPI() as api:
        yield api
