"""What the AM-DeepSeek-Distilled-40M release is (docs/PAPER.md section 8): its file names, teachers,
score scales and query identity. The import itself, of this release and of others, is ``released.py``.

Each file holds one pass of one teacher over one category: ``{category}_{teacher}_{k}pass.jsonl``.

Identity: exactly the same question text in the same category is one query (``am_query_id``); anything
else, a difference of case or the same text in another category's file, is another query. A question met
twice in one file (one teacher's one pass) keeps its first record; the others are counted and reported,
never written over it. The release's own pass rates (``pass_rate_r1``, ...) land in
``released_pass_rates`` beside the ones computed from the grades, and its ``ppl`` in ``samples.ppl``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.recipe import CATEGORIES

AM_DATASET = "AM-DeepSeek-Distilled-40M"
AM_TEACHERS = ("1.5b", "7b", "r1")
_NAME = re.compile(r"^(?P<cat>[a-z]+)_(?P<teacher>[0-9a-z.]+)_(?P<k>\d+)pass\.(jsonl|parquet)$")


@dataclass(frozen=True)
class AmFile:
    path: Path
    category: str
    teacher: str
    pass_index: int  # 0-based; the file's "1pass" is pass 0


SCORE_RANGE = {"math": (0.0, 1.0), "code": (0.0, 1.0), "if": (0.0, 1.0), "science": (0.0, 5.0),
               "other": (0.0, 1.0)}
"""The paper's verify_score scales (section 3): science is a 0..5 judge, the rest a share."""
MAX_PASSES = 1000


def parse_am_name(path: Path, strict: bool = True) -> AmFile | None:
    """The category, teacher and pass a release file's name gives; a name that is not the release's
    is an error, or None when ``strict`` is off (the rows may carry all three)."""
    m = _NAME.match(path.name)
    if not strict and not m:
        return None
    if (not m or m["cat"] not in CATEGORIES or m["teacher"] not in AM_TEACHERS
            or len(m["k"]) > 4 or not 1 <= int(m["k"]) <= MAX_PASSES):
        raise InputError(
            f"{path}: file name must be CATEGORY_TEACHER_Kpass.jsonl with CATEGORY in "
            f"{'/'.join(CATEGORIES)}, TEACHER in {'/'.join(AM_TEACHERS)}, K in 1..{MAX_PASSES} "
            "(e.g. math_r1_1pass.jsonl)"
        )
    return AmFile(path, m["cat"], m["teacher"], int(m["k"]) - 1)


def am_teacher_id(teacher: str) -> str:
    return f"am-{teacher}"


RELEASED_RATES = {"pass_rate_r1": "r1", "pass_rate_7b": "7b", "pass_rate_1.5b": "1.5b"}
"""The release's own pass rates per row, by the teacher they belong to."""


def am_query_id(category: str, question: str) -> str:
    """128 bits of sha256 over the category and the exact question text (no normalisation)."""
    return hashlib.sha256(f"{category}\x00{question}".encode()).hexdigest()[:32]
