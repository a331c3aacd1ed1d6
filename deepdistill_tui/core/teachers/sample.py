"""Teacher sampling (docs/PAPER.md section 2): every training query answered N times by each teacher.

Work is defined by what is missing in the store: for each (query, teacher) the passes not yet stored.
A query's new passes are written in one transaction once all of them are generated, so a kill at any
moment loses at most the query in flight and never writes a half. One sampler per database holds the
cores at a time (a lock file): a second one waits instead of oversubscribing the CPU or duplicating work.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from deepdistill_tui.core.data.text import split_response
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.pipeline.events import (
    Emit,
    SampleFailed,
    SampleProgress,
    SampleStarted,
    Waiting,
)
from deepdistill_tui.core.recipe import OpenAITeacher, Recipe, Teacher
from deepdistill_tui.core.store.database import Store, stage_lock
from deepdistill_tui.core.teachers.base import Completion, PromptTooLong, Request
from deepdistill_tui.core.teachers.registry import open_backend
from deepdistill_tui.core.weights.files import file_sha256


@dataclass
class TeacherReport:
    teacher: str
    teacher_id: str = ""
    queries: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    last_response: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "teacher_id": self.teacher_id, "queries": self.queries,
                "samples": self.samples, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
                "skipped": self.skipped, "error": self.error}


@dataclass(frozen=True)
class SampleResult(Result):
    reports: list[TeacherReport]
    """One per teacher sampled, failed ones included (their ``error`` says why)."""

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.reports if r.error]

    def summary(self) -> dict[str, Any]:
        return {"teachers": [r.as_dict() for r in self.reports]}


# ---------------------------------------------------------------- identity


def teacher_params(teacher: Teacher) -> dict[str, Any]:
    """Everything that changes what a teacher writes. A change gives a new teacher id."""
    served = teacher.served_model if isinstance(teacher, OpenAITeacher) else None
    return {"backend": teacher.backend, "template": teacher.template,
            "system_prompt": teacher.system_prompt, "few_shot": teacher.few_shot,
            "sampling": teacher.sampling.model_dump(), "served_model": served}


class TeacherIdentity(NamedTuple):
    teacher_id: str
    model: str
    """The GGUF's path, or the server's address and model name."""
    model_sha256: str | None


def teacher_identity(teacher: Teacher, model_path: Path | None) -> TeacherIdentity:
    """(teacher_id, model, model_sha256): the id hashes the weights and the sampling setup.

    A GGUF file is known by its content; a served model by its name, not by the server's address,
    which changes every time a cluster job starts it on another node (shards sampled behind different
    hosts must merge as one teacher). Only a server with no model name is known by its address."""
    sha = file_sha256(model_path) if model_path else None
    served = teacher.served_model if isinstance(teacher, OpenAITeacher) else None
    url = teacher.base_url if isinstance(teacher, OpenAITeacher) else None
    model = str(model_path) if model_path else f"{url}#{served or teacher.name}"
    weights = sha or (f"served:{served}" if served else model)
    blob = json.dumps({"model": weights, **teacher_params(teacher)}, sort_keys=True)
    return TeacherIdentity(f"{teacher.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}", model, sha)


def register_teacher(store: Store, teacher: Teacher, model_path: Path | None) -> str:
    teacher_id, model, sha = teacher_identity(teacher, model_path)
    with store.write() as conn:
        conn.execute(
            "INSERT INTO teachers (teacher_id, name, backend, model, model_sha256, params, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(teacher_id) DO NOTHING",
            (teacher_id, teacher.name, teacher.backend, model, sha,
             json.dumps(teacher_params(teacher), sort_keys=True), time.time()),
        )
    return teacher_id


def pass_seed(base: int, query_id: str, pass_index: int) -> int:
    digest = hashlib.sha256(f"{base}:{query_id}:{pass_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---------------------------------------------------------------- work


@dataclass(frozen=True)
class Job:
    query_id: str
    question: str
    missing: tuple[int, ...]


def pending(store: Store, teacher_id: str, passes: int, limit: int | None) -> list[Job]:
    """Training queries (the first `limit` by id) with the passes this teacher has not stored yet."""
    rows = store.conn.execute(
        "SELECT q.query_id, q.question, group_concat(s.pass_index) FROM"
        " (SELECT query_id, question FROM queries WHERE split = 'train' ORDER BY query_id LIMIT ?) q"
        " LEFT JOIN samples s ON s.query_id = q.query_id AND s.teacher_id = ?"
        " GROUP BY q.query_id ORDER BY q.query_id",
        (limit if limit else -1, teacher_id),
    ).fetchall()
    jobs = []
    for qid, question, done in rows:
        have = {int(p) for p in done.split(",")} if done else set()
        missing = tuple(p for p in range(passes) if p not in have)
        if missing:
            jobs.append(Job(qid, question, missing))
    return jobs


_INSERT = (
    "INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning, answer, prompt_tokens,"
    " completion_tokens, finish_reason, seconds, seed, prefill, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(query_id, teacher_id, pass_index) DO NOTHING"
)


def store_passes(store: Store, job: Job, teacher_id: str, seeds: list[int],
                 outs: list[Completion]) -> None:
    now = time.time()
    rows = []
    for p, seed, c in zip(job.missing, seeds, outs, strict=True):
        reasoning, answer = split_response(c.text, c.prefill)
        rows.append((job.query_id, teacher_id, p, c.text, reasoning, answer, c.prompt_tokens,
                     c.completion_tokens, c.finish_reason, round(c.seconds, 4), seed, c.prefill or None,
                     now))
    with store.write() as conn:
        conn.executemany(_INSERT, rows)


def sampler_lock(db_path: Path, emit: Emit) -> Any:
    """One sampler per database at a time; a second one waits for the first to finish."""
    return stage_lock(db_path, "sampler",
                      lambda message: emit(Waiting("sample", message)))


# ---------------------------------------------------------------- running


def sample_teacher(store: Store, recipe: Recipe, teacher: Teacher, *, limit: int | None = None,
                   emit: Emit, stop: threading.Event | None = None) -> TeacherReport:
    """Every missing pass of every query, through the backend's continuous batching; each query's
    passes land in one transaction when its last pass ends, so a kill loses only queries in flight."""
    report = TeacherReport(teacher.name)
    passes = recipe.sampling.passes
    backend, path = open_backend(teacher, passes, emit=emit)
    answers = None
    try:
        report.teacher_id = register_teacher(store, teacher, path)
        jobs = pending(store, report.teacher_id, passes, limit or recipe.sampling.query_limit)
        emit(SampleStarted(teacher.name, len(jobs), sum(len(j.missing) for j in jobs)))
        start = time.perf_counter()
        requests = (Request(job, job.question, [pass_seed(teacher.sampling.seed, job.query_id, p)
                                                for p in job.missing])
                    for job in jobs if stop is None or not stop.is_set())
        answers = backend.generate_many(requests)
        for request, outs in answers:
            if isinstance(outs, PromptTooLong):
                report.skipped.append(f"{request.key.query_id}: {outs}")
                continue
            store_passes(store, request.key, report.teacher_id, request.seeds, outs)
            report.queries += 1
            report.samples += len(outs)
            report.tokens += sum(c.completion_tokens for c in outs)
            report.last_response = outs[-1].text if outs else ""
            report.seconds = time.perf_counter() - start
            _emit_progress(emit, report, len(jobs), backend.in_flight)
            if stop is not None and stop.is_set():
                break  # the queries still in flight are dropped whole, never stored in part
    finally:
        if answers is not None:
            answers.close()  # the engine's samplers go before the model they belong to
        backend.close()
    return report


def _emit_progress(emit: Emit, report: TeacherReport, total: int, in_flight: int | None) -> None:
    rate = report.queries / report.seconds if report.seconds else 0.0
    emit(SampleProgress(report.teacher, report.queries, total, report.samples,
                        report.tokens / report.seconds if report.seconds else 0.0, in_flight,
                        (total - report.queries) / rate if rate else None, report.last_response[-400:]))


def sample(store: Store, recipe: Recipe, *, teacher_name: str | None = None, limit: int | None = None,
           emit: Emit, stop: threading.Event | None = None) -> list[TeacherReport]:
    """Sample every teacher (or one). A failing teacher is reported and the others go on."""
    teachers = [recipe.teacher(teacher_name)] if teacher_name else recipe.sampled_teachers()
    reports = []
    with sampler_lock(store.path, emit):
        for teacher in teachers:
            try:
                reports.append(sample_teacher(store, recipe, teacher, limit=limit, emit=emit, stop=stop))
            except DeepDistillError as exc:
                emit(SampleFailed(teacher.name, str(exc)))
                reports.append(TeacherReport(teacher.name, error=str(exc)))
            if stop is not None and stop.is_set():
                break
    return reports
