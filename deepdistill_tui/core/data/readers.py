"""Streaming record readers. Every error names the file and the line (or row) it comes from."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import InputError

DEFAULT_MAX_LINE_BYTES = 16 << 20
Record = dict[str, Any]


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every line: json.loads with a keyword builds a new one per call (a third of the cost).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json_line(raw: bytes, where: str) -> Any:
    """One JSON value, strictly: valid UTF-8, no NaN or Infinity (they cannot be written back as
    JSON), no lone surrogate escapes (they cannot be encoded), bounded nesting and integer size."""
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: invalid UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno})") from exc
    except RecursionError as exc:
        raise InputError(f"{where}: JSON nested too deeply") from exc
    except ValueError as exc:  # NaN/Infinity, or an integer past Python's digit limit
        raise InputError(f"{where}: unsupported JSON value ({str(exc)[:80]})") from exc
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):  # a plain search first: most lines have no escape
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"{where}: a lone UTF-16 surrogate (\\u{ord(exc.object[exc.start]):04x}) "
                             "is not text") from exc
    return obj


def iter_jsonl(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Record]]:
    """Yield (line number, object) for each non-blank line, in bounded memory.

    Lines are read in binary with a length cap so that a 100 MB line is an error, not a memory spike,
    and decoded strictly so that invalid UTF-8 is reported with its line.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    seen = 0
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > max_line_bytes:
                raise InputError(f"{path}:{lineno}: line is longer than {max_line_bytes} bytes")
            if raw.isspace():
                continue
            obj = parse_json_line(raw, f"{path}:{lineno}")
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            seen += 1
            yield lineno, obj
    if seen == 0:
        raise InputError(f"{path}: empty file (no records)")


def iter_parquet(path: Path, batch_rows: int = 8192) -> Iterator[tuple[int, Record]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec
    if row == 0:
        raise InputError(f"{path}: empty file (no records)")


def iter_hf(path: str, on_disk: bool, split: str | None,
            config: str | None = None) -> Iterator[tuple[int, Record]]:
    import datasets

    try:
        ds: Any = (datasets.load_from_disk(path) if on_disk
                   else datasets.load_dataset(path, config, split=split))
    except Exception as exc:  # datasets raises many types; the user needs the cause, not the type
        raise InputError(f"{path}: cannot load dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise InputError(f"{path}: dataset has splits {list(ds)}; set hf_split in the recipe")
            split = next(iter(ds))
        if split not in ds:
            raise InputError(f"{path}: no split {split!r}; has {list(ds)}")
        ds = ds[split]
    if len(ds) == 0:
        raise InputError(f"{path}: empty dataset (no records)")
    yield from enumerate(ds, start=1)


def iter_source(path: Path | str, fmt: str, *, hf_split: str | None = None, hf_config: str | None = None,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Record]]:
    if fmt == "jsonl":
        return iter_jsonl(Path(path), max_line_bytes)
    if fmt == "parquet":
        return iter_parquet(Path(path))
    if fmt in ("hf_disk", "hf_hub"):
        return iter_hf(str(path), fmt == "hf_disk", hf_split, hf_config)
    raise InputError(f"{path}: unknown format {fmt!r}")
