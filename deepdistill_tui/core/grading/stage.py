"""Grading (docs/PAPER.md section 3): a verify_score for every response, by category.

math: Math-Verify in killable worker processes; code: the bubblewrap sandbox; if: constraint checks;
science and other: an LLM judge through any teacher backend. Every response first passes the repetition
filter and, when the recipe asks for it, the format filter (reasoning and a final answer both present).
The same ``Grader`` serves ``grade`` (the store) and ``grade-file`` (JSONL in, JSONL out).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdistill_tui import __version__
from deepdistill_tui.core.data.readers import iter_jsonl
from deepdistill_tui.core.data.text import split_response
from deepdistill_tui.core.errors import InputError, RecipeError
from deepdistill_tui.core.grading.base import GraderKind, GradingEnv, Item, Verdict
from deepdistill_tui.core.grading.code_grader import code_tests
from deepdistill_tui.core.grading.judge import format_problem
from deepdistill_tui.core.grading.registry import FALLBACK, GRADERS
from deepdistill_tui.core.grading.sandbox.host import Limits
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.pipeline.events import Emit, GradeProgress, GradeStarted, Waiting, noop
from deepdistill_tui.core.recipe import CATEGORIES, GradingConfig, Recipe
from deepdistill_tui.core.store.database import Store, lock_held, stage_lock
from deepdistill_tui.core.teachers.base import Backend

CHUNK = 256
NOT_GRADED = ("sandbox_unavailable", "sandbox_error")
"""Statuses of grades that ran no code: stored so that stats and the app show them, graded again by the
next ``grade``, and counted apart by ``eval`` rather than as failures."""


@dataclass
class Grade:
    verify_score: float | None
    passed: bool
    status: str
    grader: str
    grader_version: str
    seconds: float
    detail: str


FILTER = "filter"
"""The grader name stored for a response the format filter scored 0 before any kind saw it."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def kinds_of(cfg: GradingConfig) -> dict[str, str]:
    """Category -> grader kind, checked against the registry."""
    for category, kind in cfg.graders.items():
        if kind not in GRADERS:
            raise RecipeError(f"recipe key grading.graders.{category}: unknown grader {kind!r}; "
                             f"expected one of {', '.join(GRADERS)}")
    return {str(category): kind for category, kind in cfg.graders.items()}


class Grader:
    """Grades items of any category, each by its category's kind; yields (item, grade) in completion
    order. Kinds start when first needed and close with the grader."""

    def __init__(self, cfg: GradingConfig, *, workers: int | None = None,
                 judge: Callable[[], Backend] | None = None) -> None:
        self.cfg = cfg
        self.workers = workers or cfg.workers or default_workers()
        self.by_category = kinds_of(cfg)
        limits = Limits(wall_s=cfg.code_timeout_s, cpu_s=max(1, int(cfg.code_timeout_s)),
                        memory_mb=cfg.code_memory_mb)
        self.env = GradingEnv(cfg, self.workers, limits, judge)
        self._kinds: dict[str, GraderKind] = {}
        self._filter_version = f"deepdistill-tui {__version__}"

    def kind(self, name: str) -> GraderKind:
        if name not in self._kinds:
            self._kinds[name] = GRADERS[name](self.env)
        return self._kinds[name]

    def close(self) -> None:
        for kind in self._kinds.values():
            kind.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _grade(self, item: Item, kind: GraderKind | None, v: Verdict, seconds: float) -> Grade:
        passed = v.score is not None and v.score > self.cfg.threshold(item.category)
        name, grader_version = (kind.name, kind.version()) if kind else (FILTER, self._filter_version)
        return Grade(v.score, passed, v.status, name, grader_version, round(seconds, 4), v.detail)

    def _route(self, item: Item) -> str | None:
        name = self.by_category.get(item.category)
        if name is None:
            return None
        return name if self.kind(name).accepts(item) else FALLBACK

    def grade(self, items: Iterable[Item]) -> Iterator[tuple[Item, Grade]]:
        batches: dict[str, list[Item]] = {name: [] for name in GRADERS}
        for item in items:
            # The paper's other filters (perplexity, frequent n-grams) remove responses from selection
            # and leave the grade alone: see core/difficulty/quality.py.
            problem = format_problem(item.reasoning, item.answer) if self.cfg.require_reasoning else None
            name = self._route(item)
            if problem is not None:
                yield item, self._grade(item, None, Verdict(0.0, "wrong_format", problem), 0.0)
            elif name is None:
                yield item, self._grade(item, self.kind(FALLBACK),
                                        Verdict(None, "error", f"unknown category {item.category!r}"), 0.0)
            else:
                batches[name].append(item)
        for name, batch in batches.items():
            if batch:
                kind = self.kind(name)
                for scored in kind.grade(batch):
                    yield scored.item, self._grade(scored.item, kind, scored.verdict, scored.seconds)


# ---------------------------------------------------------------- the store


_UNGRADED = (
    "SELECT s.query_id, s.teacher_id, s.pass_index, q.category, q.question, s.response, s.reasoning,"
    " s.answer, q.ground_truth, q.test_cases, q.constraints FROM samples s"
    " JOIN queries q ON q.query_id = s.query_id"
    " LEFT JOIN grades g ON g.query_id = s.query_id AND g.teacher_id = s.teacher_id"
    f"  AND g.pass_index = s.pass_index WHERE g.query_id IS NULL OR g.status IN {NOT_GRADED}"
    " ORDER BY s.query_id, s.teacher_id, s.pass_index"
)
# A grade is final, except one that ran no code (no sandbox here, or one that would not start): the
# next `grade` replaces it.
_INSERT = (
    "INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed, status, grader,"
    " grader_version, seconds, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(query_id, teacher_id, pass_index) DO UPDATE SET verify_score = excluded.verify_score,"
    " passed = excluded.passed, status = excluded.status, grader = excluded.grader,"
    " grader_version = excluded.grader_version, seconds = excluded.seconds, detail = excluded.detail,"
    f" created_at = excluded.created_at WHERE grades.status IN {NOT_GRADED}"
)


def ungraded(store: Store) -> list[Item]:
    return [Item((q, t, p), cat, question, resp, reasoning, answer, gt, tc, cons)
            for q, t, p, cat, question, resp, reasoning, answer, gt, tc, cons
            in store.conn.execute(_UNGRADED)]


def sampler_running(db_path: Path) -> bool:
    """Is a sampler holding the cores right now? Then grading takes one of them, not all."""
    return lock_held(db_path, "sampler")


def judge_factory(recipe: Recipe) -> Callable[[], Backend] | None:
    name = recipe.grading.judge_teacher
    if not name:
        return None

    def make() -> Backend:
        from deepdistill_tui.core.teachers.registry import open_backend

        return open_backend(recipe.teacher(name), passes=1, sequences=1)[0]

    return make


@dataclass(frozen=True)
class GradeResult(Result):
    graded: int
    passed: int
    by_status: dict[str, int]
    seconds: float
    perplexity: dict[str, Any] | None = None
    """The perplexity filter's scoring of the training teacher, when the recipe asks for it."""

    def summary(self) -> dict[str, Any]:
        out = {"graded": self.graded, "passed": self.passed, "by_status": self.by_status,
               "seconds": self.seconds}
        return out if self.perplexity is None else {**out, "perplexity": self.perplexity}


def grade_store(store: Store, recipe: Recipe, *, emit: Emit,
                stop: threading.Event | None = None, workers: int | None = None) -> GradeResult:
    """Grade every ungraded sample; results land in transactions of CHUNK grades. One grader per store
    at a time: a second one waits, then grades what the first left (nothing is graded twice)."""
    with stage_lock(store.path, "grader",
                    lambda message: emit(Waiting("grade", message))):
        return _grade_store(store, recipe, emit=emit, stop=stop, workers=workers)


def _grade_store(store: Store, recipe: Recipe, *, emit: Emit, stop: threading.Event | None,
                 workers: int | None) -> GradeResult:
    items = ungraded(store)
    if workers is None and sampler_running(store.path):
        workers = 1
    statuses: Counter[str] = Counter()
    passed = done = 0
    emit(GradeStarted(len(items)))
    start = time.perf_counter()
    with Grader(recipe.grading, workers=workers, judge=judge_factory(recipe)) as grader:
        for first in range(0, len(items), CHUNK):
            if stop is not None and stop.is_set():
                break
            rows = []
            now = time.time()
            for item, g in grader.grade(items[first : first + CHUNK]):
                rows.append((*item.key, g.verify_score, int(g.passed), g.status, g.grader,
                             g.grader_version, g.seconds, g.detail, now))
                statuses[g.status] += 1
                passed += g.passed
            with store.write() as conn:
                conn.executemany(_INSERT, rows)
            done += len(rows)
            elapsed = time.perf_counter() - start
            emit(GradeProgress(done, len(items), passed, dict(statuses),
                               done / elapsed if elapsed else 0.0))
    seconds = round(time.perf_counter() - start, 2)
    perplexity = None
    if recipe.selection.quality.perplexity_model and recipe.selection.quality.max_perplexity:
        perplexity = _score_training_teacher(store, recipe, emit, stop)
    return GradeResult(done, passed, dict(statuses), seconds, perplexity)


def _score_training_teacher(store: Store, recipe: Recipe, emit: Emit,
                            stop: threading.Event | None) -> dict[str, Any]:
    from deepdistill_tui.core.difficulty.quality import score_perplexity
    from deepdistill_tui.core.difficulty.responses import resolve_teachers

    name = recipe.selection.training_teacher
    tid = resolve_teachers(store, [name]).get(name)
    return score_perplexity(store, recipe, tid, emit=emit, stop=stop) if tid else {"scored": 0}


# ---------------------------------------------------------------- grade-file


def _file_item(rec: dict[str, Any], where: str) -> Item:
    for key, kind in (("id", (str, int)), ("category", str), ("response", str)):
        if key not in rec:
            raise InputError(f"{where}: missing required field {key!r}")
        if not isinstance(rec[key], kind) or isinstance(rec[key], bool):  # true is not an id
            raise InputError(f"{where}: field {key!r} has type {type(rec[key]).__name__}")
    if rec["category"] not in CATEGORIES:
        raise InputError(f"{where}: unknown category {rec['category']!r}; expected one of "
                         f"{', '.join(CATEGORIES)}")
    if rec.get("test_cases") is not None and isinstance(problem := code_tests(rec["test_cases"]), str):
        raise InputError(f"{where}: test_cases: {problem}")
    if rec.get("constraints") is not None and not isinstance(rec["constraints"], list | dict):
        raise InputError(f"{where}: constraints must be a list of {{type, value}} or IFEval's "
                         "{instruction_id_list, kwargs}")
    reasoning, answer = split_response(rec["response"])
    gt = rec.get("ground_truth")
    return Item(rec["id"], rec["category"], str(rec.get("question", "")), rec["response"], reasoning,
                answer, None if gt is None else str(gt), rec.get("test_cases"), rec.get("constraints"))


def partial_path(dst: Path) -> Path:
    """A temp file of this process's own beside ``dst`` (two runs with one --output must not write into
    one file), after removing the ones that processes now dead (kill -9) left behind."""
    prefix = f".{dst.name}."
    for old in dst.parent.glob(f"{prefix}*.partial"):
        owner = old.name[len(prefix):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            old.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".partial", dir=dst.parent)
    os.close(fd)
    return Path(name)


def grade_file(src: Path, dst: Path, cfg: GradingConfig, *, workers: int | None = None,
               judge: Callable[[], Backend] | None = None, emit: Emit | None = None) -> dict[str, Any]:
    """JSONL in, the same records plus verify_score, passed and status out, in input order.

    The whole input is validated before any grading, and the output appears only when complete.
    """
    if dst.is_dir():
        raise InputError(f"{dst}: is a directory; the output must be a file path")
    from deepdistill_tui.core.store.database import read_only

    if dst.parent.is_dir() and read_only(dst.parent):
        raise InputError(f"{dst}: its folder cannot be written (a read-only file system or folder)")
    emit = emit or noop
    records = list(iter_jsonl(src))
    items = [_file_item(rec, f"{src}:{line}") for line, rec in records]
    statuses: Counter[str] = Counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dst)
    try:
        with Grader(cfg, workers=workers, judge=judge) as grader, tmp.open("w", encoding="utf-8") as out:
            for first in range(0, len(items), CHUNK):
                chunk = dict(enumerate(items[first : first + CHUNK], start=first))
                by_index: dict[int, Grade] = {}
                index_of = {id(item): i for i, item in chunk.items()}
                for item, g in grader.grade(chunk.values()):
                    by_index[index_of[id(item)]] = g
                    statuses[g.status] += 1
                for i in sorted(by_index):
                    g = by_index[i]
                    rec = {**records[i][1], "verify_score": g.verify_score, "passed": g.passed,
                           "status": g.status, "detail": g.detail}
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                emit(GradeProgress(first + len(chunk), len(items)))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"graded": len(items), "by_status": dict(statuses)}


# ---------------------------------------------------------------- inspection


def status_counts(store: Store) -> dict[str, int]:
    return dict(store.conn.execute("SELECT status, count(*) FROM grades GROUP BY status").fetchall())


def recent_grades(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The latest graded samples with everything the inspector shows: question, response, answer,
    verdict and the grader's detail (the sandbox's output for code)."""
    cols = ("query_id", "teacher", "pass_index", "category", "question", "response", "answer",
            "verify_score", "passed", "status", "detail")
    rows = store.conn.execute(
        "SELECT g.query_id, coalesce(t.name, g.teacher_id), g.pass_index, q.category, q.question,"
        " s.response, s.answer, g.verify_score, g.passed, g.status, g.detail"
        " FROM grades g JOIN samples s USING (query_id, teacher_id, pass_index)"
        " JOIN queries q USING (query_id) LEFT JOIN teachers t ON t.teacher_id = g.teacher_id"
        " ORDER BY g.created_at DESC LIMIT ?", (limit,)).fetchall()
    return [dict(zip(cols, row, strict=True)) for row in rows]
