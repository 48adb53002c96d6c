"""Kubernetes label selectors (metav1.LabelSelector), compiled once and matched many times."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector the API server would have rejected (unknown operator, missing values)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            # upstream: NotIn also matches objects that do not carry the key at all
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def __str__(self) -> str:
        values = ",".join(sorted(self.values))
        if self.operator == "In":
            return f"{self.key} in ({values})"
        if self.operator == "NotIn":
            return f"{self.key} notin ({values})"
        return self.key if self.operator == "Exists" else f"!{self.key}"


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions ANDed; an empty selector matches everything."""

    labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        if self.empty:
            return "{}"
        parts = [f"{k}={v}" for k, v in self.labels] + [str(r) for r in self.requirements]
        return ",".join(parts)


def compile_selector(raw: Mapping[str, Any] | None) -> LabelSelector:
    """Compile an API-form selector dict; raises SelectorError for what the API would reject."""
    if not raw:
        return LabelSelector()
    labels = tuple(sorted((str(k), str(v)) for k, v in (raw.get("matchLabels") or {}).items()))
    requirements = []
    for expr in raw.get("matchExpressions") or []:
        op = expr.get("operator")
        values = frozenset(str(v) for v in expr.get("values") or [])
        if op not in _OPERATORS:
            raise SelectorError(f"unknown matchExpressions operator {op!r}")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"operator {op} on key {expr.get('key')!r} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"operator {op} on key {expr.get('key')!r} takes no values")
        requirements.append(Requirement(str(expr.get("key")), op, values))
    return LabelSelector(labels, tuple(requirements))


def format_labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
