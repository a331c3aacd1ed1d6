"""Export of a selection as chat-format training records (JSONL, Parquet, or a `datasets` dataset).

A record is the conversation (the question, then the teacher's answer with its reasoning inside
<think> tags) plus metadata: query id, question, category, teacher, pass index, every teacher's pass rate
on the query, the training teacher's CV and the response's verify score. The fields are an interface
(docs/EXPORT.md). Output appears whole or not at all: it is written beside the target and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdistill_tui.core.difficulty.responses import query_info, resolve_teachers
from deepdistill_tui.core.difficulty.stats import per_query
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store

FORMATS = ("jsonl", "parquet", "hf")
BATCH = 10_000


def assistant_text(response: str, reasoning: str | None, answer: str | None) -> str:
    if reasoning is None:
        return response
    return f"<think>\n{reasoning}\n</think>\n\n{answer or ''}".rstrip() + "\n"


def iter_records(store: Store, recipe: Recipe, selection: str) -> Iterator[dict[str, Any]]:
    """The selection's records in query order, in chunks of ``BATCH``: each chunk's pass rates and
    CV are read for its own queries, so memory holds a chunk, whatever the selection's size."""
    if store.scalar("SELECT 1 FROM selections WHERE name = ?", (selection,)) is None:
        known = [r[0] for r in store.conn.execute("SELECT name FROM selections ORDER BY name")]
        raise DeepDistillError(f"no selection named {selection!r}; known: {', '.join(known) or 'none'}")
    teacher_names = [t.name for t in recipe.teachers]
    teachers = resolve_teachers(store, teacher_names)
    # The members spelled out from their masks in key order, then each one's rows found by key: the
    # loops' order is the query-then-pass order, so SQLite sorts nothing (memory stays flat).
    cur = store.conn.execute(
        "SELECT m.query_id, q.question, q.category, t.name, m.teacher_id, m.pass_index, m.stage,"
        " s.response, s.reasoning, s.answer, g.verify_score"
        " FROM (SELECT m.query_id, m.teacher_id, m.base + b.i AS pass_index, m.stage FROM selection_passes m"
        "  CROSS JOIN pass_bits b ON b.bit <= m.passes AND m.passes & b.bit"
        "  WHERE m.selection = ? ORDER BY m.query_id, m.teacher_id, m.base, b.bit) m"
        " CROSS JOIN queries q ON q.query_id = m.query_id"
        " CROSS JOIN samples s ON s.query_id = m.query_id AND s.teacher_id = m.teacher_id"
        "  AND s.pass_index = m.pass_index"
        " CROSS JOIN teachers t ON t.teacher_id = m.teacher_id"
        " LEFT JOIN grades g ON g.query_id = m.query_id AND g.teacher_id = m.teacher_id"
        "  AND g.pass_index = m.pass_index",
        (selection,),
    )
    every: dict[str, dict[str, Any]] | None = None  # the slow path's table, read once
    while rows := cur.fetchmany(BATCH):
        info = query_info(store, recipe, teachers, sorted({r[0] for r in rows}))
        if info is None:
            every = every if every is not None else {q["query_id"]: q for q in per_query(store, recipe)}
            info = every
        for qid, question, cat, teacher, tid, p, stage, response, reasoning, answer, score in rows:
            q = info.get(qid, {})
            rates = q.get("pass_rates", {})
            yield {
                "messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": assistant_text(response, reasoning, answer)}],
                "query_id": qid, "question": question, "category": cat, "teacher": teacher,
                "teacher_id": tid, "pass_index": p, "stage": stage,
                "pass_rates": {name: rates.get(name) for name in teacher_names},
                "cv": q.get("cv"), "verify_score": score,
            }


def _batches(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_jsonl(records: Iterator[dict[str, Any]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def _schema(teacher_names: list[str]) -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("messages", pa.list_(message)), ("query_id", pa.string()), ("question", pa.string()),
        ("category", pa.string()), ("teacher", pa.string()), ("teacher_id", pa.string()),
        ("pass_index", pa.int64()), ("stage", pa.int64()),
        ("pass_rates", pa.struct([(n, pa.float64()) for n in teacher_names])),
        ("cv", pa.float64()), ("verify_score", pa.float64()),
    ])


def _write_parquet(records: Iterator[dict[str, Any]], path: Path, teacher_names: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(teacher_names)
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in _batches(records):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


MARKER = ".deepdistill-export"
"""Beside a jsonl or parquet export (``.NAME.deepdistill-export``) or inside an hf folder: the sha256
of what the export wrote, so that a later export may replace its own output and nothing else."""
TMP_TAG = ".ddt-export-tmp-"


@dataclass(frozen=True)
class ExportResult(Result):
    records: int
    selection: str
    format: str
    path: str

    def summary(self) -> dict[str, Any]:
        return {"records": self.records, "selection": self.selection, "format": self.format,
                "path": self.path}


def export(store: Store, recipe: Recipe, selection: str, fmt: str, out: str | Path) -> int:
    """Write the selection to ``out`` atomically; returns the number of records. ``out`` must be new,
    or this project's own earlier export (recognised by its marker); anything else there is an error."""
    if fmt not in FORMATS:
        raise DeepDistillError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(os.path.abspath(out))  # "." has no name to put a marker beside
    check_replaceable(out, fmt)
    records = iter_records(store, recipe, selection)
    first = next(records, None)  # validates the selection before anything is written
    if first is None:
        raise DeepDistillError(f"selection {selection!r} has no members")
    stream = _chain(first, records)
    names = [t.name for t in recipe.teachers]
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_TAG}{os.getpid()}-", dir=out.parent))
    try:
        if fmt == "jsonl":
            n = _write_jsonl(stream, tmp / "data")
        elif fmt == "parquet":
            n = _write_parquet(stream, tmp / "data", names)
        else:
            n = _write_hf(stream, tmp, names)
        _swap_in(tmp / ("dataset" if fmt == "hf" else "data"), out, fmt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n


def _write_hf(records: Iterator[dict[str, Any]], tmp: Path, names: list[str]) -> int:
    import datasets

    n = _write_parquet(records, tmp / "data.parquet", names)
    ds = datasets.Dataset.from_parquet(str(tmp / "data.parquet"), cache_dir=str(tmp / "cache"))
    ds.save_to_disk(str(tmp / "dataset"))
    files = _manifest(tmp / "dataset")
    (tmp / "dataset" / MARKER).write_text(json.dumps({"format": "hf", "records": n, "files": files}))
    return n


def _manifest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` but the marker, by relative path, with its sha256."""
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _own_hf_export(out: Path) -> str | None:
    """None when ``out`` holds exactly what an earlier hf export wrote; else what is wrong."""
    try:
        listed = json.loads((out / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, dict):
        return "its marker lists no files (an export of an older version)"
    found = _manifest(out)
    extra = sorted(set(found) - set(listed))
    if extra:
        return f"it holds files the export did not write ({extra[0]})"
    changed = sorted(name for name, digest in listed.items() if found.get(name) != digest)
    return f"its file {changed[0]} is not as the export wrote it" if changed else None


def _marker_of(out: Path) -> Path:
    return out.with_name(f".{out.name}{MARKER}")


def _digest(path: Path) -> str:
    from deepdistill_tui.core.weights.files import file_sha256

    return file_sha256(path)


def check_replaceable(out: Path, fmt: str) -> None:
    """Nothing at ``out``, or our own earlier export of the same kind: else a one-line error."""
    if not out.exists() and not out.is_symlink():
        return
    if fmt == "hf":
        if not (out.is_dir() and not out.is_symlink() and (out / MARKER).is_file()):
            raise DeepDistillError(f"{out} exists and is not an earlier hf export of this project "
                                   f"(no {MARKER} inside): choose a new output path")
        problem = _own_hf_export(out)
        if problem is None:
            return
        raise DeepDistillError(f"{out} exists and is not only an earlier hf export of this project: "
                               f"{problem}; choose a new output path (nothing of yours is deleted)")
    if out.is_file() and not out.is_symlink() and _marker_of(out).is_file() \
            and _marker_of(out).read_text().strip() == _digest(out):
        return
    kind = "a folder" if out.is_dir() else "a file this project did not write"
    raise DeepDistillError(f"{out} exists and is {kind}: choose a new output path (an export replaces only "
                           "its own earlier output)")


def _swap_in(new: Path, out: Path, fmt: str) -> None:
    """Atomic for a file (rename over it); for a folder, the old one is renamed aside first, so a
    crash leaves either the old export or the new one at ``out`` (and a temp folder that the next
    export removes)."""
    if fmt != "hf":
        marker = _marker_of(out)
        digest = _digest(new)
        os.replace(new, out)
        tmp_marker = marker.with_name(marker.name + ".tmp")
        tmp_marker.write_text(digest)
        os.replace(tmp_marker, marker)
        return
    aside = new.parent / "previous"
    if out.exists():
        os.replace(out, aside)
    os.replace(new, out)


def remove_stale_temps(folder: Path) -> int:
    """Temp folders of exports whose process died (kill -9): they can hold a whole data set."""
    removed = 0
    for d in folder.glob(f".*{TMP_TAG}*"):
        owner = d.name.rsplit(TMP_TAG, 1)[1].split("-", 1)[0]
        if d.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
