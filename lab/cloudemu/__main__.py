"""`python -m lab.cloudemu --state FILE --port N [--keys id:secret]`"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

from lab.cloudemu.server import EmulatorState, load_keys, make_app
from lab.cloudemu.state import load_state


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.cloudemu", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="state file (see docs/cloud.md)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--keys", help="id:secret[,id:secret] accepted AccessKeys (default: the emulator key)")
    args = parser.parse_args()
    emu = EmulatorState(state=load_state(args.state), keys=load_keys(args.keys))
    web.run_app(make_app(emu), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
