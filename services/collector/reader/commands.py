"""Running the read-only dump tools (iptables-*-save, nft, ipset, ipvsadm-save).

Argv lists only, never a shell; a minimal environment; a time limit; and output bigger
than the limit is refused rather than truncated (half a ruleset would mislead the
simulator more than none). A child forked from a setns thread lives in that namespace.
"""

from __future__ import annotations

import shutil
import subprocess

MAX_OUTPUT_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 10.0
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class CommandError(RuntimeError):
    pass


def available(tool: str) -> bool:
    return shutil.which(tool, path=_ENV["PATH"]) is not None


def run(argv: list[str], *, limit: int = MAX_OUTPUT_BYTES, timeout: float = TIMEOUT_S) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, env=_ENV, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise CommandError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode(errors='replace').strip()[:300]}")
    if len(done.stdout) > limit:
        raise CommandError(f"{argv[0]}: output of {len(done.stdout)} bytes exceeds the {limit}-byte limit")
    return done.stdout.decode(errors="replace")
