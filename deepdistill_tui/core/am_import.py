"""Import of the released AM-DeepSeek-Distilled-40M JSONL files (PAPER.md section 8).

Each file holds one pass of one teacher over one category: ``{category}_{teacher}_{k}pass.jsonl``. Its
records become rows of the same tables that sampling and grading fill (queries, teachers, samples, grades),
so statistics and selection treat released data and locally sampled data alike. Files stream line by line
in bounded memory; the whole import is one transaction, so a bad line anywhere leaves the store unchanged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.readers import DEFAULT_MAX_LINE_BYTES, iter_jsonl
from deepdistill_tui.core.recipe import CATEGORIES, PAPER_PASS_THRESHOLDS
from deepdistill_tui.core.store import Store
from deepdistill_tui.core.text import query_id, split_response

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
    per_file: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "responses": self.responses, "new_queries": self.new_queries,
                "per_file": self.per_file, "seconds": round(self.seconds, 3),
                "responses_per_s": round(self.responses / self.seconds) if self.seconds else None}


def parse_am_name(path: Path) -> AmFile:
    m = _NAME.match(path.name)
    if not m or m["cat"] not in CATEGORIES or m["teacher"] not in AM_TEACHERS or int(m["k"]) < 1:
        raise InputError(
            f"{path}: file name must be CATEGORY_TEACHER_Kpass.jsonl with CATEGORY in "
            f"{'/'.join(CATEGORIES)}, TEACHER in {'/'.join(AM_TEACHERS)}, K >= 1 "
            "(e.g. math_r1_1pass.jsonl)"
        )
    return AmFile(path, m["cat"], m["teacher"], int(m["k"]) - 1)


def am_teacher_id(teacher: str) -> str:
    return f"am-{teacher}"


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


def _score(rec: dict[str, Any], where: str) -> float:
    value = rec.get("verify_score")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: field 'verify_score' must be a number, got {value!r:.40}")
    return float(value)


_Q = ("INSERT INTO queries (query_id, question, category, split, ground_truth, test_cases, constraints,"
      " source, origin, created_at) VALUES (?, ?, ?, 'train', ?, ?, ?, ?, 'am-import', ?)"
      " ON CONFLICT(query_id) DO NOTHING")
_S = ("INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning, answer, created_at)"
      " VALUES (?, ?, ?, ?, ?, ?, ?)"
      " ON CONFLICT(query_id, teacher_id, pass_index) DO UPDATE SET response = excluded.response,"
      " reasoning = excluded.reasoning, answer = excluded.answer")
_G = ("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed, status, grader,"
      " grader_version, detail, created_at) VALUES (?, ?, ?, ?, ?, 'ok', 'am-import', ?, ?, ?)"
      " ON CONFLICT(query_id, teacher_id, pass_index) DO UPDATE SET"
      " verify_score = excluded.verify_score, passed = excluded.passed, detail = excluded.detail")
_T = ("INSERT INTO teachers (teacher_id, name, backend, model, params, created_at)"
      " VALUES (?, ?, 'am_import', ?, ?, ?) ON CONFLICT(teacher_id) DO NOTHING")


def _rows(f: AmFile, rec: dict[str, Any], where: str, now: float,
          thresholds: dict[str, float]) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    question = _text(rec, "question", where, required=True)
    response = _text(rec, "answer", where, required=True)
    assert question is not None and response is not None
    category = f.category
    qid = query_id(question)
    tid = am_teacher_id(f.teacher)
    score = _score(rec, where)
    reasoning, answer = split_response(response)
    detail = {k: rec[k] for k in ("ppl", "pass_rate_r1", "pass_rate_7b", "pass_rate_1.5b",
                                  "model_name", "answer_source") if rec.get(k) is not None}
    q_row = (qid, question, category, _text(rec, "ground_truth", where),
             _text(rec, "test_case", where), _text(rec, "instruction_constrain", where),
             _text(rec, "question_source", where), now)
    s_row = (qid, tid, f.pass_index, response, reasoning, answer, now)
    g_row = (qid, tid, f.pass_index, score, int(score > thresholds[category]), AM_DATASET,
             json.dumps(detail), now)
    return q_row, s_row, g_row


def import_am(store: Store, paths: Iterable[str | Path], *,
              thresholds: dict[str, float] | None = None,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ImportReport:
    """Import AM-format files in one transaction. Re-importing the same files changes nothing."""
    thresholds = {**PAPER_PASS_THRESHOLDS, **(thresholds or {})}
    files = [parse_am_name(Path(p)) for p in paths]
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
            n, new_queries = _import_file(conn, f, now, thresholds, seen, max_line_bytes)
            report.per_file[str(f.path)] = n
            report.responses += n
            report.new_queries += new_queries
    report.seconds = time.perf_counter() - start
    return report


def _import_file(conn: Any, f: AmFile, now: float, thresholds: dict[str, float], seen: set[str],
                 max_line_bytes: int) -> tuple[int, int]:
    """Stream one file into the open transaction: (responses, queries new to the store)."""
    qs: list[tuple[Any, ...]] = []
    ss: list[tuple[Any, ...]] = []
    gs: list[tuple[Any, ...]] = []
    n = 0
    new_queries = 0

    def flush() -> None:
        nonlocal new_queries
        before = conn.total_changes
        conn.executemany(_Q, qs)
        new_queries += conn.total_changes - before
        conn.executemany(_S, ss)
        conn.executemany(_G, gs)
        qs.clear()
        ss.clear()
        gs.clear()

    for lineno, rec in iter_jsonl(f.path, max_line_bytes):
        q_row, s_row, g_row = _rows(f, rec, f"{f.path}:{lineno}", now, thresholds)
        if q_row[0] not in seen:
            seen.add(q_row[0])
            qs.append(q_row)
        ss.append(s_row)
        gs.append(g_row)
        n += 1
        if len(ss) >= BATCH:
            flush()
    flush()
    return n, new_queries
