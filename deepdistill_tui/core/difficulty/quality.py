"""The paper's response filters (docs/PAPER.md section 3): perplexity above 20, and any 20-token n-gram that
occurs more than 20 times across the data.

They decide which responses may be *trained on*: selection leaves them out (so export does too), while
grades, pass rates and CV still count every response, since a response's difficulty signal does not
depend on whether its text is fit to imitate. Tokens are whitespace tokens; the n-gram count is taken
over all of the training teacher's graded responses (the data the selection draws from), every
occurrence counted, so one response that loops a phrase 21 times is caught as well as a phrase
that 21 responses share.

Perplexity comes from the release's ``ppl`` for imported data, and for own samples from a scoring model
the recipe names (``selection.quality.perplexity_model``), computed through llama.cpp in the grade stage.
A response with no perplexity is kept.

The flags are stored per teacher with the response version they hold for, so reads never compute
them. An import counts both filters as it parses its rows (``Arrivals``: the n-gram sketch of the
texts, the responses above the perplexity limit) and adds them to the kept sketch and the stored
flags when the version proves that nothing else was written since; any other write path makes the
next refresh count from every response.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty.responses import Responses
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import Emit, PerplexityProgress, PerplexityStarted
from deepdistill_tui.core.recipe import QualityFilters, Recipe
from deepdistill_tui.core.store.database import Store

_MULT = np.uint64(0x9E3779B97F4A7C15)
PPL_BATCH = 64


@dataclass
class Exclusions:
    """Per response row of a ``Responses``: which filter, if any, removes it."""

    perplexity: np.ndarray
    ngram: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.perplexity | self.ngram

    def counts(self) -> dict[str, int]:
        return {"perplexity": int(self.perplexity.sum()), "ngram": int(self.ngram.sum()),
                "removed": int(self.any.sum())}


_SPACE = np.zeros(256, dtype=bool)
_SPACE[list(b" \t\n\r\x0b\x0c")] = True  # what bytes.split() splits on
_BYTE_MULT = np.uint32(0x2C9277B5)
_BYTE_INV = np.uint32(pow(int(_BYTE_MULT), -1, 1 << 32))  # odd, so it has an inverse modulo 2^32


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: np.uint32, count: int) -> np.ndarray:
    """base^0 .. base^(count-1) modulo 2^32, from a table kept between batches (grown by doubling:
    building it costs as much as hashing the batch)."""
    table = _POWERS.get(int(base))
    if table is None or len(table) < count:
        size = max(count, 2 * len(table) if table is not None else 1 << 16)
        table = np.empty(size, dtype=np.uint32)
        table[:1] = 1
        with np.errstate(over="ignore"):
            np.cumprod(np.full(size - 1, base, dtype=np.uint32), out=table[1:])
        _POWERS[int(base)] = table
    return table[:count]


def _token_ids(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(a 32-bit id per whitespace token of the texts, laid end to end, as uint64; each text's token
    count).

    Tokens are what ``bytes.split()`` gives of the UTF-8 text. A token's id is a polynomial over its
    bytes modulo 2^32, free of position: with byte i of the batch weighted by M^i, prefix sums give
    any token's sum, and M^-start moves it to the token's own origin. So one token has one id in any
    text, batch or process, and a batch costs a few vector operations over its bytes (about 12 bytes
    of memory per byte of text), not a Python call per token."""
    raw = [t.encode("utf-8", "surrogatepass") for t in texts]
    data = np.frombuffer(b" ".join(raw), dtype=np.uint8)
    if not len(data):
        return np.zeros(0, dtype=np.uint64), np.zeros(len(raw), dtype=np.int64)
    space = _SPACE[data]
    begin = np.flatnonzero(~space & np.r_[True, space[:-1]])
    end = np.flatnonzero(~space & np.r_[space[1:], True]) + 1
    del space
    text_start = np.cumsum([0] + [len(r) + 1 for r in raw[:-1]])
    counts = np.bincount(np.searchsorted(text_start, begin, side="right") - 1, minlength=len(raw))
    with np.errstate(over="ignore"):  # wrapping modulo 2^32 is the point
        weighted = data.astype(np.uint32)
        weighted += np.uint32(1)  # so that a NUL byte counts
        weighted *= _powers(_BYTE_MULT, len(data))
        prefix = np.zeros(len(data) + 1, dtype=np.uint32)
        np.cumsum(weighted, out=prefix[1:])
        del weighted
        ids = (prefix[end] - prefix[begin]) * _powers(_BYTE_INV, len(data))[begin]
    return ids.astype(np.uint64), counts


SKETCH_BITS = 25
"""Cells per row of the counting sketch (two rows of bytes: 64 MB however much text there is)."""
BATCH_TEXTS = 4096
BATCH_CHARS = 1 << 20
"""A batch ends at this many texts or characters, whichever comes first, so that its arrays stay a
few tens of MB even when the answers are long."""


def _windows(texts: Iterable[str], n: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """For batches of texts: (the text index of each n-token window, its 64-bit hash, texts seen so
    far). A batch's token ids are laid end to end and every window that stays inside one text is
    hashed at once (a polynomial over the ids, modulo 2^64): a few vector operations per batch."""
    batch: list[str] = []
    chars = seen = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_TEXTS or chars >= BATCH_CHARS:
            yield (*_hash_batch(batch, n, seen), seen + len(batch))
            seen += len(batch)
            batch, chars = [], 0
    if batch:
        yield (*_hash_batch(batch, n, seen), seen + len(batch))


def _hash_batch(texts: list[str], n: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = _token_ids(texts)
    windows = len(ids) - n + 1
    if windows <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    h = np.zeros(windows, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping modulo 2^64 is the point
        for j in range(n):
            h = h * _MULT + ids[j : j + windows]
    text_of = np.repeat(np.arange(len(texts)), counts)[:windows]
    inside = np.arange(windows) + n <= np.cumsum(counts)[text_of]
    return text_of[inside] + first, h[inside]


def _cells(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.uint64((1 << SKETCH_BITS) - 1)
    return (h & mask).astype(np.int64), ((h >> np.uint64(32)) & mask).astype(np.int64)


def ngram_flags(texts: Sequence[str] | Callable[[], Iterable[str]], n: int, max_count: int,
                sketch: NgramSketch | None = None) -> np.ndarray:
    """True for each text holding an n-gram that occurs more than ``max_count`` times in all texts.

    Two passes over the texts (``texts`` is a sequence, or a function that reads them again) in
    bounded memory. The first counts every n-gram in a sketch of two rows of saturating byte counters
    (hash cells, 64 MB); an n-gram whose two cells both pass ``max_count`` is a candidate, and a
    candidate's count in the sketch is never below its true count, so no frequent n-gram is missed.
    The second pass counts the candidates exactly, so the flags are exact. Hashes: distinct n-grams
    share one with probability about 2^-64 per pair; distinct tokens share an id (32 bits, see
    ``_token_ids``) about once per 2^32 pairs, which can only merge counts, so the filter errs towards
    removing a response, never towards keeping a looping one. Texts with fewer than ``n`` tokens
    give no window. A ``sketch`` of exactly these texts (built as they arrived: ``NgramSketch``)
    stands for the first pass, so that they are read once, or not at all when it has no candidate.
    """
    again = texts if callable(texts) else (lambda: texts)
    cells = None
    if max_count < 255:  # a byte counter would saturate first
        if sketch is None:
            sketch = NgramSketch(n)
            sketch.add(again())
        cells = sketch.cells
        if not has_candidates(cells, max_count):
            return np.zeros(sketch.texts, dtype=bool)  # the second pass would find none
    count, owner_parts, hash_parts = 0, [], []
    for owners, h, seen in _windows(again(), n):
        count = seen  # texts read so far, short ones included
        if cells is not None:  # only the candidates; without a sketch every window is one
            a, b = _cells(h)
            pick = (cells[0][a] > max_count) & (cells[1][b] > max_count)
            owners, h = owners[pick], h[pick]
        if len(h):
            owner_parts.append(owners)
            hash_parts.append(h)
    flags = np.zeros(count, dtype=bool)
    if hash_parts:
        owners, h = np.concatenate(owner_parts), np.concatenate(hash_parts)
        values, counts = np.unique(h, return_counts=True)
        frequent = values[counts > max_count]
        if len(frequent):
            flags[np.unique(owners[np.isin(h, frequent)])] = True
    return flags


def has_candidates(cells: np.ndarray, max_count: int) -> bool:
    """Whether any n-gram could occur more than ``max_count`` times: only if both rows of the
    sketch have a cell above it."""
    return bool((cells[0] > max_count).any() and (cells[1] > max_count).any())


class NgramSketch:
    """The first pass of ``ngram_flags``: two rows of saturating byte counters over the n-gram
    hashes of ``texts`` texts. An import builds one from the rows it parses, which it has in hand,
    and the store keeps it (``ngram_sketches``) for the next import to add to, so no text is read
    back to count it."""

    def __init__(self, n: int, cells: np.ndarray | None = None, texts: int = 0) -> None:
        self.n, self.texts = n, texts
        self.cells = cells if cells is not None else np.zeros((2, 1 << SKETCH_BITS), dtype=np.uint8)

    def add(self, texts: Iterable[str]) -> None:
        read = 0
        for _, h, seen in _windows(texts, self.n):
            read = seen
            for row, cells in zip(self.cells, _cells(h), strict=True):
                u, c = np.unique(cells, return_counts=True)
                row[u] = np.minimum(row[u].astype(np.int64) + c, 255).astype(np.uint8)
        self.texts += read

    def merge(self, other: NgramSketch) -> None:
        """Count ``other``'s texts in too (saturating, as the counters do)."""
        total = self.cells.astype(np.uint16)
        total += other.cells
        np.minimum(total, 255, out=total)
        self.cells = total.astype(np.uint8)
        self.texts += other.texts

    def packed(self) -> bytes:
        return zlib.compress(self.cells.tobytes(), 1)  # mostly zeros for short answers: kilobytes

    @classmethod
    def unpacked(cls, n: int, blob: bytes, texts: int) -> NgramSketch:
        cells = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(2, -1).copy()
        return cls(n, cells, texts)


@dataclass
class Arrived:
    """What the filters need of one teacher's responses as a writer inserts them: the n-gram sketch
    of their texts, the ones above the perplexity limit, and how many there were."""

    sketch: NgramSketch | None
    high_perplexity: list[tuple[str, int]]
    count: int = 0
    version_before: int | None = None
    """The teacher's version just before they were inserted (None: unknown, nothing is proven)."""

    def alone(self, version: int) -> bool:
        """Whether they are the only write since ``version_before``: the triggers add one to the
        teacher's version for every insert, delete and edit of a sample."""
        return self.version_before is not None and version == self.version_before + self.count


class Arrivals:
    """Per teacher, ``Arrived`` counts of the responses a writer passes as it goes (``import``'s
    ``on_samples``, a ``SampleCounter``: the import's worker processes count into forks of it)."""

    def __init__(self, store: Store | None, cfg: QualityFilters) -> None:
        self.store, self.cfg = store, cfg
        self.by_teacher: dict[str, Arrived] = {}
        self._unknown: set[str] = set()
        """Teachers whose forks disagreed on counting a sketch (a sketch stored meanwhile): their
        counts prove nothing, and the filters are worked out from the store."""

    def __call__(self, teacher_id: str, samples: list[tuple[str, int, str, float | None]]) -> None:
        self.add(teacher_id, samples)

    def fork(self) -> Arrivals:
        return Arrivals(None, self.cfg)

    def attach(self, store: Store | None) -> None:
        self.store = store

    def join(self, other: object) -> None:
        """Count in a fork's arrivals: sketches merged, perplexities and counts added."""
        assert isinstance(other, Arrivals)
        for tid, theirs in other.by_teacher.items():
            if tid in self._unknown:
                continue
            mine = self.by_teacher.get(tid)
            if mine is None:
                self.by_teacher[tid] = theirs
            elif (mine.sketch is None) != (theirs.sketch is None):
                del self.by_teacher[tid]
                self._unknown.add(tid)
            else:
                if mine.sketch is not None and theirs.sketch is not None:
                    mine.sketch.merge(theirs.sketch)
                mine.high_perplexity += theirs.high_perplexity
                mine.count += theirs.count

    @classmethod
    def for_filters(cls, store: Store, cfg: QualityFilters) -> Arrivals | None:
        """None when both filters are off."""
        on = cfg.max_perplexity is not None or cfg.max_ngram_count is not None
        return cls(store, cfg) if on else None

    def _sketches(self, teacher_id: str) -> bool:
        """Count the teacher's texts only when the store keeps a sketch of its earlier ones to add
        them to. A first import counts them after its move, from the store: hashing them in the
        parse loop instead cost 1.5x as much at 1M answers of 2,000 characters (108 s against 69 s;
        at 100k the two were even), which reading them back did not repay."""
        limit = self.cfg.max_ngram_count
        if limit is None or limit >= 255:
            return False
        assert self.store is not None, "a fork counts only once attached to its store"
        return self.store.conn.execute("SELECT 1 FROM ngram_sketches WHERE teacher_id = ? AND ngram = ?",
                                       (teacher_id, self.cfg.ngram)).fetchone() is not None

    def add(self, teacher_id: str, samples: list[tuple[str, int, str, float | None]]) -> None:
        mine = self.by_teacher.get(teacher_id)
        if mine is None:
            sketch = NgramSketch(self.cfg.ngram) if self._sketches(teacher_id) else None
            mine = self.by_teacher[teacher_id] = Arrived(sketch, [])
        if mine.sketch is not None:
            mine.sketch.add(text for _, _, text, _ in samples)
        most = self.cfg.max_perplexity
        if most is not None:
            mine.high_perplexity += [(q, p) for q, p, _, ppl in samples if ppl is not None and ppl > most]
        mine.count += len(samples)


def exclusions(store: Store, cfg: QualityFilters, teacher_id: str, r: Responses) -> Exclusions:
    """Which of ``r``'s responses the filters remove, from the flags the store keeps for the teacher
    (computed again only when the teacher's responses, or the filter settings, changed since)."""
    n = len(r.score)
    if cfg.max_perplexity is None and cfg.max_ngram_count is None:
        return Exclusions(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    flagged = stored_flags(store, cfg, teacher_id)
    return Exclusions(_rows_of(r, flagged["perplexity"]), _rows_of(r, flagged["ngram"]))


def _rows_of(r: Responses, pairs: list[tuple[str, int]]) -> np.ndarray:
    """A mask over ``r``'s rows (sorted by query id, then pass) of the given (query, pass) pairs: a
    binary search per flagged response, none per response kept."""
    mask = np.zeros(len(r.score), dtype=bool)
    if not pairs:
        return mask
    qids = np.array([q for q, _ in pairs], dtype=object)
    groups = r.group_qids
    at = np.searchsorted(groups, qids)
    for (q, p), g in zip(pairs, at.tolist(), strict=True):
        if g == len(groups) or groups[g] != q:
            continue  # not a graded training response
        begin = int(r.starts[g])
        for row in range(begin, begin + int(r.counts[g])):
            if r.pass_index[row] == p:
                mask[row] = True
    return mask


def exclusion_counts(store: Store, cfg: QualityFilters, teacher_id: str) -> dict[str, int]:
    """How many of the teacher's graded responses to training queries each filter removes, from the
    stored flags (no response is read): what ``Exclusions.counts`` gives, for statistics."""
    if cfg.max_perplexity is None and cfg.max_ngram_count is None:
        return {"perplexity": 0, "ngram": 0, "removed": 0}
    stored_flags(store, cfg, teacher_id)  # refreshed first when stale
    rows = store.conn.execute(
        "SELECT f.kind, f.query_id, f.pass_index FROM quality_flags f JOIN grades g"
        " ON g.query_id = f.query_id AND g.teacher_id = f.teacher_id AND g.pass_index = f.pass_index"
        " JOIN queries q ON q.query_id = f.query_id WHERE f.teacher_id = ? AND g.verify_score IS NOT NULL"
        " AND q.split = 'train'", (teacher_id,)).fetchall()
    return {"perplexity": sum(k == "perplexity" for k, _, _ in rows),
            "ngram": sum(k == "ngram" for k, _, _ in rows), "removed": len({(q, p) for _, q, p in rows})}


def _params(cfg: QualityFilters) -> str:
    return json.dumps({"max_perplexity": cfg.max_perplexity, "max_ngram_count": cfg.max_ngram_count,
                       "ngram": cfg.ngram}, sort_keys=True)


def flags_fresh(store: Store, cfg: QualityFilters, teacher_id: str) -> bool:
    """Whether the stored flags hold for the teacher's responses as they are, with these settings."""
    return store.conn.execute(
        "SELECT 1 FROM quality_cache c JOIN teacher_versions v USING (teacher_id) WHERE c.teacher_id = ?"
        " AND c.params = ? AND c.version = v.version", (teacher_id, _params(cfg))).fetchone() is not None


def stored_flags(store: Store, cfg: QualityFilters, teacher_id: str) -> dict[str, list[tuple[str, int]]]:
    """The teacher's flagged responses, (query, pass) per filter, refreshed first when stale."""
    if not flags_fresh(store, cfg, teacher_id):
        refresh_flags(store, cfg, teacher_id)
    out: dict[str, list[tuple[str, int]]] = {"perplexity": [], "ngram": []}
    for q, p, kind in store.conn.execute("SELECT query_id, pass_index, kind FROM quality_flags"
                                         " WHERE teacher_id = ?", (teacher_id,)):
        out[kind].append((q, int(p)))
    return out


def _compute_flags(store: Store, cfg: QualityFilters, teacher_id: str, added: Arrived | None = None,
                   ) -> tuple[int, list[tuple[str, int, str]], set[str], NgramSketch | None]:
    """(the teacher's response version; flagged responses as (query, pass, filter); the filters whose
    flags these replace, the others' stored ones standing; the n-gram sketch of all its responses
    when the filter uses one). Every read streams the responses in key order, and only flagged ones
    are kept.

    ``added`` counts the responses a writer has just inserted. When the store's counts prove that
    they are the only change since the stored flags (see ``_since``), perplexity adds their flags to
    the stored ones and the n-gram filter adds their sketch to the kept one; no text is read unless
    the sketch then has a candidate."""
    version, n_samples = store.conn.execute("SELECT version, n_samples FROM teacher_versions"
                                            " WHERE teacher_id = ?", (teacher_id,)).fetchone() or (0, 0)

    def texts() -> Iterator[str]:  # read again for each pass, in the same order, never all held
        for (text,) in store.conn.execute("SELECT response FROM samples WHERE teacher_id = ?"
                                          " ORDER BY query_id, pass_index", (teacher_id,)):
            yield text

    flagged: list[tuple[str, int, str]] = []
    replaced = {"perplexity", "ngram"}
    alone = added is not None and added.alone(version)
    if alone and added is not None and added.count == n_samples:  # every response is an added one
        flagged += [(q, p, "perplexity") for q, p in added.high_perplexity]
    elif alone and added is not None and _since(store, cfg, teacher_id, added):
        flagged += [(q, p, "perplexity") for q, p in added.high_perplexity]
        replaced.discard("perplexity")  # the stored ones stand; the new ones join them
    elif cfg.max_perplexity is not None:  # SQLite picks them: no row passes through Python but a flagged one
        flagged += [(q, int(p), "perplexity") for q, p in store.conn.execute(
            "SELECT query_id, pass_index FROM samples WHERE teacher_id = ? AND ppl > ?"
            " ORDER BY query_id, pass_index", (teacher_id, cfg.max_perplexity))]
    sketch = None
    if cfg.max_ngram_count is not None:
        if cfg.max_ngram_count < 255:
            sketch = _whole_sketch(store, teacher_id, cfg.ngram, version, n_samples, added)
            if sketch is None:  # counted from the texts, to keep
                sketch = NgramSketch(cfg.ngram)
                sketch.add(texts())
        loops = ngram_flags(texts, cfg.ngram, cfg.max_ngram_count, sketch)
        if loops.any():  # the keys, in the texts' order, only when some text is flagged
            keys = store.conn.execute("SELECT query_id, pass_index FROM samples WHERE teacher_id = ?"
                                      " ORDER BY query_id, pass_index", (teacher_id,))
            flagged += [(q, int(p), "ngram") for (q, p), hit in zip(keys, loops.tolist(), strict=True) if hit]
    return version, flagged, replaced, sketch


def _since(store: Store, cfg: QualityFilters, teacher_id: str, added: Arrived) -> bool:
    """Whether the stored flags held, with these settings, just before ``added``'s responses were
    inserted (the caller checks that nothing else was written since: ``Arrived.alone``)."""
    stored = store.conn.execute("SELECT version FROM quality_cache WHERE teacher_id = ? AND params = ?",
                                (teacher_id, _params(cfg))).fetchone()
    return stored is not None and stored[0] == added.version_before


def _whole_sketch(store: Store, teacher_id: str, n: int, version: int, n_samples: int,
                  added: Arrived | None) -> NgramSketch | None:
    """The sketch of every response of the teacher without reading one: the kept sketch plus the
    added responses' when the kept one held just before they were inserted and nothing else was
    written since (``Arrived.alone``), or the added one
    alone when they are all the responses there are; None otherwise."""
    if added is None or added.sketch is None or added.sketch.n != n or not added.alone(version):
        return None
    kept = store.conn.execute("SELECT cells, texts, version FROM ngram_sketches WHERE teacher_id = ?"
                              " AND ngram = ?", (teacher_id, n)).fetchone()
    if kept is not None and kept[2] == added.version_before:
        whole = NgramSketch.unpacked(n, kept[0], kept[1])
        whole.merge(added.sketch)
        return whole
    return added.sketch if added.count == n_samples else None


def refresh_flags(store: Store, cfg: QualityFilters, teacher_id: str, added: Arrived | None = None,
                  ) -> dict[str, int]:
    """Compute the filters over every response of the teacher and store the flagged ones, with the
    teacher's response version they hold for (and the n-gram sketch, for the next import to add
    to). ``added``: the filters' counts of the responses a writer has just inserted. Read-only
    stores compute them and keep nothing."""
    store.conn.execute("BEGIN")  # one snapshot for every read below: the passes see the same rows
    try:
        version, found, replaced, sketch = _compute_flags(store, cfg, teacher_id, added)
    finally:
        store.conn.execute("COMMIT")
    flagged = [(teacher_id, q, p, kind) for q, p, kind in found]
    try:
        with store.write() as conn:
            conn.executemany("DELETE FROM quality_flags WHERE teacher_id = ? AND kind = ?",
                             [(teacher_id, kind) for kind in sorted(replaced)])
            conn.executemany("INSERT OR IGNORE INTO quality_flags (teacher_id, query_id, pass_index, kind)"
                             " VALUES (?, ?, ?, ?)", flagged)
            conn.execute("INSERT INTO quality_cache (teacher_id, params, version) VALUES (?, ?, ?)"
                         " ON CONFLICT(teacher_id) DO UPDATE SET params = excluded.params,"
                         " version = excluded.version", (teacher_id, _params(cfg), version))
            if sketch is not None:
                conn.execute("INSERT OR REPLACE INTO ngram_sketches (teacher_id, ngram, texts, version,"
                             " cells) VALUES (?, ?, ?, ?, ?)",
                             (teacher_id, sketch.n, sketch.texts, version, sketch.packed()))
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):
            raise
    return {kind: sum(k == kind for _, _, k in found) for kind in ("perplexity", "ngram")}


# ---------------------------------------------------------------- perplexity of own samples


def perplexity(logprobs: list[float]) -> float | None:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None


def score_perplexity(store: Store, recipe: Recipe, teacher_id: str, *, emit: Emit,
                     stop: threading.Event | None = None) -> dict[str, Any]:
    """Perplexity of the training teacher's responses that have none, by the recipe's scoring model."""
    from deepdistill_tui.core.teachers.registry import needs_logprobs, open_backend

    name = recipe.selection.quality.perplexity_model
    todo = store.conn.execute(
        "SELECT s.query_id, s.pass_index, q.question, s.response FROM samples s JOIN queries q"
        " USING (query_id) WHERE s.teacher_id = ? AND s.ppl IS NULL ORDER BY s.query_id, s.pass_index",
        (teacher_id,)).fetchall()
    if not name or not todo:
        return {"scored": 0}
    teacher = recipe.teacher(name)
    backend, _ = open_backend(teacher, passes=1, sequences=1)
    try:
        needs_logprobs(backend, teacher, "perplexity")
    except DeepDistillError:
        backend.close()
        raise
    start, done = time.perf_counter(), 0
    emit(PerplexityStarted(len(todo), name))
    try:
        for first in range(0, len(todo), PPL_BATCH):
            if stop is not None and stop.is_set():
                break
            rows = []
            for qid, p, question, response in todo[first : first + PPL_BATCH]:
                value = perplexity(backend.response_logprobs(question, response))
                # No tokens to score: infinity would drop it; 1.0 (certain) keeps it, as "no ppl" does.
                rows.append((1.0 if value is None else value, qid, teacher_id, p))
            with store.write() as conn:
                conn.executemany("UPDATE samples SET ppl = ? WHERE query_id = ? AND teacher_id = ?"
                                 " AND pass_index = ?", rows)
            done += len(rows)
            emit(PerplexityProgress(done, len(todo)))
    finally:
        backend.close()
    return {"scored": done, "model": name, "seconds": round(time.perf_counter() - start, 2)}
