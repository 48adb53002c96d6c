"""Blobs named by their content: put once, referenced by every diagnosis that carries the same
bytes (the node dumps and cloud inventory of a snapshot are the same for every request of a
batch), and decoded once by the reader.

A ref is put again after REPUT_S, so the object outlives the results bucket's TTL counted from
the last diagnosis that used it, not the first.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.bus import Bus
from shared.schemas import BlobRef

T = TypeVar("T")
REPUT_S = 600.0


class ContentBlobs:
    """`await blobs.put(data)`: the ref of `<prefix>/<sha256>`, stored once per REPUT_S."""

    def __init__(self, bus: Bus, prefix: str, size: int = 64) -> None:
        self.bus, self.prefix, self.size = bus, prefix, size
        self._refs: OrderedDict[str, tuple[BlobRef, float]] = OrderedDict()

    async def put(self, data: bytes) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        known = self._refs.get(digest)
        if known is not None and time.monotonic() - known[1] < REPUT_S:
            self._refs.move_to_end(digest)
            return known[0]
        ref = await self.bus.put_blob(f"{self.prefix}/{digest}", data)
        self._refs[digest] = (ref, time.monotonic())
        while len(self._refs) > self.size:
            self._refs.popitem(last=False)
        return ref


class Decoded(Generic[T]):
    """Decoded blobs by digest (least recently used dropped past `size`): a dump or inventory
    that many diagnoses share is fetched and parsed once."""

    def __init__(self, decode: Callable[[bytes], T], size: int = 32) -> None:
        self.decode, self.size = decode, size
        self._items: OrderedDict[str, T] = OrderedDict()

    async def get(self, bus: Bus, ref: BlobRef) -> T:
        item = self._items.get(ref.sha256)
        if item is not None:
            self._items.move_to_end(ref.sha256)
            return item
        item = self.decode(await bus.get_blob(ref))  # get_blob checks the digest: the key is honest
        self._items[ref.sha256] = item
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return item

    def clear(self) -> None:
        """Forget every decoded blob (the next `get` fetches from the store again)."""
        self._items.clear()
