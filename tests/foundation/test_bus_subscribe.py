"""Bus.subscribe returns only once the server holds the subscription.

Without it a node agent reported ready while its SUB still sat in nats-py's write queue, and a
collect request sent at once from another connection got "no responders" (seen in CI under
load). The server's own protocol trace is the judge: a PING that follows the SUB on the wire
must have been answered before subscribe() returned.
"""

from __future__ import annotations

from pathlib import Path

from shared.bus import Bus
from shared.config import Settings
from shared.natsserver import NatsServer


async def test_subscribe_returns_after_the_server_has_the_sub(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", extra_args=["-V"])  # -V: protocol trace into nats-server.log
    url = server.start()
    bus = await Bus.connect(url, name="subscribe-test", settings=Settings(nats_url=url))
    try:
        await bus.subscribe("netdiag.test.ready", queue="q")
        trace = (tmp_path / "nats" / "nats-server.log").read_text().splitlines()
        mine = [line for line in trace if "netdiag-subscribe-test" in line]
        sub = next(i for i, line in enumerate(mine) if "<<- [SUB netdiag.test.ready q" in line)
        answered_pings = [i for i, line in enumerate(mine) if "->> [PONG]" in line]
        assert answered_pings and answered_pings[-1] > sub, "\n".join(mine[-12:])
    finally:
        await bus.close()
        server.stop()
