"""The paper's quality filters: frequent n-grams and perplexity keep responses out of selection, and
never change a grade or a CV."""

from __future__ import annotations

import math
from typing import Any

import pytest

from deepdistill_tui.core.difficulty.quality import ngram_flags, perplexity, score_perplexity
from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.difficulty.stats import compute_stats
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from tests.test_select import put, recipe

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"
         " tau upsilon")


def test_ngram_count_is_across_the_data_and_within_a_response() -> None:
    twenty = WORDS  # exactly 20 tokens
    filler = [f"answer number {i} is unlike the others" for i in range(30)]
    looping = " ".join([twenty] * 21)  # one response, 21 occurrences
    assert ngram_flags([looping, *filler], 20, 20).tolist() == [True] + [False] * 30
    shared21 = [f"intro {i} {twenty} outro" for i in range(21)]
    assert ngram_flags(shared21 + filler, 20, 20).tolist() == [True] * 21 + [False] * 30
    shared20 = shared21[:20]  # exactly 20 occurrences is allowed: "more than 20" is dropped
    assert not ngram_flags(shared20 + filler, 20, 20).any()
    assert not ngram_flags(["short text", ""], 20, 20).any()


def test_texts_are_read_once_when_no_ngram_can_be_frequent() -> None:
    """The exact count is a second read of every text; when no cell of the sketch passes the limit,
    no n-gram can, and the second read would find nothing."""
    reads = []

    def texts(rare: list[str]) -> Any:
        def again() -> list[str]:
            reads.append(1)
            return rare
        return again

    rare = [f"{WORDS} number {i}" for i in range(30)]  # one 20-gram in 30 texts: under 50
    assert not ngram_flags(texts(rare), 20, 50).any()
    assert len(reads) == 1
    reads.clear()
    assert ngram_flags(texts(rare), 20, 20).all()  # over 20: both reads, all flagged
    assert len(reads) == 2


def test_token_ids_are_the_whitespace_tokens_of_the_bytes_one_id_each() -> None:
    """The vectorised ids split as bytes.split() does (ASCII whitespace only, so a no-break space or
    \x1c stays inside a token), and equal tokens, only equal tokens, share an id, across texts."""
    import random

    from deepdistill_tui.core.difficulty.quality import _token_ids

    rng = random.Random(5)
    pieces = ["a", "b", "ab", "é", "日本", "\x00", "\ud800", "\xa0", "\x1c", " ", "  ", "\t", "\n",
              "\r", "\x0b", "\x0c"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25))) for _ in range(2000)]
    ids, counts = _token_ids(texts)
    tokens = [t.encode("utf-8", "surrogatepass").split() for t in texts]
    assert counts.tolist() == [len(t) for t in tokens]
    first: dict[bytes, int] = {}
    for token, i in zip([x for t in tokens for x in t], ids.tolist(), strict=True):
        assert first.setdefault(token, i) == i
    assert len(set(first.values())) == len(first) > 500


def test_filtered_responses_leave_selection_but_not_the_cv(store: Store) -> None:
    # q1 is challenging (scores 1, 0, 1, 1); its pass 0 has a perplexity of 50, pass 2 of 3.
    put(store, {("q1", "r1"): [1, 0, 1, 1], ("q2", "r1"): [1, 0, 1, 0]})
    with store.write() as conn:
        conn.execute("UPDATE samples SET ppl = 50 WHERE query_id = 'q1' AND pass_index = 0")
        conn.execute("UPDATE samples SET ppl = 3 WHERE query_id = 'q1' AND pass_index = 2")
    r = recipe(training_teacher="r1", difficulty_teachers=[])
    [sel] = run_selection(store, r, "s")
    kept = sorted((q, p) for q, _, p, _ in sel.members)
    assert kept == [("q1", 2), ("q1", 3), ("q2", 0), ("q2", 2)]
    assert sel.counts["quality_filters"] == {"perplexity": 1, "ngram": 0, "removed": 1}
    assert sel.counts["queries"]["challenging"] == 2  # q1's CV still counts all four scores
    stats = compute_stats(store, r, lengths=False)
    assert stats["quality_filters"]["perplexity"] == 1
    off = recipe(training_teacher="r1", difficulty_teachers=[], quality={"max_perplexity": None})
    [sel] = run_selection(store, off, "s")
    assert len(sel.members) == 5


def tiny_with_scorer(**quality: Any) -> Recipe:
    data = load_recipe("tiny").model_dump()
    data["selection"]["quality"] = {"perplexity_model": "smollm2-135m", **quality}
    return Recipe.model_validate(data)


def test_perplexity_through_llama_cpp(store: Store) -> None:
    """SmolLM2 scores a fluent answer as far more likely than word salad; the grade stage's scorer
    fills samples.ppl for the training teacher's responses."""
    from deepdistill_tui.core.teachers.registry import open_backend

    r = tiny_with_scorer()
    backend, _ = open_backend(r.teacher("smollm2-135m"), passes=1, sequences=1)
    try:
        fluent = backend.response_logprobs("What is 2 + 3?", "2 + 3 = 5. The answer is 5.")  # type: ignore[attr-defined]
        salad = backend.response_logprobs("What is 2 + 3?", "zebra quantum fjord 5 purple (( ]] teapot")  # type: ignore[attr-defined]
    finally:
        backend.close()
    assert len(fluent) > 5 and all(lp <= 0 for lp in fluent)
    p_fluent, p_salad = perplexity(fluent), perplexity(salad)
    assert p_fluent is not None and p_salad is not None and p_fluent < p_salad / 5, (p_fluent, p_salad)
    put(store, {("q1", "gemma3-270m"): [1, 0]})
    result = score_perplexity(store, r, "id-gemma3-270m", emit=lambda e: None)
    assert result["scored"] == 2
    values = [v for (v,) in store.conn.execute("SELECT ppl FROM samples ORDER BY pass_index")]
    assert all(v is not None and math.isfinite(v) and v >= 1 for v in values)
    assert score_perplexity(store, r, "id-gemma3-270m", emit=lambda e: None)["scored"] == 0


def test_scorer_must_be_a_llama_cpp_teacher() -> None:
    data = load_recipe("tiny").model_dump()
    data["selection"]["quality"] = {"perplexity_model": "nobody"}
    with pytest.raises(ValueError, match="unknown teacher"):
        Recipe.model_validate(data)


def test_the_sketch_keeps_the_flags_exact_and_the_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a sketch of 2^15 cells and 64-text batches, texts whose exact n-gram set takes five
    times the sketch still get exactly the flags a full count gives (collisions only add candidates,
    which the exact second pass clears), in memory set by the sketch and the batch."""
    import random
    import tracemalloc
    from collections import Counter

    from deepdistill_tui.core.difficulty import quality

    monkeypatch.setattr(quality, "SKETCH_BITS", 15)
    monkeypatch.setattr(quality, "BATCH_TEXTS", 64)
    rng = random.Random(7)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(3000)]
    phrase = " ".join(f"loop{i}" for i in range(8))
    for i in rng.sample(range(3000), 9):  # one phrase in 9 texts: frequent at n=8, max 8
        texts[i] += " " + phrase
    texts[5] += (" " + phrase) * 3  # and a text that repeats it
    counts = Counter(tuple(t.split()[j : j + 8]) for t in texts for j in range(len(t.split()) - 7))
    truth = [any(counts[tuple(t.split()[j : j + 8])] > 8 for j in range(len(t.split()) - 7)) for t in texts]
    assert 9 <= sum(truth) <= 10
    tracemalloc.start()
    got = quality.ngram_flags(texts, 8, 8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert got.tolist() == truth
    windows = sum(len(t.split()) - 7 for t in texts)
    assert peak < windows * 16 / 4, (peak, windows * 16)  # a quarter of holding every hash and owner
