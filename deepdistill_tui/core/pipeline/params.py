"""Each stage's parameters: one frozen type per stage, what a face passes to ``run_stage``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestParams:
    pass


@dataclass(frozen=True)
class ImportParams:
    files: tuple[str, ...]
    """Files, folders, saved ``datasets`` folders or hf:REPO[:CONFIG] names."""
    format: str = "am"
    columns: tuple[tuple[str, str], ...] = ()
    """--map key=COLUMN pairs."""
    category: str | None = None
    teacher: str | None = None
    strict: bool = False
    """Refuse the import at the first bad row (one transaction) instead of skipping and counting."""
    workers: int | None = None
    """Processes that stage the files, a file each (None: the cores, for files of 64 MB and more)."""


@dataclass(frozen=True)
class SampleParams:
    teacher: str | None = None
    """Only this teacher (default: every teacher that samples)."""
    limit: int | None = None
    """Only the first N training queries (default: the recipe's ``sampling.query_limit``)."""


@dataclass(frozen=True)
class GradeParams:
    workers: int | None = None


@dataclass(frozen=True)
class SelectParams:
    name: str | None = None
    """The selection's name (default: the recipe's); Stage II is stored as NAME-stage2."""


@dataclass(frozen=True)
class TrainParams:
    selection: str | None = None
    """The selection to train on (default: the recipe's own, as ``select`` names it)."""
    fresh: bool = False
    """Start a new run even when an unfinished one of the same recipe and selection can resume."""
    runs_dir: str | None = None
    """Where run folders go (default: ``runs/`` beside the store)."""


@dataclass(frozen=True)
class EvalParams:
    model: str | None = None
    """``base``, a training run's id, ``latest``; None: the base and the latest trained student."""


@dataclass(frozen=True)
class ExportParams:
    selection: str
    format: str
    out: str


@dataclass(frozen=True)
class AblateParams:
    arms: tuple[str, ...] = ()
    """Which arms (default: all of them); ``base`` is always evaluated."""


Params = (AblateParams | IngestParams | ImportParams | SampleParams | GradeParams | SelectParams | TrainParams
          | EvalParams | ExportParams)
