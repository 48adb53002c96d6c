"""A TCP proxy between NATS clients and a real nats-server that reads the server's side of the
protocol frame by frame, so a test can lose exactly one answer (the stream's ack of one publish) or
send a client a protocol error, as a flaky network or a misbehaving server would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Match = Callable[[bytes, bytes], bool]  # (control line, payload) → drop this frame?


class NatsProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.dropped: list[bytes] = []
        self._drop: Match | None = None
        self._drop_sent: Match | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> NatsProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for w in list(self._clients):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_next(self, match: Match) -> None:
        """Swallow the next server→client MSG/HMSG frame `match` accepts (one frame, then pass again)."""
        self._drop = match

    def drop_next_sent(self, match: Match) -> None:
        """Swallow the next client→server PUB/HPUB frame `match` accepts: a publish lost on the way."""
        self._drop_sent = match

    async def inject(self, raw: bytes) -> None:
        """Send `raw` to every connected client as if the server had said it."""
        for w in list(self._clients):
            w.write(raw)
            with contextlib.suppress(ConnectionError):
                await w.drain()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._clients.add(writer)
        tasks = [asyncio.create_task(self._frames(reader, up_writer, sent=True)),
                 asyncio.create_task(self._frames(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            w.close()
        self._clients.discard(writer)
        self._tasks.difference_update(tasks)

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: bool = False) -> None:
        """Forward frame by frame; `sent`: the client's side (PUB/HPUB carry payloads), else the server's."""
        with_payload = (b"PUB", b"HPUB") if sent else (b"MSG", b"HMSG")
        while True:
            line = await reader.readuntil(b"\r\n")
            words = line.split()
            payload = b""
            if words and words[0].upper() in with_payload:
                size = int(words[-1])  # the payload's size (HPUB/HMSG: headers included)
                payload = await reader.readexactly(size + 2)
            drop = self._drop_sent if sent else self._drop
            if drop is not None and payload and drop(line, payload):
                if sent:
                    self._drop_sent = None
                else:
                    self._drop = None
                self.dropped.append(payload)
                continue
            writer.write(line + payload)
            await writer.drain()


def stream_ack(stream: str) -> Match:
    """The JetStream publish acknowledgement from `stream` (not a duplicate's)."""
    return lambda _line, payload: f'"stream":"{stream}"'.encode() in payload and b'"duplicate"' not in payload
