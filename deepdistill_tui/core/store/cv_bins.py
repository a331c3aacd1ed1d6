"""Each score summary's CV histogram bin, computed by SQLite as it writes the row, and its numpy twin.

Statistics bin every query's CV (docs/STATS.md). Computing it at read time meant fetching two floats
per query into Python, most of stats' time at a million queries; as stored generated columns of
``score_summaries`` the bin is a small integer SQLite keeps with each write, whatever path made it.

Both sides compare the squared CV with squared edges (SQLite may be built without ``sqrt``) through
the same IEEE operations in the same order, so the twin gives bit for bit the codes SQLite stores.
A CV on an edge belongs to the bin above it (as ``np.histogram`` has it), and such CVs are common:
one pass in five is a CV of exactly 2. Its square comes out of E[x²] - E[x]² an ulp either side of
4, so each squared edge is lowered by a relative ``_SLACK``, far above that noise and far below any
difference between two real scores' CVs.

A code is -1 for an undefined CV (no response, or a mean of 0), 0 for a CV of exactly 0, and
1 + the bin's index otherwise (bin 0 is [0, 0.05)).
"""

from __future__ import annotations

import numpy as np

CV_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
"""Left edges of the CV histogram's bins; the last bin is open."""
_SLACK = 1e-9
_SQUARED = tuple(repr(e * e * (1 - _SLACK)) for e in CV_EDGES[1:])
"""CV_EDGES[1:] squared and lowered by the slack, as SQL literals (repr reads back as the same double)."""
_FLOOR = "1e-12"
"""E[x²] - E[x]² below this (relative to the mean², at least 1) is float noise of equal scores: CV 0."""


def squared_cv_sql(ddof: int) -> str:
    """SQL for the squared CV of a summary row (std with ``ddof`` over the mean), NULL when undefined."""
    mean = "(total / max(n, 1))"
    raw = f"(total_sq / max(n, 1) - {mean} * {mean})"
    var = f"(CASE WHEN {raw} < {_FLOOR} * max({mean} * {mean}, 1.0) THEN 0.0 ELSE {raw} END)"
    population = f"{var} / ({mean} * {mean})"
    value = population if not ddof else f"{population} * n / max(n - {ddof}, 1)"
    return f"CASE WHEN n > 0 AND {mean} > 0 THEN {value} END"


def code_sql(squared: str) -> str:
    """SQL for the code of a squared CV held in column ``squared``."""
    above = " + ".join(f"({squared} >= {s})" for s in _SQUARED)
    return f"CASE WHEN {squared} IS NULL THEN -1 WHEN {squared} = 0 THEN 0 ELSE 1 + {above} END"


def columns_sql() -> str:
    """The generated columns, for ``CREATE TABLE score_summaries``: the squared CV and its code, for
    both ddof values a recipe may ask for."""
    return ",\n".join(
        f"cv_sq{d} REAL GENERATED ALWAYS AS ({squared_cv_sql(d)}) STORED,\n"
        f"cv_bin{d} INTEGER GENERATED ALWAYS AS ({code_sql(f'cv_sq{d}')}) STORED" for d in (0, 1))


def codes(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, ddof: int) -> np.ndarray:
    """The codes SQLite stores, for arrays of (n, total, total_sq)."""
    n = n.astype(np.float64)
    n1 = np.maximum(n, 1.0)
    mean = total / n1
    var = total_sq / n1 - mean * mean
    var = np.where(var < float(_FLOOR) * np.maximum(mean * mean, 1.0), 0.0, var)
    ok = (n > 0) & (mean > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = var / (mean * mean)
        if ddof:
            squared = squared * n / np.maximum(n - ddof, 1.0)
    out = np.full(len(n), -1, dtype=np.int64)
    edges = np.array([float(s) for s in _SQUARED])
    above = (squared[ok, None] >= edges[None, :]).sum(axis=1)
    out[ok] = np.where(squared[ok] == 0, 0, 1 + above)
    return out
