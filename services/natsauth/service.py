"""The `netdiag nats-auth` process: runs the NATS auth callout for node agents (`serve`), or prints a
fresh issuer account nkey (seed and public key) for the NATS configuration (`keygen`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from kubernetes.config import ConfigException

from services.natsauth import natsjwt
from services.natsauth.handler import AUTH_SUBJECT, AgentAuthorizer, serve_callout
from shared.bus import BusUnavailable, connect_core
from shared.config import Settings
from shared.logs import setup_logging
from shared.service import EXIT_BUS_LOST, BusLost
from shared.telemetry import setup_process

log = logging.getLogger("netdiag.natsauth")


async def serve(settings: Settings, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
    """Answer authorization requests until `stop` (default: SIGINT/SIGTERM); `ready` is set once subscribed."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    authorizer = AgentAuthorizer.from_settings(settings)
    setup_process("nats-auth", settings)
    lost = asyncio.Event()  # the connection ended for good (not by us): exit, to be restarted
    closing = False

    async def closed() -> None:
        if not closing:
            lost.set()

    nc = await connect_core(settings.nats_url, "nats-auth", settings, timeout=10, closed_cb=closed)
    try:
        await serve_callout(nc, authorizer)
        log.info("answering %s as issuer %s for %s", AUTH_SUBJECT, authorizer.issuer_public_key,
                 settings.nats_auth_agent_user)
        if ready is not None:
            ready.set()
        ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        for end in ends:
            end.cancel()
        if lost.is_set():
            raise BusLost(f"the NATS connection was closed for good: {nc.last_error}")
    finally:
        closing = True
        await nc.close()


def keygen() -> int:
    seed = natsjwt.new_seed()
    print(f"seed: {seed.decode()}\npublic key: {natsjwt.public_key(natsjwt.keypair(seed))}")
    return 0


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("action", nargs="?", choices=["serve", "keygen"], default="serve",
                   help="serve (default) or keygen: print a new issuer account nkey")
    p.add_argument("--nats", dest="nats_url", help="NATS URL (env NETDIAG_NATS_URL)")
    p.add_argument("--kubeconfig", help="the Kubernetes API for TokenReviews (default: in-cluster)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return keygen()
    settings = Settings.from_env(nats_url=args.nats_url, kubeconfig=args.kubeconfig)
    try:
        asyncio.run(serve(settings))
    except (ValueError, OSError, ConfigException) as exc:  # missing/invalid configuration (never echoes the seed)
        print(f"netdiag nats-auth: {exc}", file=sys.stderr)
        return 3
    except BusUnavailable as exc:
        print(f"netdiag nats-auth: {exc}", file=sys.stderr)
        return 4
    except BusLost as exc:
        print(f"netdiag nats-auth: {exc}; exiting so the process is restarted", file=sys.stderr)
        return EXIT_BUS_LOST
    return 0


def main(argv: list[str] | None = None) -> None:
    p = build_parser(argparse.ArgumentParser(prog="python -m services.natsauth", description=__doc__))
    p.add_argument("--log-level")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
