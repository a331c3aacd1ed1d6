"""Confidence intervals for pass@1 over problems: seeded percentile bootstrap, paired for differences.

pass@1 is a mean over problems of each problem's share of passing answers (of k). Problems are the unit
that varies from one eval set to the next, so problems are what the bootstrap resamples; a paired
interval for trained - base resamples the same problems for both, which removes the between-problem
variance that an unpaired comparison would count twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95


def bootstrap_interval(values: Sequence[float], seed: int, resamples: int = RESAMPLES,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per problem)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no problems to bootstrap over")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(base: Sequence[float], other: Sequence[float], seed: int,
                      resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of other - base, interval low, interval high) over the same problems, in the same order."""
    d = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    lo, hi = bootstrap_interval(d, seed, resamples, level)
    return float(d.mean()), lo, hi


def significance(low: float, high: float, than: str = "the base") -> str:
    """In words, for a difference's interval."""
    if low > 0:
        return f"better than {than} (the 95% interval of the difference is above zero)"
    if high < 0:
        return f"worse than {than} (the 95% interval of the difference is below zero)"
    return f"no significant difference from {than} (the 95% interval of the difference includes zero)"


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval, as a fraction: pass@1, or a difference of two pass@1s.

    The one way every face prints one: a rate as ``62.3% [55.6, 68.6]``, a difference in points as
    ``+40.1 [+32.4, +47.3]``, so that the CLI, the app and the ablation report read the same."""

    estimate: float
    low: float
    high: float

    @classmethod
    def of_rate(cls, row: Mapping[str, Any]) -> Interval:
        """From a result's ``pass_at_1``, ``ci_low`` and ``ci_high`` (an ``evals`` row, ``eval --json``)."""
        return cls(row["pass_at_1"], row["ci_low"], row["ci_high"])

    @classmethod
    def of_difference(cls, row: Mapping[str, Any]) -> Interval:
        """From a comparison's ``delta``, ``ci_low`` and ``ci_high``."""
        return cls(row["delta"], row["ci_low"], row["ci_high"])

    def rate(self) -> str:
        return f"{100 * self.estimate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def points(self) -> str:
        return f"{100 * self.estimate:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
