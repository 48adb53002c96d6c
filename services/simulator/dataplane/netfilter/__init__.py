"""iptables/ip6tables engine: parse `-save` text and ipsets, trace packets through the hooks."""

from services.simulator.dataplane.netfilter.ipset import IpsetStore, parse_ipset_save
from services.simulator.dataplane.netfilter.model import Branch, FlowState, NatRecord, RuleHit, Ruleset
from services.simulator.dataplane.netfilter.parser import IptablesParseError, parse_iptables_save
from services.simulator.dataplane.netfilter.tracer import TraceContext, Tracer, TraceTooLarge, verdict_summary

__all__ = [
    "Branch",
    "FlowState",
    "IpsetStore",
    "IptablesParseError",
    "NatRecord",
    "RuleHit",
    "Ruleset",
    "TraceContext",
    "TraceTooLarge",
    "Tracer",
    "parse_ipset_save",
    "parse_iptables_save",
    "verdict_summary",
]
