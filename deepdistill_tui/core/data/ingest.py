"""Ingest: queries from the recipe's sources into the ``queries`` table, cleaned (docs/PAPER.md section 1).

Rules run in a fixed order and each removal is counted under its rule: filters (empty, too long, URL,
table, unusual Unicode), exact duplicates, decontamination of training queries against the eval split,
then near-duplicates. The whole ingest is one transaction: bad input anywhere leaves the store unchanged.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from deepdistill_tui.core.data.dedup import Contamination, near_duplicates
from deepdistill_tui.core.data.readers import iter_source
from deepdistill_tui.core.data.released import ImportReport
from deepdistill_tui.core.data.text import (
    has_table,
    has_url,
    normalize,
    query_id,
    unusual_unicode_ratio,
)
from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.recipe import CATEGORIES, DataConfig, Source, resolve_data_path
from deepdistill_tui.core.store.database import Store

RULES = (
    "empty", "too_long", "url", "table", "unusual_unicode",
    "exact_duplicate", "contaminated", "near_duplicate",
)


@dataclass
class Query:
    query_id: str
    question: str
    category: str
    split: str
    ground_truth: str | None
    test_cases: str | None
    constraints: str | None
    source: str | None
    norm: str = field(repr=False, default="")


@dataclass(frozen=True)
class IngestResult(Result):
    """The ingest stage: queries read from the recipe's sources, and released responses imported."""

    ingest: IngestReport | None = None
    import_am: ImportReport | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ingest is not None:
            out["ingest"] = self.ingest.as_dict()
        if self.import_am is not None:
            out["import_am"] = self.import_am.as_dict()
        return out


@dataclass
class IngestReport:
    read: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    inserted: int = 0
    already_present: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_split: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "removed": {r: self.removed.get(r, 0) for r in RULES},
            "kept": self.kept,
            "inserted": self.inserted,
            "already_present": self.already_present,
            "by_category": dict(self.by_category),
            "by_split": dict(self.by_split),
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------ reading and mapping


def _opt_text(value: Any, where: str, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):  # Parquet carries NaN; JSONL refuses it
        raise InputError(f"{where}: column {column!r} is {value}, not a finite number")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{where}: column {column!r} must be a string or number, got {type(value).__name__}")


def _json_field(value: Any, where: str, column: str) -> str | None:
    """Test cases and constraints are stored as JSON text; accept objects or JSON strings."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: column {column!r} is not valid JSON ({exc.msg})") from exc
    if column == "test_cases" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = {"assert": "\n".join(value) + "\n"}  # MBPP style: a list of assert statements
    if column == "test_cases":
        _check_test_cases(value, where)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _check_test_cases(value: Any, where: str) -> None:
    ok = isinstance(value, dict) and (
        isinstance(value.get("assert"), str)
        or (
            isinstance(value.get("stdin_stdout"), list)
            and all(isinstance(c, dict) and isinstance(c.get("input"), str)
                    and isinstance(c.get("output"), str) for c in value["stdin_stdout"])
        )
    )
    if not ok:
        raise InputError(
            f"{where}: test_cases must be {{\"stdin_stdout\": [{{\"input\": str, \"output\": str}}]}}"
            " or {\"assert\": str}"
        )


def _question(rec: dict[str, Any], src: Source, where: str) -> str:
    if src.question_template is not None:
        try:
            return src.question_template.format(**rec)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: question_template: the record has no {exc}") from None
    cols = src.columns
    if cols.question not in rec:
        raise InputError(f"{where}: missing required column {cols.question!r}")
    question = rec[cols.question]
    if not isinstance(question, str):
        raise InputError(f"{where}: column {cols.question!r} must be a string, got {type(question).__name__}")
    return question


def map_record(rec: dict[str, Any], src: Source, where: str) -> Query:
    cols = src.columns
    question = _question(rec, src, where)

    category: str | None = src.category
    if cols.category and rec.get(cols.category) is not None:
        category = str(rec[cols.category]).lower()
    if category is None:
        raise InputError(f"{where}: no category (no {cols.category!r} column and none set on the source)")
    if category not in CATEGORIES:
        raise InputError(f"{where}: unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")

    split = src.split
    if cols.split and rec.get(cols.split) is not None:
        split = str(rec[cols.split])
    source = src.source_name
    if cols.source and rec.get(cols.source) is not None:
        source = str(rec[cols.source])
    ground_truth = _opt_text(rec.get(cols.ground_truth) if cols.ground_truth else None, where,
                             cols.ground_truth or "")
    if ground_truth is not None and src.ground_truth_regex:
        m = re.search(src.ground_truth_regex, ground_truth, re.M | re.S)
        ground_truth = m.group(1).strip() if m else None
    return Query(
        query_id="",
        question=question,
        category=category,
        split=split,
        ground_truth=ground_truth,
        test_cases=_json_field(rec.get(cols.test_cases) if cols.test_cases else None, where,
                               "test_cases"),
        constraints=_json_field(rec.get(cols.constraints) if cols.constraints else None, where,
                                "constraints"),
        source=source,
    )


def read_queries(data: DataConfig) -> Iterator[Query]:
    """Records of every query source; released AM files (format ``am``) go through import-am."""
    for src in data.sources:
        if src.format == "am":
            continue
        path = resolve_data_path(src.path) if src.format != "hf_hub" else src.path
        records = iter_source(path, src.format, hf_split=src.hf_split, hf_config=src.hf_config,
                              max_line_bytes=data.max_line_bytes)
        for n, (row, rec) in enumerate(records, start=1):
            where = f"{path}:{row}" if src.format == "jsonl" else f"{path} row {row}"
            yield map_record(rec, src, where)
            if src.limit and n >= src.limit:
                break


# ------------------------------------------------------------------ rules


def filter_reason(q: Query, data: DataConfig) -> str | None:
    f = data.filters
    text = q.question.strip()
    if len(text) < max(f.min_chars, 1):
        return "empty"
    if len(text) > f.max_chars:
        return "too_long"
    if f.drop_urls and has_url(text):
        return "url"
    if f.drop_tables and has_table(text):
        return "table"
    if unusual_unicode_ratio(text) > f.max_unusual_unicode_ratio:
        return "unusual_unicode"
    return None


def clean(queries: Iterator[Query], data: DataConfig, seed: int, report: IngestReport) -> list[Query]:
    kept: list[Query] = []
    seen: set[str] = set()
    for q in queries:
        report.read += 1
        reason = filter_reason(q, data)
        if reason:
            report.removed[reason] += 1
            continue
        q.norm = normalize(q.question)
        q.query_id = query_id(q.question)
        if q.query_id in seen:
            report.removed["exact_duplicate"] += 1
            continue
        seen.add(q.query_id)
        kept.append(q)

    kept = _decontaminate(kept, data, report)
    if data.dedup.near_dup:
        kept = _drop_near_duplicates(kept, data, seed, report)
    return kept


def _decontaminate(queries: list[Query], data: DataConfig, report: IngestReport) -> list[Query]:
    cfg = data.decontamination
    if not cfg.enabled:
        return queries
    evals = [q for q in queries if q.split != "train"]
    index = Contamination((q.norm for q in evals), cfg.ngram, cfg.max_overlap)
    if not index:
        return queries
    out = []
    flagged = 0
    for q in queries:
        if q.split == "train" and index.is_contaminated(q.norm):
            flagged += 1
            continue
        out.append(q)
    if cfg.embedding_model:
        from deepdistill_tui.core.data.embed import embedding_contaminated

        drop = embedding_contaminated(
            [q.question for q in out if q.split == "train"], [q.question for q in evals],
            cfg.embedding_model, cfg.embedding_threshold,
        )
        train = [q for q in out if q.split == "train"]
        dropped_ids = {train[i].query_id for i in drop}
        flagged += len(dropped_ids)
        out = [q for q in out if q.query_id not in dropped_ids]
    report.removed["contaminated"] += flagged
    return out


def _drop_near_duplicates(queries: list[Query], data: DataConfig, seed: int,
                          report: IngestReport) -> list[Query]:
    d = data.dedup
    # Dedup within each split: an eval problem is never dropped for resembling a training one.
    out: list[Query] = []
    for split in sorted({q.split for q in queries}):
        part = [q for q in queries if q.split == split]
        drop = set(near_duplicates([q.norm for q in part], threshold=d.threshold, shingle=d.shingle,
                                   num_perm=d.num_perm, bands=d.bands, seed=seed))
        report.removed["near_duplicate"] += len(drop)
        out.extend(q for i, q in enumerate(part) if i not in drop)
    return out


# ------------------------------------------------------------------ writing

_INSERT = (
    "INSERT INTO queries (query_id, question, category, split, ground_truth, test_cases,"
    " constraints, source, origin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(query_id) DO NOTHING"
)


def write_queries(store: Store, queries: list[Query], origin: str) -> int:
    now = time.time()
    with store.write() as conn:
        before = conn.total_changes
        conn.executemany(_INSERT, (
            (q.query_id, q.question, q.category, q.split, q.ground_truth, q.test_cases,
             q.constraints, q.source, origin, now)
            for q in queries
        ))
        return conn.total_changes - before


def ingest(store: Store, data: DataConfig, *, seed: int = 0, origin: str = "ingest") -> IngestReport:
    """Read, clean and store every source; all or nothing."""
    start = time.perf_counter()
    report = IngestReport()
    kept = clean(read_queries(data), data, seed, report)
    report.kept = len(kept)
    report.inserted = write_queries(store, kept, origin)
    report.already_present = report.kept - report.inserted
    for q in kept:
        report.by_category[q.category] += 1
        report.by_split[q.split] += 1
    report.seconds = time.perf_counter() - start
    return report
