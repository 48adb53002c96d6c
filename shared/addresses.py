"""Address fields parsed once per distinct text.

Every step of a result carries packets, and every packet two addresses: a stage that reads a
result validates thousands of them, and `ipaddress` parses each in Python (more than half of a
result's validation time). The same few addresses recur across steps and diagnoses, and an
address object is immutable, so the parse of each distinct string is kept and shared.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

from pydantic import IPvAnyAddress, ValidatorFunctionWrapHandler, WrapValidator

MAX_KEPT = 65_536  # distinct strings kept; beyond that, parsed each time as before

_parsed: dict[str, IPv4Address | IPv6Address] = {}


def _cached(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if not isinstance(value, str):
        return handler(value)  # an address object (or junk): validated as before
    address = _parsed.get(value)
    if address is None:
        address = handler(value)  # raises for a string that is no address: nothing kept
        if len(_parsed) < MAX_KEPT:
            _parsed[value] = address
    return address


# validates, serialises and documents exactly as IPvAnyAddress
Address = Annotated[IPvAnyAddress, WrapValidator(_cached)]
