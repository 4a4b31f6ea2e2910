"""Which variant of an alias serves a request: pure functions, tested directly.

Sticky assignment hashes (alias, identity) to a point in [0, 1) and picks the variant whose slice of
the cumulative weights holds it. Variants are laid out in name order, so the same identity gets the
same variant for as long as the weights stay the same, and a weight change moves only the callers
whose point falls in the slices that changed (90/10 -> 80/20 moves exactly the 10% in [0.8, 0.9)).
Callers without an identity get a random point, i.e. are spread by weight.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

_HASH_SPACE = float(2**64)


@dataclass(frozen=True)
class WeightedVariants:
    """An alias's variants in a fixed order with their cumulative weight boundaries in (0, 1]."""

    names: Tuple[str, ...]
    boundaries: Tuple[float, ...]

    @classmethod
    def from_weights(cls, weights: Mapping[str, float]) -> WeightedVariants:
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError("weights must add up to more than 0")
        names, boundaries, running = [], [], 0.0
        for name in sorted(weights):
            if weights[name] <= 0:
                continue
            running += weights[name]
            names.append(name)
            boundaries.append(running / total)
        boundaries[-1] = 1.0  # no rounding gap at the top
        return cls(tuple(names), tuple(boundaries))

    def pick(self, point: float) -> str:
        """The variant whose slice holds `point` (0 <= point < 1)."""
        return self.names[min(bisect_right(self.boundaries, point), len(self.names) - 1)]


def identity_point(alias: str, identity: str) -> float:
    """A stable point in [0, 1) for one caller of one alias (independent across aliases)."""
    digest = hashlib.sha256(f"{alias}\x00{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE


def choose_variant(
    variants: WeightedVariants,
    alias: str,
    identity: Optional[str],
    random_point: Callable[[], float] = random.random,
) -> str:
    point = identity_point(alias, identity) if identity else random_point()
    return variants.pick(point)


def caller_identity(
    sources: Sequence[str],
    header: Callable[[str], Optional[str]],
    user: Optional[object],
    api_key_name: Optional[str],
) -> Optional[str]:
    """The first identity the configured sources yield (header:<name>, user, api_key), tagged with
    its source so a header value never collides with a key name."""
    for source in sources:
        if source.startswith("header:"):
            value = header(source[len("header:") :].lower())
        elif source == "user":
            value = user if isinstance(user, str) else None
        else:
            value = api_key_name
        if value:
            return f"{source}={value}"
    return None


class AliasTable:
    """Aliases of one traffic config, ready for the request path."""

    def __init__(self, aliases: Mapping[str, Mapping[str, float]]):
        self._variants: Dict[str, WeightedVariants] = {
            alias: WeightedVariants.from_weights(weights) for alias, weights in aliases.items()
        }

    def __contains__(self, name: object) -> bool:
        return name in self._variants

    def __bool__(self) -> bool:
        return bool(self._variants)

    @property
    def names(self) -> List[str]:
        return sorted(self._variants)

    def variants_of(self, alias: str) -> WeightedVariants:
        return self._variants[alias]

    def all_variants(self) -> List[str]:
        return sorted({name for v in self._variants.values() for name in v.names})
