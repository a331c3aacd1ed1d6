"""Import of the released AM-DeepSeek-Distilled-40M JSONL files (docs/PAPER.md section 8).

Each file holds one pass of one teacher over one category: ``{category}_{teacher}_{k}pass.jsonl``. Its
records become rows of the same tables that sampling and grading fill (queries, teachers, samples, grades),
so statistics and selection treat released data and locally sampled data alike. Files stream line by line
in bounded memory; the whole import is one transaction, so a bad line anywhere leaves the store unchanged.

Identity: exactly the same question text in the same category is one query (``am_query_id``); anything
else, a difference of case or the same text in another category's file, is another query. A question met
twice in one file (one teacher's one pass) keeps its first record; the others are counted and reported,
never written over it. The release's own pass rates (``pass_rate_r1``, ...) land in
``released_pass_rates`` beside the ones computed from the grades, and its ``ppl`` in ``samples.ppl``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.data.readers import DEFAULT_MAX_LINE_BYTES, iter_jsonl
from deepdistill_tui.core.data.text import split_response
from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.recipe import CATEGORIES, PAPER_PASS_THRESHOLDS
from deepdistill_tui.core.store.database import Store

AM_DATASET = "AM-DeepSeek-Distilled-40M"
AM_TEACHERS = ("1.5b", "7b", "r1")
_NAME = re.compile(r"^(?P<cat>[a-z]+)_(?P<teacher>[0-9a-z.]+)_(?P<k>\d+)pass\.jsonl$")
BATCH = 5000


@dataclass(frozen=True)
class AmFile:
    path: Path
    category: str
    teacher: str
    pass_index: int  # 0-based; the file's "1pass" is pass 0


@dataclass
class ImportReport:
    files: int = 0
    responses: int = 0
    new_queries: int = 0
    duplicates: int = 0
    per_file: dict[str, int] = field(default_factory=dict)
    duplicates_per_file: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "responses": self.responses, "new_queries": self.new_queries,
                "duplicates": self.duplicates, "per_file": self.per_file,
                "duplicates_per_file": self.duplicates_per_file, "seconds": round(self.seconds, 3),
                "responses_per_s": round(self.responses / self.seconds) if self.seconds else None}


SCORE_RANGE = {"math": (0.0, 1.0), "code": (0.0, 1.0), "if": (0.0, 1.0), "science": (0.0, 5.0),
               "other": (0.0, 1.0)}
"""The paper's verify_score scales (section 3): science is a 0..5 judge, the rest a share."""
MAX_PASSES = 1000


def parse_am_name(path: Path) -> AmFile:
    m = _NAME.match(path.name)
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


def am_query_id(category: str, question: str) -> str:
    """128 bits of sha256 over the category and the exact question text (no normalisation)."""
    return hashlib.sha256(f"{category}\x00{question}".encode()).hexdigest()[:32]


RELEASED_RATES = {"pass_rate_r1": "r1", "pass_rate_7b": "7b", "pass_rate_1.5b": "1.5b"}


def _text(rec: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = rec.get(key)
    if value is None or value == "":
        if required:
            raise InputError(f"{where}: missing required field {key!r}")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{where}: field {key!r} has unexpected type {type(value).__name__}")


def _number(rec: dict[str, Any], key: str, where: str, required: bool = True) -> float | None:
    value = rec.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        raise InputError(f"{where}: field {key!r} must be a finite number, got {value!r:.40}")
    return float(value)


_Q = ("INSERT INTO queries (query_id, question, category, split, ground_truth, test_cases, constraints,"
      " source, origin, created_at) VALUES (?, ?, ?, 'train', ?, ?, ?, ?, 'am-import', ?)"
      " ON CONFLICT(query_id) DO NOTHING")
_S = ("INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning, answer, ppl, created_at)"
      " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(query_id, teacher_id, pass_index) DO NOTHING")
_G = ("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed, status, grader,"
      " grader_version, detail, created_at) VALUES (?, ?, ?, ?, ?, 'ok', 'am-import', ?, ?, ?)"
      " ON CONFLICT(query_id, teacher_id, pass_index) DO NOTHING")
_R = ("INSERT INTO released_pass_rates (query_id, teacher, pass_rate) VALUES (?, ?, ?)"
      " ON CONFLICT(query_id, teacher) DO NOTHING")
_T = ("INSERT INTO teachers (teacher_id, name, backend, model, params, created_at)"
      " VALUES (?, ?, 'am_import', ?, ?, ?) ON CONFLICT(teacher_id) DO NOTHING")


@dataclass(frozen=True)
class _Rows:
    query: tuple[Any, ...]
    sample: tuple[Any, ...]
    grade: tuple[Any, ...]
    released: list[tuple[str, str, float]]


def _rows(f: AmFile, rec: dict[str, Any], where: str, now: float, thresholds: dict[str, float]) -> _Rows:
    question = _text(rec, "question", where, required=True)
    response = _text(rec, "answer", where, required=True)
    assert question is not None and response is not None
    category = f.category
    qid = am_query_id(category, question)
    tid = am_teacher_id(f.teacher)
    score = _number(rec, "verify_score", where)
    assert score is not None
    low, high = SCORE_RANGE[category]
    if not low <= score <= high:  # 7 or -3 would pass or fail a query by itself
        raise InputError(f"{where}: verify_score {score:g} is outside {low:g}..{high:g} for {category}")
    ppl = _number(rec, "ppl", where, required=False)
    reasoning, answer = split_response(response)
    detail = {k: rec[k] for k in ("ppl", *RELEASED_RATES, "model_name", "answer_source")
              if rec.get(k) is not None}
    released = [(qid, teacher, rate) for key, teacher in RELEASED_RATES.items()
                if (rate := _number(rec, key, where, required=False)) is not None]
    return _Rows(
        (qid, question, category, _text(rec, "ground_truth", where), _text(rec, "test_case", where),
         _text(rec, "instruction_constrain", where), _text(rec, "question_source", where), now),
        (qid, tid, f.pass_index, response, reasoning, answer, ppl, now),
        (qid, tid, f.pass_index, score, int(score > thresholds[category]), AM_DATASET,
         json.dumps(detail), now),
        released)


def import_am(store: Store, paths: Iterable[str | Path], *,
              thresholds: dict[str, float] | None = None,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ImportReport:
    """Import AM-format files in one transaction. Re-importing the same files changes nothing."""
    thresholds = {**PAPER_PASS_THRESHOLDS, **(thresholds or {})}
    # A file named twice (or by two spellings of its path) is one file: it adds nothing the second time.
    files = list({Path(p).resolve(): parse_am_name(Path(p)) for p in paths}.values())
    if not files:
        raise InputError("import-am: no files given")
    report = ImportReport(files=len(files))
    start = time.perf_counter()
    now = time.time()
    seen: set[str] = set()
    with store.write() as conn:
        for f in files:
            model = f"{AM_DATASET}/{f.teacher}"
            conn.execute(_T, (am_teacher_id(f.teacher), f.teacher, model,
                              json.dumps({"dataset": AM_DATASET, "teacher": f.teacher}), now))
            n, new_queries, dups = _import_file(conn, f, now, thresholds, seen, max_line_bytes)
            report.per_file[str(f.path)] = n
            report.duplicates_per_file[str(f.path)] = dups
            report.responses += n
            report.new_queries += new_queries
            report.duplicates += dups
    report.seconds = time.perf_counter() - start
    return report


def _import_file(conn: Any, f: AmFile, now: float, thresholds: dict[str, float], seen: set[str],
                 max_line_bytes: int) -> tuple[int, int, int]:
    """Stream one file into the open transaction: (responses and queries new to the store,
    duplicates in the file)."""
    qs: list[tuple[Any, ...]] = []
    ss: list[tuple[Any, ...]] = []
    gs: list[tuple[Any, ...]] = []
    rs: list[tuple[Any, ...]] = []
    in_file: set[str] = set()
    n = new_queries = duplicates = 0

    def flush() -> None:
        nonlocal new_queries, n
        before = conn.total_changes
        conn.executemany(_Q, qs)
        new_queries += conn.total_changes - before
        before = conn.total_changes
        conn.executemany(_S, ss)
        n += conn.total_changes - before  # responses new to the store, not lines read
        conn.executemany(_G, gs)
        conn.executemany(_R, rs)
        for batch in (qs, ss, gs, rs):
            batch.clear()

    for lineno, rec in iter_jsonl(f.path, max_line_bytes):
        rows = _rows(f, rec, f"{f.path}:{lineno}", now, thresholds)
        qid = rows.query[0]
        if qid in in_file:
            duplicates += 1  # the first record of this question in this file stands
            continue
        in_file.add(qid)
        if qid not in seen:
            seen.add(qid)
            qs.append(rows.query)
            rs.extend(rows.released)
        ss.append(rows.sample)
        gs.append(rows.grade)
        if len(ss) >= BATCH:
            flush()
    flush()
    return n, new_queries, duplicates
