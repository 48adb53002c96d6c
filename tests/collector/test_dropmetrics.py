"""Kernel drop counters (`netdiag agent --drop-metrics`): an iptables DROP in a real namespace shows up
as netdiag_kernel_drops_total{reason="NETFILTER_DROP", netns="netns:<inode>"} counted in the kernel."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.collector.dropmetrics import DropMetrics
from services.collector.droptrace import DropCounter
from services.collector.reader import netns
from tests.collector.netns_fixture import sh

pytestmark = pytest.mark.lab


@pytest.fixture()
def dropping() -> Iterator[tuple[str, int]]:
    name = f"ndrop{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP")
        yield name, os.stat(f"/var/run/netns/{name}").st_ino
    finally:
        sh("ip", "netns", "del", name)


def test_drops_are_counted_in_the_kernel_by_reason_location_and_namespace(dropping: tuple[str, int]) -> None:
    name, inode = dropping
    counter = DropCounter(interval_s=1)
    status = counter.start()
    assert status.available, status.reason
    try:
        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(7):
                    with contextlib.suppress(PermissionError):  # OUTPUT's DROP, as sendto(2) reports it
                        s.sendto(b"x", ("127.0.0.1", 9))

        netns.run_in(netns.NetnsRef(f"/var/run/netns/{name}", inode), send)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counter.updated.clear()
            counter.updated.wait(3)
            ours = {k: v for k, v in counter.totals.items() if k[2] == inode}
            if sum(ours.values()) >= 7:
                break
        assert ours and all(reason == "NETFILTER_DROP" for reason, _, _ in ours), counter.totals
        assert sum(ours.values()) == 7, ours
        metrics = DropMetrics("node-x", counter, host_inode=0)
        metrics.pods[inode] = "default/dropper"
        registry = CollectorRegistry()
        registry.register(metrics)
        text = generate_latest(registry).decode()
        assert f'netns="netns:{inode}",node="node-x",pod="default/dropper",reason="NETFILTER_DROP"' in text, text
    finally:
        counter.stop()


def test_tracing_impossible_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """No bpftrace (or no BTF): the tracer does not start and its status names the reason the result
    then states as an assumption."""
    from services.collector import droptrace

    monkeypatch.setattr(droptrace, "BPFTRACE", "bpftrace-not-here")
    status = droptrace.DropTracer()._bt.start()
    assert not status.available and "bpftrace is not installed" in (status.reason or "")
    monkeypatch.setattr(droptrace, "BPFTRACE", "bpftrace")
    monkeypatch.setattr(droptrace, "BTF", droptrace.Path("/nonexistent/vmlinux"))
    status = droptrace.DropCounter().start()
    assert not status.available and "no BTF" in (status.reason or "")
