"""Import of released distillation data: responses with their verdicts, from any public layout.

Three formats (``FORMATS``), each a mapping from a source row to the rows that sampling and grading fill
(queries, teachers, samples, grades), so that statistics and selection treat released data like data
sampled here:

- ``am``: AM-DeepSeek-Distilled-40M, one response per row (question, answer, verify_score, ...). The
  teacher and the pass come from the row (``teacher``, ``pass``) when it has them, else from the file
  name ``CATEGORY_TEACHER_Kpass``; a row whose category disagrees with the name is a bad row.
- ``am-conversations``: AM-Thinking-v1-Distilled and its siblings, ``{system, conversations}`` rows whose
  assistant turn carries ``info`` (category, verify_score, model_name, ppl, ...): one verified response
  per query, so its queries have no pass rate (the teacher is recorded as single-response).
- ``generations``: several responses per problem with a verdict each (OpenR1-Math): ``--map
  question=COL --map responses=COL --map scores=COL`` name the columns, scores are numbers or booleans.

Sources are JSONL or Parquet files, folders of them, a folder that ``datasets`` saved, or
``hf:REPO[:CONFIG]`` (streamed, never materialised). A bad row is skipped and counted by reason, with
where it was (``--strict`` refuses at the first instead, and the import is then one transaction). Work
commits every ``CHUNK`` rows together with the source's resume key in ``imports``: a kill loses at most
the chunk in flight, a rerun starts after the last committed row, and every insert is idempotent, so
nothing is lost or doubled and a finished source imports nothing the second time.

Several large files are staged by worker processes, a source each, each committing its own chunks
(``stage_workers``): parsing is most of an import's time, and one process parses on one core while
SQLite waits. The move stays in this process, one transaction, as before.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from deepdistill_tui.core.data.am_import import (
    AM_DATASET,
    RELEASED_RATES,
    SCORE_RANGE,
    AmFile,
    am_query_id,
    am_teacher_id,
    parse_am_name,
)
from deepdistill_tui.core.data.readers import DEFAULT_MAX_LINE_BYTES, parse_json_line
from deepdistill_tui.core.data.text import split_response
from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.recipe import CATEGORIES, PAPER_PASS_THRESHOLDS
from deepdistill_tui.core.store import summary_sql
from deepdistill_tui.core.store.database import Store, SuspendedTriggers

FORMATS = ("am", "am-conversations", "generations", "auto")
CHUNK = 20_000
"""Rows per transaction: a kill loses at most this many rows of work, and the WAL stays small."""
CHUNK_CHARS = 2_000_000
"""A chunk also ends at this many characters of responses (each is held twice, whole and split into
reasoning and answer), so that the chunk held stays a few tens of MB however long the answers:
20,000 real R1 traces would be gigabytes."""
RECENT = 2_000_000
"""Query ids remembered to stage each query once (about 70 bytes each: 140 MB at most)."""
_DETAIL_JSON = json.JSONEncoder(check_circular=False).encode
"""json.dumps with its defaults, less the cycle check (a parsed row has no cycles): a quarter less
time for each row's grade detail, the same text."""
WORKER_BYTES = 64 << 20
"""Files that add up to less than this are staged here: starting a worker costs about a second."""
MAX_DEFAULT_WORKERS = 4
"""Workers unless ``workers`` says: their commits take turns at SQLite's one write lock (about 7 µs
a response against about 20 µs to parse it), so beyond a few they wait more than they parse, and
each holds a few hundred MB (its page cache, the keys of its file)."""
EXAMPLES = 20
"""Bad rows named in the report (where and why); the rest are only counted."""
MAP_KEYS = ("question", "responses", "scores", "ground_truth", "category", "teacher", "pass", "answer",
            "verify_score")
_TEACHER = re.compile(r"[^A-Za-z0-9._-]+")


class BadRow(Exception):
    """A row that cannot be imported: ``reason`` is the counter it goes to, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One input. ``key`` identifies it for resuming: a file by its real path, size and mtime (a file
    rewritten in place is a new source), a dataset by its name."""

    kind: str  # jsonl | parquet | hf_disk | hf_hub
    path: str
    key: str
    config: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


def _file_source(path: Path) -> Source:
    kind = "parquet" if path.suffix == ".parquet" else "jsonl"
    st = path.stat()
    return Source(kind, str(path), f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")


def expand_sources(specs: Iterable[str]) -> list[Source]:
    """Files, folders (their *.jsonl and *.parquet, or a folder ``datasets`` saved) and hf: names."""
    out: dict[str, Source] = {}
    for spec in specs:
        if spec.startswith("hf:"):
            repo, _, config = spec[3:].partition(":")
            if not repo:
                raise InputError(f"{spec}: expected hf:REPO or hf:REPO:CONFIG")
            src = Source("hf_hub", repo, f"hf:{repo}:{config}", config or None)
            out[src.key] = src
            continue
        path = Path(spec)
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file()):
            src = Source("hf_disk", str(path), f"disk:{path.resolve()}")
            out[src.key] = src
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet") and p.is_file())
            if not files:
                raise InputError(f"{path}: a folder with no .jsonl or .parquet files")
            for p in files:
                src = _file_source(p)
                out.setdefault(src.key.split("|")[0], src)
        elif path.is_file():
            src = _file_source(path)
            out.setdefault(src.key.split("|")[0], src)  # a file named twice is one file
        else:
            raise InputError(f"{path}: no such file or folder")
    if not out:
        raise InputError("import: no sources given")
    return list(out.values())


Row = tuple[str, dict[str, Any] | BadRow]
"""(where, the record or why it could not be read)."""


def iter_jsonl_rows(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Row]:
    """Every non-blank line as (FILE:LINE, record); a line that is not a JSON object, or is too long,
    or is cut short at the end of the file, comes as its BadRow and the reading goes on."""
    with path.open("rb") as fh:
        lineno = 0
        while raw := fh.readline(max_line_bytes + 1):
            lineno += 1
            where = f"{path}:{lineno}"
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the long line without holding it
                yield where, BadRow("line_too_long", f"{where}: line is longer than {max_line_bytes} bytes")
                continue
            if raw.isspace():
                continue
            try:
                obj = parse_json_line(raw, where)
            except InputError as exc:
                reason = "truncated" if not raw.endswith(b"\n") else "bad_json"
                yield where, BadRow(reason, str(exc))
                continue
            if not isinstance(obj, dict):
                yield where, BadRow("not_an_object", f"{where}: expected a JSON object, got "
                                                     f"{type(obj).__name__}")
                continue
            yield where, obj


def iter_rows(src: Source, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Row]:
    if src.kind == "jsonl":
        yield from iter_jsonl_rows(Path(src.path), max_line_bytes)
    elif src.kind == "parquet":
        yield from _parquet_rows(Path(src.path))
    else:
        yield from _dataset_rows(src)


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", rec


def _dataset_rows(src: Source) -> Iterator[Row]:
    """A saved folder or a Hub dataset, streamed: rows arrive as they are read, none held."""
    import datasets

    try:
        if src.kind == "hf_disk":
            loaded: Any = datasets.load_from_disk(src.path)
        else:
            loaded = datasets.load_dataset(src.path, src.config, streaming=True)
    except Exception as exc:  # datasets raises many types; the user needs the cause, not the type
        raise InputError(f"{src.path}: cannot load dataset ({exc})") from exc
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict) \
        else {"": loaded}
    for split, ds in splits.items():
        stream = ds.to_iterable_dataset() if isinstance(ds, datasets.Dataset) else ds
        for i, rec in enumerate(stream, start=1):
            yield f"{src.path}{'[' + split + ']' if split else ''}: row {i}", dict(rec)


# ---------------------------------------------------------------- rows -> responses


class Response(NamedTuple):
    """One released response, ready for the store (a tuple: built once per row, it must be cheap)."""

    query_id: str
    question: str
    category: str
    ground_truth: str | None
    test_cases: str | None
    constraints: str | None
    source: str | None
    teacher: str
    pass_index: int
    response: str
    score: float
    ppl: float | None
    detail: dict[str, Any]
    released_rates: tuple[tuple[str, float], ...] = ()


OnSamples = Callable[[str, list[tuple[str, int, str, float | None]]], None]
"""Told each staged chunk's responses of one teacher: (query id, pass index, text, perplexity)."""


@runtime_checkable
class SampleCounter(Protocol):
    """An ``on_samples`` that worker processes can count into: each gets an empty ``fork()`` (sent to
    it pickled), ``attach``es its own store, and sends it back to be ``join``ed."""

    def __call__(self, teacher_id: str, samples: list[tuple[str, int, str, float | None]]) -> None: ...

    def fork(self) -> SampleCounter: ...

    def attach(self, store: Store | None) -> None: ...

    def join(self, other: SampleCounter) -> None: ...


@dataclass(frozen=True)
class Options:
    fmt: str
    columns: dict[str, str] = field(default_factory=dict)
    """--map key=COLUMN: where each field is in the source's rows."""
    category: str | None = None
    teacher: str | None = None
    limit: int | None = None
    """Read at most this many rows of each source (a slice of a release)."""
    on_samples: OnSamples | None = None
    names: dict[str, str] = field(init=False, repr=False, compare=False)
    """Each MAP_KEYS key's column, worked out once instead of per row."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", {k: self.columns.get(k, k) for k in MAP_KEYS})


def _col(rec: dict[str, Any], opts: Options, key: str) -> Any:
    return rec.get(opts.names[key])


def _text(value: Any, key: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise BadRow(f"missing_{key}", f"missing required field {key!r}")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadRow(f"bad_{key}", f"field {key!r} has unexpected type {type(value).__name__}")


def _score(value: Any, category: str, key: str = "verify_score") -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if value is None:
        raise BadRow("no_score", f"field {key!r} is null")
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRow("bad_score", f"field {key!r} must be a finite number, got {value!r:.40}")
    low, high = SCORE_RANGE[category]
    if not low <= value <= high:  # 7 or -3 would pass or fail a query by itself
        raise BadRow("score_out_of_range", f"{key} {value:g} is outside {low:g}..{high:g} for {category}")
    return float(value)


def _optional_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRow(f"bad_{key}", f"field {key!r} must be a finite number, got {value!r:.40}")
    return float(value)


def _category(value: Any) -> str:
    if value not in CATEGORIES:
        raise BadRow("bad_category", f"category {value!r:.40} is not one of {', '.join(CATEGORIES)}")
    return str(value)


@lru_cache(maxsize=4096)
def _cached_name(value: str) -> str:
    return teacher_name(value)


def teacher_name(value: Any) -> str:
    """A teacher name as recipes refer to it: a model id keeps its last path part (deepseek-ai/X -> X)."""
    name = _TEACHER.sub("-", str(value).rsplit("/", 1)[-1]).strip("-.")
    if not name:
        raise BadRow("bad_teacher", f"teacher {value!r:.40} has no usable name")
    return name[:80]


@lru_cache(maxsize=256)
def _named(path: str) -> AmFile | None:
    return parse_am_name(Path(path), strict=False)


def am_rows(src: Source, rec: dict[str, Any], opts: Options) -> list[Response]:
    """A flat AM row; the file name (when it follows the release's) supplies what the row lacks."""
    named = _named(src.path) if src.kind in ("jsonl", "parquet") else None
    col = opts.names
    row_cat = rec.get(col["category"])
    category = _category(row_cat if row_cat is not None else (named.category if named else opts.category))
    if named and row_cat is not None and row_cat != named.category:
        raise BadRow("category_mismatch", f"category {row_cat!r} in a {named.category} file ({src.name})")
    teacher = rec.get(col["teacher"]) or (named.teacher if named else opts.teacher)
    passes = rec.get(col["pass"])
    if teacher is None or (passes is None and named is None):
        raise BadRow("no_teacher_or_pass", "the row names no teacher or pass, and the file name is not "
                                           "CATEGORY_TEACHER_Kpass")
    if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int) or passes < 1):
        raise BadRow("bad_pass", f"pass must be a count from 1, got {passes!r:.20}")
    pass_index = passes - 1 if passes is not None else named.pass_index  # type: ignore[union-attr]
    question = _text(rec.get(col["question"]), "question", required=True)
    response = _text(rec.get(col["answer"]), "answer", required=True)
    assert question is not None and response is not None
    rates = tuple((t, r) for key, t in RELEASED_RATES.items()
                  if key in rec and (r := _optional_number(rec[key], key)) is not None)
    detail = {k: v for k in _DETAIL if (v := rec.get(k)) is not None}
    return [Response(am_query_id(category, question), question, category,
                     _text(rec.get(col["ground_truth"]), "ground_truth"),
                     _text(rec.get("test_case"), "test_case"),
                     _text(rec.get("instruction_constrain"), "instruction_constrain"),
                     _text(rec.get("question_source"), "question_source"),
                     am_teacher_id(_cached_name(str(teacher))), pass_index, response,
                     _score(rec.get(col["verify_score"]), category), _optional_number(rec.get("ppl"), "ppl"),
                     detail, rates)]


_DETAIL = ("ppl", *RELEASED_RATES, "model_name", "answer_source")
"""The fields of a flat AM row kept with its grade."""


def conversation_rows(src: Source, rec: dict[str, Any], opts: Options) -> list[Response]:
    """One verified assistant turn with its ``info``; earlier turns make up the question."""
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("no_conversations", "no conversations list")
    reply = next((i for i, t in enumerate(turns) if isinstance(t, dict)
                  and t.get("from") in ("assistant", "gpt") and isinstance(t.get("info"), dict)), None)
    if reply is None or reply == 0:
        raise BadRow("no_verified_reply", "no assistant turn with info after a user turn")
    before = [t for t in turns[:reply] if isinstance(t, dict)]
    if not all(isinstance(t.get("value"), str) for t in before):
        raise BadRow("bad_turn", "a turn before the reply has no text value")
    question = before[-1]["value"] if len(before) == 1 else \
        "\n\n".join(f"{t.get('from', 'user')}: {t['value']}" for t in before)
    info = turns[reply]["info"]
    response = _text(turns[reply].get("value"), "answer", required=True)
    category = _category(info.get("category", opts.category))
    model = opts.teacher or info.get("model_name")
    if not model:
        raise BadRow("no_teacher", "info has no model_name (or give --teacher)")
    if not question:
        raise BadRow("missing_question", "the user turn is empty")
    assert response is not None
    detail = {k: info[k] for k in ("model_name", "source", "ppl") if info.get(k) is not None}
    return [Response(am_query_id(category, question), question, category,
                     _text(info.get("ground_truth"), "ground_truth"),
                     _text(info.get("test_case"), "test_case"),
                     _text(info.get("instruction_constrain"), "instruction_constrain"),
                     _text(info.get("source"), "source"), f"amc-{teacher_name(model)}", 0, response,
                     _score(info.get("verify_score"), category), _optional_number(info.get("ppl"), "ppl"),
                     detail)]


def generation_rows(src: Source, rec: dict[str, Any], opts: Options) -> list[Response]:
    """A problem, its generations and a verdict per generation, in the columns --map names."""
    question = _text(_col(rec, opts, "question"), "question", required=True)
    responses, scores = _col(rec, opts, "responses"), _col(rec, opts, "scores")
    if not isinstance(responses, list) or not responses:
        raise BadRow("no_responses", f"column {opts.columns.get('responses', 'responses')!r} is not a "
                                     "non-empty list")
    if not isinstance(scores, list) or len(scores) != len(responses):
        raise BadRow("scores_mismatch", f"{len(responses)} responses but "
                                        f"{len(scores) if isinstance(scores, list) else 'no'} scores")
    category = _category(_col(rec, opts, "category") or opts.category)
    teacher = _col(rec, opts, "teacher") or opts.teacher or "released"
    assert question is not None
    qid = am_query_id(category, question)
    truth = _text(_col(rec, opts, "ground_truth"), "ground_truth")
    out = []
    for i, (text, score) in enumerate(zip(responses, scores, strict=True)):
        response = _text(text, "response", required=True)
        assert response is not None
        out.append(Response(qid, question, category, truth, None, None, None, f"gen-{teacher_name(teacher)}",
                            i, response, _score(score, category, f"scores[{i}]"), None, {}))
    return out


PARSERS = {"am": am_rows, "am-conversations": conversation_rows, "generations": generation_rows}


def detect_format(rec: dict[str, Any], opts: Options) -> str:
    """``auto``: the format the first readable row has the shape of."""
    if isinstance(rec.get("conversations"), list):
        return "am-conversations"
    if isinstance(_col(rec, opts, "responses"), list):
        return "generations"
    if _col(rec, opts, "question") is not None and _col(rec, opts, "answer") is not None:
        return "am"
    raise InputError(f"cannot tell the format from a row with keys {sorted(rec)[:8]}: give --format")


# ---------------------------------------------------------------- the store


# Chunks land in staging tables (rowid order: appends, one page written after another), and one
# transaction at the end moves them into the keyed tables in key order. Straight into those tables,
# every chunk's random query ids touched most of their pages again: a 1M-response import wrote 25 GB.
_STAGE = {
    "queries": "INSERT INTO staged_queries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "samples": "INSERT INTO staged_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "grades": "INSERT INTO staged_grades VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "rates": "INSERT INTO staged_rates VALUES (?, ?, ?)",
}
"""Each staging table's insert of a chunk's rows."""
_MOVE = {
    "queries": ("INSERT INTO queries (query_id, question, category, split, ground_truth, test_cases, "
                "constraints, source, origin, created_at) SELECT query_id, question, category, 'train', "
                "ground_truth, test_cases, constraints, source, origin, created_at FROM staged_queries WHERE "
                "true ORDER BY query_id, rowid ON CONFLICT(query_id) DO NOTHING"),
    "grades": ("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed, status, grader, "
               "grader_version, detail, created_at) SELECT query_id, teacher_id, pass_index, verify_score, "
               "passed, 'ok', 'am-import', grader_version, detail, created_at FROM staged_grades WHERE true "
               "ORDER BY query_id, teacher_id, pass_index, rowid ON CONFLICT(query_id, teacher_id, "
               "pass_index) DO NOTHING"),
    "rates": ("INSERT INTO released_pass_rates (query_id, teacher, pass_rate) SELECT query_id, teacher, "
              "pass_rate FROM staged_rates WHERE true ORDER BY query_id, teacher, rowid ON "
              "CONFLICT(query_id, teacher) DO NOTHING"),
}
"""Staged rows into the keyed tables, in key order, the first of a key standing (samples go by
``_MOVE_SAMPLES``)."""
_MOVE_SAMPLES = (
    "INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning, answer, ppl, created_at)"
    " SELECT query_id, teacher_id, pass_index, response, reasoning, answer, ppl, created_at"
    " FROM staged_samples WHERE teacher_id = ? ORDER BY query_id, pass_index, rowid"
    " ON CONFLICT(query_id, teacher_id, pass_index) DO NOTHING")
"""One teacher's staged responses (its own statement, so that its rowcount is that teacher's)."""
# The first staged row of a key is the one that lands in samples (rowid order, DO NOTHING), and a
# key already in samples has its token row already: so the same rule here leaves every new sample
# with its count and every old one with its own, as the row trigger would.
_MOVE_TOKENS = (
    "INSERT INTO sample_tokens (query_id, teacher_id, pass_index, tokens) SELECT query_id, teacher_id,"
    " pass_index, length(response) / 4 FROM staged_samples WHERE true"
    " ORDER BY query_id, teacher_id, pass_index, rowid ON CONFLICT DO NOTHING")
_ADD_VERSIONS = (
    "INSERT INTO teacher_versions (teacher_id, version, n_samples) VALUES (?, ?, ?) ON CONFLICT(teacher_id)"
    " DO UPDATE SET version = version + excluded.version, n_samples = n_samples + excluded.n_samples")
_BULK = ("teacher_versions_insert", "sample_tokens_insert", summary_sql.INSERT_TRIGGER)
"""The row triggers whose work the move does in bulk."""
_T = ("INSERT INTO teachers (teacher_id, name, backend, model, params, created_at)"
      " VALUES (?, ?, 'am_import', ?, ?, ?) ON CONFLICT(teacher_id) DO NOTHING")
_PROGRESS = ("INSERT INTO imports (source, format, rows_done, finished, report, updated_at)"
             " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(source) DO UPDATE SET format = excluded.format,"
             " rows_done = excluded.rows_done, finished = excluded.finished, report = excluded.report,"
             " updated_at = excluded.updated_at")


@dataclass
class ImportReport:
    """What an import did; ``responses`` and ``new_queries`` count rows new to the store."""

    files: int = 0
    responses: int = 0
    new_queries: int = 0
    duplicates: int = 0
    rows: int = 0
    already_imported: int = 0
    """Sources a previous import finished: read no further."""
    resumed: int = 0
    """Sources taken up after the last row an interrupted import committed."""
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    per_file: dict[str, int] = field(default_factory=dict)
    duplicates_per_file: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    teachers: set[str] = field(default_factory=set)
    """The teacher ids that got rows."""
    seconds: float = 0.0
    staged: int = 0
    """Responses this import staged (each also passed to ``on_samples``)."""
    texts_exact: bool = False
    """The responses passed to ``on_samples`` are exactly the ones this import added to the store:
    none was already there, and no staged row of an earlier, killed import was moved with them."""
    versions_before: dict[str, int] = field(default_factory=dict)
    """Each teacher's sample version just before the move (in its transaction; 0 for none): with
    the responses added, what the version must be if nothing else has written since."""

    def skip(self, where: str, bad: BadRow) -> None:
        self.skipped[bad.reason] += 1
        if len(self.examples) < EXAMPLES:
            message = str(bad)
            self.examples.append(message if message.startswith(where) else f"{where}: {message}")

    def absorb(self, part: ImportReport) -> None:
        """Add a worker's staging of some sources (the move's counts are this process's own)."""
        self.duplicates += part.duplicates
        self.rows += part.rows
        self.already_imported += part.already_imported
        self.resumed += part.resumed
        self.staged += part.staged
        self.skipped.update(part.skipped)
        self.examples = (self.examples + part.examples)[:EXAMPLES]
        self.per_file.update(part.per_file)
        self.duplicates_per_file.update(part.duplicates_per_file)
        self.formats.update(part.formats)
        self.teachers |= part.teachers

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "responses": self.responses, "new_queries": self.new_queries,
                "duplicates": self.duplicates, "rows": self.rows, "skipped": dict(self.skipped),
                "skipped_examples": self.examples, "already_imported": self.already_imported,
                "resumed": self.resumed, "per_file": self.per_file, "formats": self.formats,
                "duplicates_per_file": self.duplicates_per_file, "seconds": round(self.seconds, 3),
                "responses_per_s": round(self.responses / self.seconds) if self.seconds else None}


@dataclass
class _Batch:
    queries: list[tuple[Any, ...]] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    grades: list[tuple[Any, ...]] = field(default_factory=list)
    rates: list[tuple[Any, ...]] = field(default_factory=list)
    teachers: dict[str, str] = field(default_factory=dict)
    chars: int = 0
    """Characters of response text held: a chunk of long answers ends early."""


def import_released(store: Store, specs: Iterable[str | Path], *, fmt: str = "auto",
                    columns: dict[str, str] | None = None, category: str | None = None,
                    teacher: str | None = None, thresholds: dict[str, float] | None = None,
                    strict: bool = False, limit: int | None = None,
                    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                    on_samples: OnSamples | None = None, workers: int | None = None) -> ImportReport:
    """Import every source (each only up to its first ``limit`` rows); see the module's docstring for
    formats, faults and resuming. ``on_samples(teacher_id, samples)`` sees each chunk's responses as
    they are staged, (query id, pass index, text, perplexity) each: the quality filters count them
    there rather than read them back. ``workers``: processes that stage (see ``stage_workers``)."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    unknown = sorted(set(columns or {}) - set(MAP_KEYS))
    if unknown:
        raise InputError(f"--map {unknown[0]}=...: unknown key; expected one of {', '.join(MAP_KEYS)}")
    if category is not None and category not in CATEGORIES:
        raise InputError(f"--category {category!r}: expected one of {', '.join(CATEGORIES)}")
    opts = Options(fmt, dict(columns or {}), category, teacher, limit, on_samples)
    sources = expand_sources(str(s) for s in specs)
    thresholds = {**PAPER_PASS_THRESHOLDS, **(thresholds or {})}
    report = ImportReport(files=len(sources))
    staged = _Recent()
    start = time.perf_counter()
    read: list[Source] = []
    leftovers = store.scalar("SELECT 1 FROM staged_samples LIMIT 1") is not None
    if strict:  # today's rule: the first bad row refuses the whole import, nothing written
        with store.write() as conn:
            read = [x for s in sources if (x := _import_source(store, conn, s, opts, thresholds, report,
                                                                staged, strict, max_line_bytes))]
            _move(conn, read, report)
    else:
        if (n := stage_workers(sources, workers, opts)) > 1:
            read = _stage_in_workers(store, sources, opts, thresholds, report, n, max_line_bytes)
        else:
            read = [x for s in sources if (x := _import_source(store, None, s, opts, thresholds, report,
                                                                staged, strict, max_line_bytes))]
        if read or store.scalar("SELECT 1 FROM staged_samples LIMIT 1"):
            with store.write() as conn:
                _move(conn, read, report)
    if report.rows and sum(report.skipped.values()) == report.rows:
        raise InputError(f"import: none of the {report.rows} rows could be imported; the first: "
                         f"{report.examples[0] if report.examples else '?'}")
    report.texts_exact = on_samples is not None and not leftovers and report.responses == report.staged
    report.seconds = time.perf_counter() - start
    return report


def stage_workers(sources: list[Source], workers: int | None, opts: Options) -> int:
    """How many processes stage ``sources``: a source each, up to ``workers`` (default: the cores, at
    most ``MAX_DEFAULT_WORKERS``).
    One (this process) for a single source, for files under ``WORKER_BYTES`` in all unless
    ``workers`` asks, for datasets and the Hub (their readers hold caches and threads of their own),
    and for an ``on_samples`` that is no ``SampleCounter``."""
    files = [s for s in sources if s.kind in ("jsonl", "parquet")]
    if len(files) < len(sources) or len(sources) < 2 or workers == 1:
        return 1
    if opts.on_samples is not None and not isinstance(opts.on_samples, SampleCounter):
        return 1
    if workers is None and sum(Path(s.path).stat().st_size for s in files) < WORKER_BYTES:
        return 1
    return min(len(sources), workers or min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def _stage_in_workers(store: Store, sources: list[Source], opts: Options, thresholds: dict[str, float],
                      report: ImportReport, workers: int, max_line_bytes: int) -> list[Source]:
    """``_import_source`` of each source in a worker process, the results gathered in source order.
    A worker dies with this process (a kill -9 of the import leaves none writing), so a rerun resumes
    from what the workers committed, as after a kill of a single process."""
    counter = opts.on_samples if isinstance(opts.on_samples, SampleCounter) else None
    read: list[Source] = []
    context = multiprocessing.get_context("spawn")  # never fork a process holding a SQLite connection
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_stage_one, str(store.path), src, replace(
                       opts, on_samples=counter.fork() if counter else None), thresholds, max_line_bytes)
                   for src in sources]
        try:
            for future in futures:
                done, part, counted = future.result()
                report.absorb(part)
                if counter is not None and counted is not None:
                    counter.join(counted)
                if done is not None:
                    read.append(done)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return read


_WORKER_STAGED: _Recent | None = None
"""A worker process's staged query ids, kept across the sources it is given."""


def _worker_start(parent: int) -> None:
    """Die with the importing process (Linux: the parent-death signal), and stage queries afresh."""
    global _WORKER_STAGED
    _WORKER_STAGED = _Recent()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed import's workers run on to their end
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _stage_one(db: str, src: Source, opts: Options, thresholds: dict[str, float],
               max_line_bytes: int) -> tuple[Source | None, ImportReport, SampleCounter | None]:
    """In a worker: one source staged through the worker's own connection."""
    part = ImportReport()
    counter = opts.on_samples if isinstance(opts.on_samples, SampleCounter) else None
    with Store(db, create=False) as store:
        if counter is not None:
            counter.attach(store)
        done = _import_source(store, None, src, opts, thresholds, part, _WORKER_STAGED or _Recent(),
                              False, max_line_bytes)
    if counter is not None:
        counter.attach(None)  # a connection cannot be pickled back
    return done, part, counter


def _move(conn: Any, sources: list[Source], report: ImportReport) -> None:
    """Staged rows (this import's, and a killed one's) into the keyed tables, in key order, in one
    transaction; then the sources read to their end are finished. A kill here undoes all of it and
    the next import moves the same rows again.

    The insert triggers of samples and grades are suspended for it and their work done once per
    statement instead of once per row: each teacher's sample count and version, the responses'
    token counts, the summaries of the (query, teacher) pairs that got grades. (At 400k responses
    the samples' two triggers took more than half of their insert, and where the summaries exist,
    their trigger took three quarters of the grades'.)"""
    report.versions_before = dict(conn.execute("SELECT teacher_id, version FROM teacher_versions"))
    suspended = SuspendedTriggers(conn, _BULK)
    # rowcount, not total_changes: the rows these statements wrote (new ones, not rows read).
    report.new_queries += max(0, conn.execute(_MOVE["queries"]).rowcount)
    for (teacher_id,) in conn.execute("SELECT DISTINCT teacher_id FROM staged_samples").fetchall():
        added = max(0, conn.execute(_MOVE_SAMPLES, (teacher_id,)).rowcount)
        report.responses += added
        if added and "teacher_versions_insert" in suspended.names:
            conn.execute(_ADD_VERSIONS, (teacher_id, added, added))
    if "sample_tokens_insert" in suspended.names:
        conn.execute(_MOVE_TOKENS)
    conn.execute(_MOVE["grades"])
    if summary_sql.INSERT_TRIGGER in suspended.names:
        summary_sql.recount(conn, "SELECT DISTINCT query_id, teacher_id FROM staged_grades")
    conn.execute(_MOVE["rates"])
    suspended.restore()
    for table in ("queries", "samples", "grades", "rates"):
        conn.execute(f"DELETE FROM staged_{table}")
    conn.executemany("UPDATE imports SET finished = 1 WHERE source = ?", [(s.key,) for s in sources])


def import_am(store: Store, paths: Iterable[str | Path], *, thresholds: dict[str, float] | None = None,
              strict: bool = False, limit: int | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
              on_samples: OnSamples | None = None, workers: int | None = None) -> ImportReport:
    """``import-am``: the release's own files, named as released (CATEGORY_TEACHER_Kpass.jsonl)."""
    paths = list(paths)
    for p in paths:
        parse_am_name(Path(p))  # the name says the category, the teacher and the pass: refuse a wrong one
    return import_released(store, paths, fmt="am", thresholds=thresholds, strict=strict, limit=limit,
                           max_line_bytes=max_line_bytes, on_samples=on_samples, workers=workers)


def _import_source(store: Store, conn: Any, src: Source, opts: Options, thresholds: dict[str, float],
                   report: ImportReport, staged: _Recent, strict: bool, max_line_bytes: int) -> Source | None:
    """Stage the source's rows from where an earlier import of it stopped; the source (with its
    resume key) when it was read to its end, None when there was nothing to stage."""
    source_key = src.key if opts.limit is None else f"{src.key}|first {opts.limit}"
    src = Source(src.kind, src.path, source_key, src.config)
    done = store.conn.execute("SELECT rows_done, finished FROM imports WHERE source = ?",
                              (src.key,)).fetchone()
    if done and done[1]:
        report.already_imported += 1
        report.per_file[src.path] = 0
        return None
    resume_at = done[0] if done else 0
    report.resumed += bool(resume_at)
    fmt = opts.fmt
    batch, seen, pending, in_source = _Batch(), 0, 0, _Keys()
    counts = Counter[str]()
    now = time.time()
    rows = iter_rows(src, max_line_bytes)
    for where, rec in rows:
        if opts.limit is not None and seen >= opts.limit:
            break
        seen += 1
        if seen <= resume_at:
            continue
        report.rows += 1
        pending += 1
        try:
            if isinstance(rec, BadRow):
                raise rec
            if fmt == "auto":
                fmt = detect_format(rec, opts)
            responses = PARSERS[fmt](src, rec, opts)
        except BadRow as bad:
            if strict:
                message = str(bad)
                raise InputError(message if message.startswith(where) else f"{where}: {message}") from None
            report.skip(where, bad)
            counts["skipped"] += 1
            continue
        for r in responses:
            query = _query_key(r.query_id)
            if not in_source.add(query, r):
                counts["duplicates"] += 1  # the first record of this question, teacher and pass stands
                continue
            _add(batch, r, now, thresholds, fmt, staged.add(query))
        if pending >= CHUNK or len(batch.samples) >= CHUNK or batch.chars >= CHUNK_CHARS:
            _pass_samples(opts, batch)
            _commit(store, conn, src, fmt, seen, batch, counts)
            batch, pending = _Batch(), 0
    if counts["skipped"] == seen - resume_at > 0 and not counts["committed"]:
        return None  # every row bad: nothing written for this source (the caller says so if none was good)
    _pass_samples(opts, batch)
    _commit(store, conn, src, fmt if fmt != "auto" else "am", seen, batch, counts)
    report.staged += counts["staged"]
    report.teachers |= set(in_source.teachers)
    report.formats[src.path] = fmt
    report.per_file[src.path] = counts["staged"]
    report.duplicates_per_file[src.path] = counts["duplicates"]
    report.duplicates += counts["duplicates"]
    return src


def _pass_samples(opts: Options, batch: _Batch) -> None:
    """The batch's responses to ``opts.on_samples``, a list per teacher."""
    if opts.on_samples is None or not batch.samples:
        return
    by_teacher: dict[str, list[tuple[str, int, str, float | None]]] = {}
    for query_id, teacher_id, pass_index, response, _, _, ppl, _ in batch.samples:
        by_teacher.setdefault(teacher_id, []).append((query_id, pass_index, response, ppl))
    for teacher_id, samples in by_teacher.items():
        opts.on_samples(teacher_id, samples)


def _query_key(query_id: str) -> int | str:
    """A query id as a set keeps it: the 128-bit number its 32 hex digits spell (about 40 bytes
    where the string is 81), else the id itself. bytes.fromhex, not int(): int() would also take
    "0x", signs, underscores and spaces, and so give two ids one number."""
    if len(query_id) == 32:
        try:
            raw = bytes.fromhex(query_id)
        except ValueError:
            return query_id
        if len(raw) == 16:
            return int.from_bytes(raw)
    return query_id


class _Recent:
    """The query ids this import has staged, up to ``RECENT`` of them (then it starts again): each
    query's row is staged once, not once per response. The release holds a query in 12 files (three
    teachers, four passes), so this stages a twelfth of the question text; a query seen again after a
    reset is staged twice, which costs a row that the move drops, never a query."""

    def __init__(self) -> None:
        self._seen: set[int | str] = set()

    def add(self, query: int | str) -> bool:
        """False when the query (a ``_query_key``) was staged before."""
        if query in self._seen:
            return False
        if len(self._seen) >= RECENT:
            self._seen.clear()
        self._seen.add(query)
        return True


class _Keys:
    """The (query, teacher, pass) keys a source has given so far, one Python int each where the query
    id is a number (about 70 bytes, a third of a tuple of strings): the query's 128 bits, then the
    teacher's number, then the pass."""

    def __init__(self) -> None:
        self.teachers: dict[str, int] = {}
        self._seen: set[int | tuple[int | str, int, int]] = set()

    def add(self, query: int | str, r: Response) -> bool:
        """False when the key was given before (``query`` is ``_query_key(r.query_id)``)."""
        teacher = self.teachers.setdefault(r.teacher, len(self.teachers))
        key: int | tuple[int | str, int, int] = (
            query << 64 | teacher << 32 | r.pass_index if isinstance(query, int) and r.pass_index < 1 << 32
            else (query, teacher, r.pass_index))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _add(batch: _Batch, r: Response, now: float, thresholds: dict[str, float], fmt: str,
         new_query: bool) -> None:
    batch.teachers[r.teacher] = fmt
    origin = "am-import" if fmt == "am" else f"import:{fmt}"
    if new_query:
        batch.queries.append((r.query_id, r.question, r.category, r.ground_truth, r.test_cases,
                              r.constraints, r.source, origin, now))
    reasoning, answer = split_response(r.response)
    batch.samples.append((r.query_id, r.teacher, r.pass_index, r.response, reasoning, answer, r.ppl, now))
    batch.chars += len(r.response)
    batch.grades.append((r.query_id, r.teacher, r.pass_index, r.score, int(r.score > thresholds[r.category]),
                         AM_DATASET if fmt == "am" else f"released ({fmt})", _DETAIL_JSON(r.detail), now))
    batch.rates.extend((r.query_id, teacher, rate) for teacher, rate in r.released_rates)


def _commit(store: Store, conn: Any, src: Source, fmt: str, rows_done: int, batch: _Batch,
            counts: Counter[str]) -> None:
    """The batch, staged, and the source's resume key in one transaction (the caller's when strict)."""
    if conn is None:
        with store.write() as own:
            _write(own, src, fmt, rows_done, batch, counts)
    else:
        _write(conn, src, fmt, rows_done, batch, counts)


def _write(conn: Any, src: Source, fmt: str, rows_done: int, batch: _Batch, counts: Counter[str]) -> None:
    now = time.time()
    for tid, tfmt in batch.teachers.items():
        name = tid.split("-", 1)[1]
        params = {"dataset": AM_DATASET if tfmt == "am" else src.path, "teacher": name, "format": tfmt,
                  "single_response": tfmt == "am-conversations"}
        conn.execute(_T, (tid, name, f"{params['dataset']}/{name}", json.dumps(params), now))
    for table, rows in (("queries", batch.queries), ("samples", batch.samples), ("grades", batch.grades),
                        ("rates", batch.rates)):
        conn.executemany(_STAGE[table], rows)
    counts["staged"] += len(batch.samples)
    report = {"staged": counts["staged"], "skipped": counts["skipped"]}
    conn.execute(_PROGRESS, (src.key, fmt, rows_done, 0, json.dumps(report), now))
    counts["committed"] += 1
