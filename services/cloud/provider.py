"""The cloud provider interface and the `none` provider (factory.py picks one)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from shared.cloud import CloudInventory, empty_inventory


class CloudError(Exception):
    """The cloud could not be read at all (credentials, endpoint, retries exhausted).
    Partial failures are recorded in `CloudInventory.errors` instead."""


class CloudApiError(CloudError):
    """One API call the provider answered with an error it will not retry (e.g. `Forbidden.RAM`, or
    `Throttling` after every attempt): the caller decides whether it is partial or total."""

    def __init__(self, action: str, code: str, message: str) -> None:
        super().__init__(f"{action}: {code}: {message}")
        self.action, self.code = action, code


class CloudProvider(ABC):
    name: str

    @abstractmethod
    def collect(self, nodes: list[dict[str, Any]], addresses: Iterable[str] = (),
                load_balancer_ids: Iterable[str] = ()) -> CloudInventory:
        """Read the cloud state around `nodes` (Kubernetes Node objects in API JSON form).

        `addresses` / `load_balancer_ids` name load balancers of interest (Service ingress
        IPs, the CCM's loadbalancer-id annotation); with neither, every LB of the region is read.
        Blocking (SDKs are synchronous): call it through `asyncio.to_thread`.
        """


class NoCloudProvider(CloudProvider):
    """Bare metal, the namespace lab without an emulated cloud: nothing is modelled, and the
    inventory says so explicitly."""

    name = "none"

    def collect(self, nodes: list[dict[str, Any]], addresses: Iterable[str] = (),
                load_balancer_ids: Iterable[str] = ()) -> CloudInventory:
        return empty_inventory("none", "cloud provider is 'none' (bare metal or a lab without a cloud)")

