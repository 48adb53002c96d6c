"""nftables engine: parse `nft -j list ruleset`, evaluate packets through base chains (see hooks.py)."""

from services.simulator.dataplane.nftables.evaluator import NftEvaluator, unsupported_rules
from services.simulator.dataplane.nftables.model import NftChain, NftRule, NftRuleset, NftSet, NftTable
from services.simulator.dataplane.nftables.parser import NftParseError, parse_nft_json

__all__ = [
    "NftChain",
    "NftEvaluator",
    "NftParseError",
    "NftRule",
    "NftRuleset",
    "NftSet",
    "NftTable",
    "parse_nft_json",
    "unsupported_rules",
]
