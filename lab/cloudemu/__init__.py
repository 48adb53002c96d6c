"""A local Alibaba Cloud OpenAPI emulator (ECS, VPC, SLB read APIs) serving state files."""

from lab.cloudemu.server import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator
from lab.cloudemu.state import load_state

__all__ = ["DEFAULT_KEY_ID", "DEFAULT_KEY_SECRET", "CloudEmulator", "load_state"]
