"""Picks the cloud provider the settings name; an implementation's SDK is imported only when it is
the one picked."""

from __future__ import annotations

from services.cloud.provider import CloudProvider, NoCloudProvider
from shared.config import Settings


def make_provider(settings: Settings) -> CloudProvider:
    if settings.cloud_provider == "none":
        return NoCloudProvider()
    if settings.cloud_provider == "alibaba":
        from services.cloud.alibaba import AlibabaProvider  # the SDK import is only paid when used

        return AlibabaProvider.from_settings(settings)
    raise ValueError(f"unknown cloud provider {settings.cloud_provider!r}: expected 'none' or 'alibaba'")
