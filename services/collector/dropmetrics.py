"""`netdiag agent --drop-metrics`: the node's kernel packet drops as Prometheus counters, by drop
reason, kernel location and namespace (the pod, when a collection named it).

bpftrace counts in a kernel map (`@drops[reason, location, netns] = count()`), so nothing per packet
leaves the kernel; the map is printed every interval and read here. Frees without a reason
(NOT_SPECIFIED: mostly ordinary frees) are not counted. Cost: bench/live.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily
from prometheus_client.registry import Collector

from services.collector.droptrace import DropCounter


class DropMetrics(Collector):
    """A Prometheus collector over a DropCounter: `netdiag_kernel_drops_total{node, reason, location,
    netns, pod}` (netns: 'host' or 'netns:<inode>')."""

    def __init__(self, node: str, counter: DropCounter, host_inode: int) -> None:
        self.node = node
        self.counter = counter
        self.host_inode = host_inode
        self.pods: dict[int, str] = {}  # netns inode → namespace/name, learnt from collections

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("netdiag_kernel_drops", "Packets the kernel dropped (skb:kfree_skb with a "
                                     "reason), counted in the kernel", labels=["node", "reason", "location", "netns",
                                                                               "pod"])
        for (reason, location, inode), count in sorted(self.counter.totals.items()):
            netns = "host" if inode == self.host_inode else f"netns:{inode}"
            family.add_metric([self.node, reason, location, netns, self.pods.get(inode, "")], count)
        yield family

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        REGISTRY.unregister(self)
