"""Synthetic data in the released AM format, for tests and benchmarks (no download needed).

Each query gets a hidden difficulty; each teacher a strength; a response passes with a probability that
rises with strength and falls with difficulty, so pass rates and CVs spread the way real data does.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from deepdistill_tui.core.recipe import CATEGORIES

TEACHER_STRENGTH = {"1.5b": 0.35, "7b": 0.6, "r1": 0.85}
_CATS = CATEGORIES


def _score(rng: random.Random, category: str, p_pass: float) -> float:
    ok = rng.random() < p_pass
    if category == "science":
        return 5.0 if ok else float(rng.randint(0, 4))
    if category == "other":
        return round(rng.uniform(0.72, 1.0), 3) if ok else round(rng.uniform(0.2, 0.69), 3)
    if category == "code" and not ok:
        return round(rng.choice([0.0, 0.2, 0.5, 0.8]), 2)
    return 1.0 if ok else 0.0


def write_am_files(out_dir: Path, n_queries: int, *, categories: tuple[str, ...] = _CATS,
                   teachers: tuple[str, ...] = ("1.5b", "7b", "r1"), passes: int = 4,
                   seed: int = 0, answer_chars: int = 200) -> list[Path]:
    """Write CATEGORY_TEACHER_Kpass.jsonl files; queries are spread over the categories."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    opening = "Let me check each step carefully. "
    text_rng = random.Random(seed + 1)  # apart from the scores' stream, which fixtures depend on
    handles = {}
    for cat in categories:
        for t in teachers:
            for k in range(1, passes + 1):
                handles[cat, t, k] = (out_dir / f"{cat}_{t}_{k}pass.jsonl").open("w", encoding="utf-8")
    try:
        for i in range(n_queries):
            cat = categories[i % len(categories)]
            difficulty = rng.random()
            question = f"[{cat} #{i}] Find the value of x if {i % 97} x + {i % 13} = {i}. Show work."
            for t in teachers:
                p_pass = max(0.0, min(1.0, TEACHER_STRENGTH.get(t, 0.5) + 0.5 - difficulty))
                for k in range(1, passes + 1):
                    score = _score(rng, cat, p_pass)
                    rec = {
                        "question": question,
                        "answer": f"<think>{_reasoning(text_rng, opening, answer_chars)}</think>"
                                  f"<answer>x = {i}</answer>",
                        "question_source": "synthetic", "answer_source": f"synthetic-{t}",
                        "category": cat, "ground_truth": str(i),
                        "test_case": None, "instruction_constrain": None,
                        "verify_score": score, "ppl": round(rng.uniform(1.5, 8.0), 3),
                        "model_name": t,
                    }
                    handles[cat, t, k].write(json.dumps(rec) + "\n")
    finally:
        for fh in handles.values():
            fh.close()
    return sorted(out_dir.glob("*pass.jsonl"))


_VOCAB = ("add", "subtract", "both", "sides", "term", "value", "check", "step", "equation", "so", "then",
          "gives", "divide", "multiply", "coefficient", "constant", "result", "verify", "again", "sum",
          "left", "right", "hence", "therefore", "first", "next")


def _reasoning(rng: random.Random, opening: str, chars: int) -> str:
    """Varied words after a fixed opening, so that responses share no long n-grams (the quality
    filter would rightly drop a data set whose every response repeats one sentence)."""
    words = rng.choices(_VOCAB, k=chars // 5 + 1)
    return (opening + " ".join(words))[:chars]
