"""The Overview and Data tabs: what the recipe is, where the run stands, and the queries."""

from __future__ import annotations

from typing import Any

from deepdistill_tui.core.pipeline.overview import Overview
from deepdistill_tui.core.recipe import Recipe


def render_overview(recipe: Recipe, ov: Overview, hardware: str) -> str:
    c = ov.counts
    models = "\n".join(
        f"  {'[green]✔[/]' if m.present else '[yellow]↓[/]'} {m.role:<12} {m.name:<18} {m.origin}"
        + ("" if m.present else "  [dim](not here yet: downloaded on first use)[/]")
        for m in ov.models
    )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(ov.queries_by_split.items())) or "none"
    cats = ", ".join(f"{k} {v}" for k, v in sorted(ov.queries_by_category.items())) or "none"
    return (
        f"[b]Recipe {recipe.name}[/]\n{' '.join(recipe.description.split())}\n\n"
        f"[b]Machine[/]  {hardware}\n\n"
        f"[b]Progress[/]\n"
        f"  queries     {c['queries']:>8}   ({splits}; {cats})\n"
        f"  samples     {c['samples']:>8}   of {recipe.sampling.passes} passes x "
        f"{len(recipe.sampled_teachers())} teachers per training query\n"
        f"  grades      {c['grades']:>8}\n"
        f"  selections  {c['selections']:>8}\n"
        f"  runs        {c['runs']:>8}\n\n"
        f"[b]Models[/]\n{models}\n\n"
        f"[b]Next[/]  {next_step(ov)}\n\n"
        "[dim]Keys: 1-9, 0 tabs · i ingest · s sample · g grade · a analyze · ctrl+s save selection · "
        "T train · e evaluate · o export · x stop · ? help · ctrl+p commands[/]"
    )


NEXT_KEYS = {"ingest": "i", "sample": "s", "grade": "g", "select": "ctrl+s in the Select tab", "train": "T",
             "eval": "e"}


def next_step(ov: Overview) -> str:
    stage, why = ov.next_step
    key = NEXT_KEYS.get(stage)
    return f"{why} (key {key})" if key else why


def render_ingest(recipe: Recipe, last: dict[str, Any] | None) -> str:
    sources = "\n".join(f"  {s.path} ({s.format}, {s.category or 'category per record'})"
                        for s in recipe.data.sources)
    head = f"[b]Sources[/]\n{sources}\n"
    if not last or not last.get("result"):
        return head + "No ingest yet. Press [b]i[/] to read them."
    rep = last["result"].get("ingest")
    if not rep:
        return head + f"Last ingest: {last['status']}"
    removed = "  ".join(f"{k} {v}" for k, v in rep["removed"].items())
    return head + (f"Last ingest ({last['status']}): read {rep['read']}, kept {rep['kept']}, "
                   f"new {rep['inserted']}\nremoved: {removed}")
