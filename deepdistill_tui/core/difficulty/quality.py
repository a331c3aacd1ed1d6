"""The paper's response filters (docs/PAPER.md section 3): perplexity above 20, and any 20-token n-gram that
occurs more than 20 times across the data.

They decide which responses may be *trained on*: selection leaves them out (so export does too), while
grades, pass rates and CV still count every response, since a response's difficulty signal does not
depend on whether its text is fit to imitate. Tokens are whitespace tokens; the n-gram count is taken
over all of the training teacher's graded responses (the data the selection draws from), every
occurrence counted, so one response that loops a phrase 21 times is caught as well as a phrase
that 21 responses share.

Perplexity comes from the release's ``ppl`` for imported data, and for own samples from a scoring model
the recipe names (``selection.quality.perplexity_model``), computed through llama.cpp in the grade stage.
A response with no perplexity is kept.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty.responses import Responses
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import Emit, PerplexityProgress, PerplexityStarted
from deepdistill_tui.core.recipe import QualityFilters, Recipe
from deepdistill_tui.core.store.database import Store

_MULT = np.uint64(0x9E3779B97F4A7C15)
PPL_BATCH = 64


@dataclass
class Exclusions:
    """Per response row of a ``Responses``: which filter, if any, removes it."""

    perplexity: np.ndarray
    ngram: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.perplexity | self.ngram

    def counts(self) -> dict[str, int]:
        return {"perplexity": int(self.perplexity.sum()), "ngram": int(self.ngram.sum()),
                "removed": int(self.any.sum())}


def ngram_hashes(text: str, n: int, vocab: dict[str, int]) -> np.ndarray:
    """64-bit hashes of every whitespace-token n-gram of ``text`` (a polynomial rolling hash)."""
    ids = np.fromiter((vocab.setdefault(t, len(vocab) + 1) for t in text.split()), dtype=np.uint64)
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping modulo 2^64 is the point
        for j in range(n):
            h = h * _MULT + ids[j : j + len(h)]
    return h


def ngram_flags(texts: list[str], n: int, max_count: int) -> np.ndarray:
    """True for each text holding an n-gram that occurs more than ``max_count`` times in all texts."""
    vocab: dict[str, int] = {}
    per_text = [ngram_hashes(t, n, vocab) for t in texts]
    if not per_text or not any(len(h) for h in per_text):
        return np.zeros(len(texts), dtype=bool)
    values, counts = np.unique(np.concatenate(per_text), return_counts=True)
    frequent = values[counts > max_count]
    if len(frequent) == 0:
        return np.zeros(len(texts), dtype=bool)
    return np.array([bool(np.isin(h, frequent).any()) for h in per_text])


def _texts_and_ppl(store: Store, teacher_id: str, r: Responses) -> tuple[list[str], np.ndarray]:
    """The response text and perplexity of each row of ``r`` (same order)."""
    rows = {(q, p): (text, ppl) for q, p, text, ppl in store.conn.execute(
        "SELECT query_id, pass_index, response, ppl FROM samples WHERE teacher_id = ?", (teacher_id,))}
    found = [rows.get((q, int(p)), ("", None)) for q, p in zip(r.query_ids.tolist(), r.pass_index.tolist(),
                                                                strict=True)]
    return [t for t, _ in found], np.array([np.nan if v is None else v for _, v in found], dtype=float)


def exclusions(store: Store, cfg: QualityFilters, teacher_id: str, r: Responses) -> Exclusions:
    n = len(r.score)
    if cfg.max_perplexity is None and cfg.max_ngram_count is None:
        return Exclusions(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    texts, ppl = _texts_and_ppl(store, teacher_id, r)
    high = np.zeros(n, dtype=bool) if cfg.max_perplexity is None else np.nan_to_num(ppl) > cfg.max_perplexity
    loops = (np.zeros(n, dtype=bool) if cfg.max_ngram_count is None
             else ngram_flags(texts, cfg.ngram, cfg.max_ngram_count))
    return Exclusions(high, loops)


# ---------------------------------------------------------------- perplexity of own samples


def perplexity(logprobs: list[float]) -> float | None:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None


def score_perplexity(store: Store, recipe: Recipe, teacher_id: str, *, emit: Emit,
                     stop: threading.Event | None = None) -> dict[str, Any]:
    """Perplexity of the training teacher's responses that have none, by the recipe's scoring model."""
    from deepdistill_tui.core.teachers.registry import needs_logprobs, open_backend

    name = recipe.selection.quality.perplexity_model
    todo = store.conn.execute(
        "SELECT s.query_id, s.pass_index, q.question, s.response FROM samples s JOIN queries q"
        " USING (query_id) WHERE s.teacher_id = ? AND s.ppl IS NULL ORDER BY s.query_id, s.pass_index",
        (teacher_id,)).fetchall()
    if not name or not todo:
        return {"scored": 0}
    teacher = recipe.teacher(name)
    backend, _ = open_backend(teacher, passes=1, sequences=1)
    try:
        needs_logprobs(backend, teacher, "perplexity")
    except DeepDistillError:
        backend.close()
        raise
    start, done = time.perf_counter(), 0
    emit(PerplexityStarted(len(todo), name))
    try:
        for first in range(0, len(todo), PPL_BATCH):
            if stop is not None and stop.is_set():
                break
            rows = []
            for qid, p, question, response in todo[first : first + PPL_BATCH]:
                value = perplexity(backend.response_logprobs(question, response))
                # No tokens to score: infinity would drop it; 1.0 (certain) keeps it, as "no ppl" does.
                rows.append((1.0 if value is None else value, qid, teacher_id, p))
            with store.write() as conn:
                conn.executemany("UPDATE samples SET ppl = ? WHERE query_id = ? AND teacher_id = ?"
                                 " AND pass_index = ?", rows)
            done += len(rows)
            emit(PerplexityProgress(done, len(todo)))
    finally:
        backend.close()
    return {"scored": done, "model": name, "seconds": round(time.perf_counter() - start, 2)}
