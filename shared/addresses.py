"""Address fields parsed once per distinct text.

Every step of a result carries packets, and every packet two addresses: a stage that reads a
result validates thousands of them, and `ipaddress` parses each in Python (more than half of a
result's validation time). The same few addresses recur across steps and diagnoses, and an
address object is immutable, so the parse of each distinct string is kept and shared.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

from pydantic import IPvAnyAddress, ValidatorFunctionWrapHandler, WrapValidator

ADDRESS_TYPES = (IPv4Address, IPv6Address)
MAX_KEPT = 65_536  # distinct strings kept per address type; beyond that, parsed each time as before


def parsed_once() -> Callable[[Any, ValidatorFunctionWrapHandler], Any]:
    """A wrap validator for an address type that keeps each distinct string's parse: the field
    validates, serialises and documents exactly as without it. One per type (its own cache)."""
    parsed: dict[str, IPv4Address | IPv6Address] = {}

    def cached(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if type(value) in ADDRESS_TYPES:  # already an address (the simulator builds packets from them): pydantic
            return value  # would turn it into text and parse that again; subclasses (an interface) still validate
        if not isinstance(value, str):
            return handler(value)  # an address object (or junk): validated as before
        address = parsed.get(value)
        if address is None:
            address = handler(value)  # raises for a string that is no address: nothing kept
            if len(parsed) < MAX_KEPT:
                parsed[value] = address
        return address

    return cached


Address = Annotated[IPvAnyAddress, WrapValidator(parsed_once())]
