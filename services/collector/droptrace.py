"""Kernel drop tracing with bpftrace (Debian's 0.17; it needs BTF, /sys/kernel/btf/vmlinux, and no
kernel headers, unlike BCC).

One long-lived bpftrace per process attaches to `tracepoint:skb:kfree_skb` and prints, for every
freed IPv4 TCP/UDP packet whose source or destination port lies in the reserved probe range (the
filter runs in the kernel: nothing else leaves it), the drop reason, the kernel symbol that freed
it, the network namespace (the device's, else the socket's), the device and the addresses and
ports as the kernel saw them. Compiling and attaching takes seconds on a loaded machine, so it
is paid once at start, never per probe. Agents sharing a process (the embedded lab stack) share
it; each keeps only the events of its own namespaces.

`DropCounter` is the monitoring half: the same tracepoint counted in a kernel map by reason,
location and namespace, printed every interval — no per-packet output at all.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from shared.live import PROBE_PORTS, DropEvent, TracingStatus

log = logging.getLogger("netdiag.droptrace")

BPFTRACE = "bpftrace"
BTF = Path("/sys/kernel/btf/vmlinux")
TRACEFS = Path("/sys/kernel/tracing")
FORMAT = TRACEFS / "events/skb/kfree_skb/format"
STARTUP_TIMEOUT_S = 60.0
KEEP_EVENTS = 4096
PROTOCOLS = {6: "tcp", 17: "udp"}
_REASON = re.compile(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}')

# the packet's IPv4 header from skb->head + network_header; ports from the header's IHL
_PACKET = """
  $skb = (struct sk_buff *)args->skbaddr;
  $h = $skb->head + $skb->network_header;
  $proto = *(uint8 *)($h + 9);
  $t = $h + (*(uint8 *)$h & 0xf) * 4;
  $sport = (*(uint8 *)$t << 8) | *(uint8 *)($t + 1);
  $dport = (*(uint8 *)($t + 2) << 8) | *(uint8 *)($t + 3);
  $ns = $skb->dev->nd_net.net->ns.inum;
  if ($ns == 0) { $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }
"""

TRACE_PROGRAM = """tracepoint:skb:kfree_skb
/args->protocol == 0x0800/
{""" + _PACKET + """
  if (($proto == 6 || $proto == 17) &&
      (($sport >= %(lo)d && $sport <= %(hi)d) || ($dport >= %(lo)d && $dport <= %(hi)d))) {
    printf("D\\t%%llu\\t%%d\\t%%s\\t%%u\\t%%d\\t%%d\\t%%s\\t%%s\\t%%d\\t%%d\\t%%s\\n", nsecs, args->reason,
           ksym(args->location), $ns, $skb->dev->ifindex, $proto, ntop(2, *(uint32 *)($h + 12)),
           ntop(2, *(uint32 *)($h + 16)), $sport, $dport, $skb->dev->name);
  }
}
tracepoint:skb:kfree_skb
/args->protocol == 0x0806/
{
  // ARP: a path whose neighbour cannot be resolved never frees the flow's own packets (they wait in the
  // neighbour queue); the ARP request's drop is the kernel's witness
  $skb = (struct sk_buff *)args->skbaddr;
  $a = $skb->head + $skb->network_header;
  $ns = $skb->dev->nd_net.net->ns.inum;
  printf("A\\t%%llu\\t%%d\\t%%s\\t%%u\\t%%d\\t%%s\\t%%s\\t%%s\\n", nsecs, args->reason, ksym(args->location), $ns,
         $skb->dev->ifindex, ntop(2, *(uint32 *)($a + 14)), ntop(2, *(uint32 *)($a + 24)), $skb->dev->name);
}
BEGIN { printf("READY\\n"); }
"""

COUNT_PROGRAM = """tracepoint:skb:kfree_skb
/args->reason > 2/
{
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = $skb->dev->nd_net.net->ns.inum;
  if ($ns == 0) { $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }
  @drops[args->reason, ksym(args->location), $ns] = count();
}
interval:s:%(interval)d { print(@drops); printf("END\\n"); }
BEGIN { printf("READY\\n"); }
"""


def drop_reasons() -> dict[int, str]:
    """enum skb_drop_reason as this kernel numbers it (the tracepoint's format file)."""
    with contextlib.suppress(OSError):
        return {int(n): name for n, name in _REASON.findall(FORMAT.read_text())}
    return {}


def ensure_tracefs() -> str | None:
    """Mount tracefs where it is missing (the tracepoint needs it); None when usable, else why not."""
    if FORMAT.exists():
        return None
    if not TRACEFS.is_dir():
        return f"{TRACEFS} does not exist"
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True,
                          check=False)
    return None if FORMAT.exists() else f"tracefs is not mounted at {TRACEFS} and mounting failed: " \
        f"{done.stderr.strip() or done.returncode}"


def unavailable_reason() -> str | None:
    """Why tracing cannot run here (no bpftrace, no BTF, no tracefs, no drop reasons), or None."""
    if shutil.which(BPFTRACE) is None:
        return "bpftrace is not installed (Debian package bpftrace)"
    if not BTF.exists():
        return f"the kernel has no BTF ({BTF}): bpftrace cannot type the skb"
    missing = ensure_tracefs()
    if missing:
        return missing
    if "reason" not in FORMAT.read_text():
        return "this kernel's skb:kfree_skb has no drop reason (kernel older than 5.17)"
    return None


class _Bpftrace:
    """One bpftrace child: started, ready (its BEGIN printed), each output line handed to `on_line` by
    a reader thread (so it outlives any one event loop: agents of successive embedded stacks share it)."""

    def __init__(self, program: str, on_line: Callable[[str], None]) -> None:
        self.program = program
        self.on_line = on_line
        self.proc: subprocess.Popen[bytes] | None = None
        self.status = TracingStatus(available=False, reason="not started")
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> TracingStatus:
        """Blocking: spawn bpftrace and wait until its probes are attached."""
        reason = unavailable_reason()
        if reason:
            self.status = TracingStatus(available=False, reason=reason)
            return self.status
        started = time.perf_counter()
        self.proc = subprocess.Popen([BPFTRACE, "-B", "line", "-e", self.program], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="bpftrace-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S) or self.proc.poll() is not None:
            err = self._stderr()
            self.stop()
            self.status = TracingStatus(available=False, reason=f"bpftrace did not attach: {err or 'timed out'}")
            return self.status
        self.status = TracingStatus(available=True, startup_ms=round((time.perf_counter() - started) * 1000, 1))
        return self.status

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        data = self.proc.stderr.read(4096)
        lines = [ln for ln in data.decode(errors="replace").splitlines() if "RLIMIT_MEMLOCK" not in ln]
        return " ".join(lines)[:400]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line == "READY":
                self._ready.set()
                continue
            try:
                self.on_line(line)
            except Exception:  # one odd line must not stop the tracer
                log.debug("unparsed bpftrace line %r", line, exc_info=True)
        if self._ready.is_set() and self.proc is not None:
            self.status = TracingStatus(available=False, reason=f"bpftrace exited ({self.proc.wait()})")
        self._ready.set()  # a start() still waiting learns of the exit now

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None


class DropTracer:
    """The process's probe-flow tracer: started by the first agent that asks, stopped by the last."""

    _shared: DropTracer | None = None
    _lock = threading.Lock()

    def __init__(self, ports: tuple[int, int] = PROBE_PORTS) -> None:
        self.ports = ports
        self.reasons = drop_reasons()
        self.events: deque[DropEvent] = deque(maxlen=KEEP_EVENTS)
        self._bt = _Bpftrace(TRACE_PROGRAM % {"lo": ports[0], "hi": ports[1]}, self._on_line)
        self._users = 0
        self._started = False
        # bpftrace's nsecs is CLOCK_MONOTONIC: events are stamped in wall time, comparable across nodes
        self._offset = time.time() - time.monotonic()

    @classmethod
    def acquire(cls) -> DropTracer:
        """Blocking (run it in a thread): the process's tracer, started by the first caller."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = DropTracer()
            tracer = cls._shared
            tracer._users += 1
            if not tracer._started:
                tracer._started = True
                tracer._bt.start()
            return tracer

    def release(self) -> None:
        with DropTracer._lock:
            self._users -= 1
            if self._users > 0:
                return
            if DropTracer._shared is self:
                DropTracer._shared = None
        self._bt.stop()

    @property
    def status(self) -> TracingStatus:
        return self._bt.status

    def _on_line(self, line: str) -> None:
        if line.startswith("A\t"):
            _, ns, reason, location, inum, ifindex, sender, target, *dev = line.split("\t")
            code = int(reason)
            self.events.append(DropEvent(
                time=int(ns) / 1e9 + self._offset, reason=self.reasons.get(code, str(code)), reason_code=code,
                location=location, netns_inode=int(inum), ifindex=int(ifindex) or None, protocol="arp",
                src=sender, dst=target, sport=0, dport=0, device=(dev[0] if dev else "") or None))
            return
        if not line.startswith("D\t"):
            return
        _, ns, reason, location, inum, ifindex, proto, src, dst, sport, dport, *dev = line.split("\t")
        code = int(reason)
        self.events.append(DropEvent(
            time=int(ns) / 1e9 + self._offset, reason=self.reasons.get(code, str(code)), reason_code=code,
            location=location, netns_inode=int(inum), ifindex=int(ifindex) or None,
            protocol=PROTOCOLS.get(int(proto), proto), src=src, dst=dst, sport=int(sport), dport=int(dport),
            device=(dev[0] if dev else "") or None))

    def matching(self, sport: int, protocol: str, since: float, until: float, inodes: set[int]) -> list[DropEvent]:
        """Events of one probe flow (its source port either way) in [since, until], in `inodes`, and the
        ARP drops of that time there (the requester tells which neighbours its path needed)."""
        return [e for e in self.events if since <= e.time <= until and e.netns_inode in inodes and (
            e.protocol == "arp" or (e.protocol == protocol and sport in (e.sport, e.dport)))]


class DropCounter:
    """`netdiag agent --drop-metrics`: kernel-aggregated drop counts (reason, location, namespace),
    read every `interval` seconds; `totals` holds the latest cumulative counts."""

    _ENTRY = re.compile(r"^@drops\[(\d+), ([^,]+), (\d+)\]: (\d+)$")

    def __init__(self, interval_s: int = 5) -> None:
        self.reasons = drop_reasons()
        self.totals: dict[tuple[str, str, int], int] = {}
        self._pending: dict[tuple[str, str, int], int] = {}
        self.updated = threading.Event()
        self._bt = _Bpftrace(COUNT_PROGRAM % {"interval": interval_s}, self._on_line)

    @property
    def status(self) -> TracingStatus:
        return self._bt.status

    def start(self) -> TracingStatus:
        return self._bt.start()

    def stop(self) -> None:
        self._bt.stop()

    def _on_line(self, line: str) -> None:
        if line == "END":
            self.totals, self._pending = self._pending, {}
            self.updated.set()
            return
        m = self._ENTRY.match(line.strip())
        if m:
            code = int(m.group(1))
            self._pending[(self.reasons.get(code, str(code)), m.group(2), int(m.group(3)))] = int(m.group(4))
