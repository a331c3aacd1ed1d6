"""The bootstrap intervals against an independent computation: the exact bootstrap distribution,
enumerated over every resample of a small problem set."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest

from deepdistill_tui.core.evaluation.intervals import bootstrap_interval, paired_difference, significance
from deepdistill_tui.tui.evaluation import interval_bar


def exact_percentiles(values: list[float], q: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the exact bootstrap distribution of the mean: every multiset of n draws with
    its multinomial probability, no random numbers involved."""
    n = len(values)
    dist: dict[float, float] = {}
    for counts in itertools.product(range(n + 1), repeat=n):
        if sum(counts) != n:
            continue
        weight = factorial(n) / np.prod([factorial(c) for c in counts]) / n**n
        mean = round(sum(c * v for c, v in zip(counts, values, strict=True)) / n, 12)
        dist[mean] = dist.get(mean, 0.0) + weight
    support = sorted(dist)
    cdf = np.cumsum([dist[m] for m in support])
    return tuple(support[int(np.searchsorted(cdf, p - 1e-12))] for p in q)  # type: ignore[return-value]


def test_bootstrap_matches_the_exact_distribution() -> None:
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75]
    lo, hi = bootstrap_interval(values, seed=3, resamples=200_000)
    exact_lo, exact_hi = exact_percentiles(values, (0.025, 0.975))
    step = 0.25 / len(values)  # the mean moves in steps of 1/24: the Monte Carlo lands on one
    assert abs(lo - exact_lo) <= step and abs(hi - exact_hi) <= step, (lo, hi, exact_lo, exact_hi)


def test_paired_difference_and_its_reading() -> None:
    base = [0.0, 0.5, 0.5, 0.0, 1.0, 0.5, 0.0, 0.5] * 25
    better = [min(1.0, b + 0.5) for b in base]  # every problem gains
    delta, lo, hi = paired_difference(base, better, seed=1)
    assert delta == pytest.approx(np.mean(better) - np.mean(base)) and 0 < lo <= delta <= hi
    assert significance(lo, hi).startswith("better")
    same = paired_difference(base, base[::-1], seed=1)
    assert same[1] < 0 < same[2] and significance(same[1], same[2]).startswith("no significant")
    # Seeded: the same inputs give the same interval.
    assert bootstrap_interval(base, seed=9) == bootstrap_interval(base, seed=9)
    with pytest.raises(ValueError):
        bootstrap_interval([], seed=0)


def test_interval_is_drawn_where_it_lies() -> None:
    bar = interval_bar({"pass_at_1": 0.5, "ci_low": 0.25, "ci_high": 0.75}, width=21)
    assert bar.index("├") == 5 and bar.index("●") == 10 and bar.index("┤") == 15


def test_the_faces_print_the_same_interval_text_for_the_same_result() -> None:
    """The CLI's eval table, the app's Evaluate tab and the ablation report: one text per interval."""
    import io

    from rich.console import Console

    from deepdistill_tui.cli.training import print_evals
    from deepdistill_tui.core.evaluation.ablate import table_cells
    from deepdistill_tui.tui.evaluation import delta_text, pct

    delta = {"delta": 0.401, "ci_low": 0.324, "ci_high": 0.473, "problems": 200, "verdict": "better"}
    row = {"model": "student", "k": 4, "problems": 200, "pass_at_1": 0.623, "ci_low": 0.556,
           "ci_high": 0.686, "by_category": {}, "engine": "llama.cpp q8_0", "delta_vs_base": delta}
    out = io.StringIO()
    print_evals(Console(file=out, width=120), [row])
    arm = {**row, "arm": "cv", "responses": 1, "tokens": 1, "steps": 1, "final_loss": None}
    rate, points = "62.3% [55.6, 68.6]", "+40.1 [+32.4, +47.3]"
    assert rate in out.getvalue() and points in out.getvalue()
    assert (pct(row), delta_text(delta)) == (rate, points)
    assert table_cells(arm)[-2:] == [rate, points]
