"""What is done and what is next, read from the store: the numbers behind the app's overview."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.download import cached_snapshot
from deepdistill_tui.core.models import locate
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store import Store


@dataclass
class ModelStatus:
    role: str
    name: str
    origin: str
    present: bool


@dataclass
class Overview:
    counts: dict[str, int]
    queries_by_split: dict[str, int]
    queries_by_category: dict[str, int]
    models: list[ModelStatus] = field(default_factory=list)
    last_ingest: dict[str, Any] | None = None
    next_step: tuple[str, str] = ("", "")
    """(stage, why): see suggest_next."""


def _group_counts(store: Store, column: str) -> dict[str, int]:
    rows = store.conn.execute(f"SELECT {column}, count(*) FROM queries GROUP BY {column}").fetchall()
    return {str(k): int(n) for k, n in rows}


def model_statuses(recipe: Recipe) -> list[ModelStatus]:
    out = []
    for t in recipe.teachers:
        if t.model is not None:
            out.append(ModelStatus("teacher", t.name, t.model.describe(), locate(t.model) is not None))
        else:
            out.append(ModelStatus("teacher", t.name, f"{t.backend} {t.base_url or ''}".strip(), True))
    student = recipe.training.student
    if student.hf_model is not None:
        present = Path(student.hf_model).is_dir() or cached_snapshot(student.hf_model) is not None
        out.append(ModelStatus("student", student.name, f"hf={student.hf_model}", present))
    if student.model is not None:
        out.append(ModelStatus("student GGUF" if student.hf_model else "student", student.name,
                               student.model.describe(), locate(student.model) is not None))
    return out


def overview(store: Store, recipe: Recipe) -> Overview:
    ov = Overview(
        counts=store.table_counts(),
        queries_by_split=_group_counts(store, "split"),
        queries_by_category=_group_counts(store, "category"),
        models=model_statuses(recipe),
        last_ingest=store.last_run("ingest"),
    )
    ov.next_step = suggest_next(ov)
    return ov


def suggest_next(ov: Overview) -> tuple[str, str]:
    """(the stage to run next, why), in the store's terms; each face says how (a key, a command)."""
    missing = [m.name for m in ov.models if not m.present]
    if ov.counts["queries"] == 0:
        return "ingest", "Ingest the recipe's queries."
    if ov.counts["samples"] == 0:
        fetched = f" ({', '.join(missing)} will be downloaded first)" if missing else ""
        return "sample", f"Sample answers from the teachers{fetched}."
    if ov.counts["grades"] < ov.counts["samples"]:
        return "grade", "Grade the new samples."
    if ov.counts["selections"] == 0:
        return "select", "Look at the statistics, then save a selection."
    return "train", "Train the student on a selection."
